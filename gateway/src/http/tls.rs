//! TLS on the gateway's own port (rustls with the `ring` provider).
//!
//! The certificate chain and key come from PEM files (`[tls]`). They are
//! re-read on SIGHUP and when either file changes; the new pair is checked
//! (both parse, the key matches the leaf) before it is swapped in, so a bad
//! replacement is logged and the previous certificate stays served.
//! Rotation only changes what new handshakes get: connections already
//! established keep their session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Why a certificate/key pair was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{0}: no CERTIFICATE block found")]
    NoCertificate(PathBuf),
    #[error("{path}: unusable private key: {source}")]
    Key { path: PathBuf, source: rustls::Error },
    #[error("{key} does not belong to the first certificate of {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS settings: {0}")]
    Config(rustls::Error),
}

/// The certificate currently served, swapped whole on reload.
#[derive(Debug)]
struct CertResolver {
    /// Read on every handshake, written on reload; never held across an
    /// await (clones of an `Arc`).
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// TLS for the listener: the acceptor and the reloadable certificate.
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the pair once; a failure here stops the gateway from starting.
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load(cert_file, key_file, &provider)?;
        tracing::info!(
            file = %cert_file.display(),
            sha256 = %fingerprint(&key),
            "TLS certificate loaded"
        );
        let resolver = Arc::new(CertResolver { current: RwLock::new(key) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // WebSockets are upgraded HTTP/1.1 requests; the server speaks only that.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads both files; the new pair is served to new handshakes only
    /// if it is valid. Returns whether it was taken.
    pub fn reload(&self) -> bool {
        match load(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                let sha256 = fingerprint(&key);
                *self.resolver.current.write().expect("certificate lock") = key;
                metrics::tls_reloaded(true);
                tracing::info!(file = %self.cert_file.display(), %sha256, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics::tls_reloaded(false);
                tracing::error!("TLS certificate rejected, keeping the previous one: {e}");
                false
            }
        }
    }

    /// Reloads on SIGHUP and when either file changes (checked every second).
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        let stamps = || (stamp(&self.cert_file), stamp(&self.key_file));
        let mut seen = stamps();
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup => {
                    seen = stamps();
                    self.reload();
                }
                _ = tick.tick() => {
                    let now = stamps();
                    if now != seen {
                        seen = now;
                        self.reload();
                    }
                }
            }
        }
    }
}

/// Checks `tls.cert_file` and `tls.key_file` the way [`Tls::new`] will
/// load them, for configuration loading: one error per file, each naming
/// its key, and a key that does not match the certificate.
pub fn check_files(cert_file: &Path, key_file: &Path) -> Vec<String> {
    let provider = rustls::crypto::ring::default_provider();
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>());
    let key = PrivateKeyDer::from_pem_file(key_file);
    let mut errors = Vec::new();
    match &chain {
        Err(e) => errors.push(format!("tls.cert_file: {}: {e}", cert_file.display())),
        Ok(chain) if chain.is_empty() => errors
            .push(format!("tls.cert_file: {}: no CERTIFICATE block found", cert_file.display())),
        Ok(_) => {}
    }
    let signer = match key {
        Err(e) => {
            errors.push(format!("tls.key_file: {}: {e}", key_file.display()));
            None
        }
        Ok(key) => match provider.key_provider.load_private_key(key) {
            Ok(signer) => Some(signer),
            Err(e) => {
                errors.push(format!(
                    "tls.key_file: {}: unusable private key: {e}",
                    key_file.display()
                ));
                None
            }
        },
    };
    if let (Ok(chain), Some(signer), true) = (chain, signer, errors.is_empty()) {
        if let Err(TlsError::Mismatch { cert, key }) =
            matched(CertifiedKey::new(chain, signer), cert_file, key_file)
        {
            errors.push(format!(
                "tls.key_file: {} does not belong to the first certificate of {}",
                key.display(),
                cert.display()
            ));
        }
    }
    errors
}

/// `certified` when its key belongs to its leaf certificate (or rustls
/// cannot tell).
fn matched(
    certified: CertifiedKey,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err(TlsError::Mismatch { cert: cert_file.to_owned(), key: key_file.to_owned() }),
    }
}

/// Reads and checks a certificate chain and its key.
fn load(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    fn pem(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
        move |source| TlsError::Pem { path: path.to_owned(), source }
    }
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(pem(cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert_file))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(pem(key_file))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key { path: key_file.to_owned(), source })?;
    matched(CertifiedKey::new(chain, signer), cert_file, key_file)
}

/// SHA-256 of the leaf certificate, as `openssl x509 -fingerprint -sha256`
/// prints it (without colons), for the logs.
fn fingerprint(key: &CertifiedKey) -> String {
    let leaf: &[u8] = key.end_entity_cert().map(|c| c.as_ref()).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}
