//! A JWKS document, fetched with a timeout, cached, refreshed on a
//! schedule, and re-fetched on an unknown `kid` at most once per
//! `jwks_min_refetch_ms` (so random `kid`s cannot hammer the identity
//! provider). Keys rotate without restart.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use super::{AuthConfig, AuthError};

struct CachedKey {
    key: DecodingKey,
    /// The key's own `alg`, which then is the only one it accepts.
    alg: Option<Algorithm>,
}

/// The cached key set of one JWKS URL.
pub struct Jwks {
    url: String,
    algorithms: Vec<Algorithm>,
    client: reqwest::Client,
    refresh: Duration,
    min_refetch: Duration,
    /// Short critical sections only; never held across an await.
    keys: RwLock<HashMap<String, CachedKey>>,
    /// Serializes fetches and remembers when the last one started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Jwks {
    pub fn new(url: String, algorithms: Vec<Algorithm>, config: &AuthConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.jwks_timeout_ms))
            .build()
            .expect("HTTP client builds");
        Self {
            url,
            algorithms,
            client,
            refresh: Duration::from_millis(config.jwks_refresh_ms),
            min_refetch: Duration::from_millis(config.jwks_min_refetch_ms),
            keys: RwLock::default(),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    /// The key for a token with `kid` and header `alg`.
    pub async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        if let Some(found) = self.lookup(kid, alg)? {
            return Ok(found);
        }
        self.fetch(false).await;
        self.lookup(kid, alg)?.ok_or_else(|| AuthError::UnknownKey(kid.map(str::to_owned)))
    }

    fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<(DecodingKey, Algorithm)>, AuthError> {
        let keys = self.keys.read().expect("jwks lock");
        let cached = match kid {
            Some(kid) => keys.get(kid),
            // A token without `kid` is accepted only when the set has one key.
            None if keys.len() == 1 => keys.values().next(),
            None => return Err(AuthError::UnknownKey(None)),
        };
        let Some(cached) = cached else { return Ok(None) };
        let allowed = match cached.alg {
            Some(own) => own == alg,
            None => self.algorithms.contains(&alg),
        };
        if !allowed {
            return Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
        }
        Ok(Some((cached.key.clone(), alg)))
    }

    /// Fetches the document unless one was fetched within `min_refetch`
    /// (`force` skips that check: scheduled refresh).
    async fn fetch(&self, force: bool) {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        match self.download().await {
            Ok(keys) => {
                tracing::info!(url = self.url, keys = keys.len(), "JWKS loaded");
                *self.keys.write().expect("jwks lock") = keys;
            }
            Err(e) => {
                tracing::warn!(url = self.url, error = %e, "JWKS fetch failed; keeping the old keys")
            }
        }
    }

    async fn download(&self) -> Result<HashMap<String, CachedKey>, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            let alg = jwk.common.key_algorithm.and_then(algorithm_of);
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, CachedKey { key, alg });
                }
                Err(e) => tracing::warn!(kid, error = %e, "skipping unusable JWKS key"),
            }
        }
        Ok(keys)
    }

    /// Loads the keys, then refreshes them every `jwks_refresh_ms` until
    /// `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.fetch(true).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.refresh) => {}
            }
        }
    }
}

fn algorithm_of(alg: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match alg {
        K::HS256 => Algorithm::HS256,
        K::HS384 => Algorithm::HS384,
        K::HS512 => Algorithm::HS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
