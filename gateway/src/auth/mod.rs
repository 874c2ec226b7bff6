//! Authentication: a JWT (from the upgrade request or an `auth` frame)
//! becomes a [`Principal`].
//!
//! The algorithm a token may use is pinned by the key that verifies it
//! (an HMAC secret accepts only HS*, a PEM key only its configured `alg`, a
//! JWKS key only its `alg` or the configured list), never taken from the
//! token header alone. `exp` is required; `nbf` is checked; `iss` and `aud`
//! are checked and required present when configured.

mod jwks;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use jwks::Jwks;

/// How sockets authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: every socket is anonymous. Refused on a
    /// non-loopback address unless `--insecure` is given.
    #[default]
    None,
    /// Every socket presents a JWT.
    Jwt,
}

/// A secret that never shows in logs or debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A PEM public key that verifies tokens signed with `alg`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// One of RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub alg: String,
    /// Path of the PEM file (public key).
    pub pem_file: PathBuf,
    /// Only tokens with this `kid` header use this key (optional).
    pub kid: Option<String>,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `"none"` (default; loopback only unless `--insecure`) or `"jwt"`.
    pub mode: AuthMode,
    /// Shared secret for HS256/384/512 tokens (also used by `ferry token`).
    pub hs_secret: Option<Secret>,
    /// PEM public keys, each pinned to one algorithm.
    pub public_keys: Vec<PublicKeyConfig>,
    /// JWKS document URL; keys are cached, refreshed every
    /// `jwks_refresh_ms`, and re-fetched (at most every
    /// `jwks_min_refetch_ms`) when a token names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// Algorithms accepted for JWKS keys that carry no `alg` of their own.
    pub jwks_algorithms: Vec<String>,
    pub jwks_refresh_ms: u64,
    pub jwks_min_refetch_ms: u64,
    pub jwks_timeout_ms: u64,
    /// Required issuer (`iss`), when set.
    pub issuer: Option<String>,
    /// Required audience (`aud`), when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Longer tokens are refused before any parsing.
    pub max_token_bytes: usize,
    /// Accept `?token=` on the upgrade URL (tokens in URLs end up in logs).
    pub allow_query_token: bool,
    /// A socket that has not authenticated within this time is closed (4003).
    pub auth_timeout_ms: u64,
    /// Browser origins allowed to open sockets (exact `scheme://host[:port]`,
    /// or `"*"`). Empty: requests without `Origin` and same-host origins
    /// only, plus loopback origins while `mode = "none"` on loopback.
    pub allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hs_secret: None,
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_algorithms: vec!["RS256".into(), "ES256".into()],
            jwks_refresh_ms: 300_000,
            jwks_min_refetch_ms: 10_000,
            jwks_timeout_ms: 5_000,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            max_token_bytes: 8 * 1024,
            allow_query_token: false,
            auth_timeout_ms: 10_000,
            allowed_origins: Vec::new(),
        }
    }
}

impl AuthConfig {
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }
}

/// Who is on the other end of a socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The token's `sub` (`"anonymous"` without authentication).
    pub subject: String,
    /// Every claim of the token.
    pub claims: Claims,
    /// Token expiry in ms since the epoch.
    pub expires_at: Option<i64>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self { subject: "anonymous".into(), claims: Claims::default(), expires_at: None }
    }
}

/// A token's claims, by name. Compact, since every socket holds one: one
/// allocation sorted by name (a map's tree node would take about 600
/// bytes, whatever the number of claims).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(Box<[(Box<str>, Value)]>);

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        let at = self.0.binary_search_by(|(claim, _)| (**claim).cmp(name)).ok()?;
        Some(&self.0[at].1)
    }
}

impl From<Map<String, Value>> for Claims {
    fn from(claims: Map<String, Value>) -> Self {
        // A map iterates in name order.
        Self(claims.into_iter().map(|(name, value)| (name.into_boxed_str(), value)).collect())
    }
}

/// Why a token was refused. The text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("no key known for this token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("token has no `sub` claim")]
    MissingSubject,
    #[error("token revoked")]
    Revoked,
}

impl AuthError {
    /// A metric label: one of a few fixed words.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm",
            Self::UnknownKey(_) => "unknown_key",
            Self::Invalid(_) => "invalid",
            Self::MissingSubject => "missing_subject",
            Self::Revoked => "revoked",
        }
    }
}

struct StaticKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Authenticator {
    mode: AuthMode,
    keys: Vec<StaticKey>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    max_token_bytes: usize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks.is_some())
            .finish()
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    name.parse::<Algorithm>().map_err(|_| format!("unknown algorithm {name:?}"))
}

impl Authenticator {
    /// Loads keys; returns every problem found.
    pub fn from_config(config: &AuthConfig) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs_secret {
            if secret.0.len() < 32 {
                errors.push("auth.hs_secret must be at least 32 bytes".into());
            }
            keys.push(StaticKey {
                kid: None,
                algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                key: DecodingKey::from_secret(secret.0.as_bytes()),
            });
        }
        for (i, pk) in config.public_keys.iter().enumerate() {
            let at = format!("auth.public_keys[{i}]");
            let alg = match parse_algorithm(&pk.alg) {
                Ok(alg) => alg,
                Err(e) => {
                    errors.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let pem = match std::fs::read(&pk.pem_file) {
                Ok(pem) => pem,
                Err(e) => {
                    errors.push(format!("{at}: {}: {e}", pk.pem_file.display()));
                    continue;
                }
            };
            use Algorithm as A;
            let key = match alg {
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                    DecodingKey::from_rsa_pem(&pem)
                }
                A::ES256 | A::ES384 => DecodingKey::from_ec_pem(&pem),
                A::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => {
                    errors.push(format!("{at}: {} needs a shared secret (auth.hs_secret)", pk.alg));
                    continue;
                }
            };
            match key {
                Ok(key) => keys.push(StaticKey { kid: pk.kid.clone(), algorithms: vec![alg], key }),
                Err(e) => errors.push(format!("{at}: {}: {e}", pk.pem_file.display())),
            }
        }
        let jwks = match &config.jwks_url {
            None => None,
            Some(url) => {
                let algorithms: Vec<Algorithm> = config
                    .jwks_algorithms
                    .iter()
                    .filter_map(|a| parse_algorithm(a).map_err(|e| errors.push(e)).ok())
                    .collect();
                Some(Arc::new(Jwks::new(url.clone(), algorithms, config)))
            }
        };
        if config.mode == AuthMode::Jwt && keys.is_empty() && jwks.is_none() {
            errors.push(
                "auth.mode = \"jwt\" needs auth.hs_secret, auth.public_keys or auth.jwks_url"
                    .into(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            mode: config.mode,
            keys,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
            max_token_bytes: config.max_token_bytes,
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The JWKS cache, when configured (its refresh loop runs in the app).
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        self.jwks.clone()
    }

    /// Verifies `token` and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let result = self.verify_inner(token).await;
        if let Err(e) = &result {
            crate::metrics::auth_failed(e.kind());
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge(self.max_token_bytes));
        }
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let alg = header.alg;
        let mut candidates: Vec<(DecodingKey, Algorithm)> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg))
            .filter(|k| k.kid.is_none() || header.kid.is_none() || k.kid == header.kid)
            .map(|k| (k.key.clone(), alg))
            .collect();
        if candidates.is_empty() {
            if let Some(jwks) = &self.jwks {
                candidates.push(jwks.key(header.kid.as_deref(), alg).await?);
            }
        }
        if candidates.is_empty() {
            let any_key_takes_alg = self.keys.iter().any(|k| k.algorithms.contains(&alg));
            return Err(if any_key_takes_alg {
                AuthError::UnknownKey(header.kid)
            } else {
                AuthError::AlgorithmNotAllowed(format!("{alg:?}"))
            });
        }
        let mut last = AuthError::Invalid("no key verified the token".into());
        for (key, alg) in candidates {
            match decode::<Map<String, Value>>(token, &key, &self.validation(alg)) {
                Ok(data) => return principal_from(data.claims),
                Err(e) => last = AuthError::Invalid(describe(&e)),
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.validate_exp = true;
        let mut required: HashSet<String> = ["exp".to_owned()].into();
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.insert("iss".into());
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        v.required_spec_claims = required;
        v
    }
}

fn describe(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match err.kind() {
        K::ExpiredSignature => "token has expired".into(),
        K::ImmatureSignature => "token is not valid yet (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
        K::InvalidClaimFormat(c) => format!("claim `{c}` has the wrong type"),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "algorithm does not match the key".into(),
        other => format!("{other:?}"),
    }
}

fn principal_from(claims: Map<String, Value>) -> Result<Principal, AuthError> {
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(AuthError::MissingSubject),
    };
    let expires_at = claims.get("exp").and_then(Value::as_i64).map(|s| s.saturating_mul(1000));
    Ok(Principal { subject, claims: claims.into(), expires_at })
}
