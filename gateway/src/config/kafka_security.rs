//! `[kafka.security]`: TLS, mutual TLS and SASL (PLAIN, SCRAM, OAUTHBEARER
//! with an OIDC client-credentials token fetch) between the gateway and
//! Kafka, turned into librdkafka settings for every client.
//!
//! Secrets (passwords, the OIDC client secret, the key password) come from
//! the file, from `FERRY_KAFKA_SECURITY_*` variables, or from a file named
//! by a `*_file` key; they are held in [`Secret`], which never prints.
//! Validation and the settings use the same [`resolve`], so a configuration
//! that loads is one the clients accept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A value that must never reach a log: `Debug` and `Serialize` print `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that hands it to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// How the connection to Kafka is protected (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// How the gateway proves who it is over SASL (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl Mechanism {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// `[kafka.security]`. Everything is off by default (plaintext, as
/// librdkafka does); `kafka.librdkafka` still wins over every key here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`. Every other key
    /// of this section needs it.
    pub protocol: Option<Protocol>,
    /// PEM file of the CA certificates that sign the brokers' certificates.
    /// Default: the system's CA store (for public clouds).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Password of an encrypted `key_file`.
    pub key_password: Option<Secret>,
    /// Check that the broker's certificate names the host connected to.
    /// Turn off only for a test cluster whose certificates lack the names.
    pub verify_hostname: bool,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`; needs a
    /// `sasl_*` protocol.
    pub sasl_mechanism: Option<Mechanism>,
    /// SASL user name (PLAIN and SCRAM; an API key on Confluent Cloud).
    pub username: Option<String>,
    /// SASL password (PLAIN and SCRAM). Prefer `password_file` or
    /// `FERRY_KAFKA_SECURITY_PASSWORD` to a password in the file.
    pub password: Option<Secret>,
    /// File holding the SASL password (one trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// OAUTHBEARER: the OIDC token endpoint the gateway fetches tokens from
    /// with the client-credentials grant.
    pub oauth_token_endpoint: Option<String>,
    /// OAUTHBEARER: the OIDC client id.
    pub oauth_client_id: Option<String>,
    /// OAUTHBEARER: the OIDC client secret (or `oauth_client_secret_file`,
    /// or `FERRY_KAFKA_SECURITY_OAUTH_CLIENT_SECRET`).
    pub oauth_client_secret: Option<Secret>,
    /// File holding the OIDC client secret.
    pub oauth_client_secret_file: Option<PathBuf>,
    /// OAUTHBEARER: scope requested with the token (optional).
    pub oauth_scope: Option<String>,
    /// OAUTHBEARER: SASL extensions, `key=value,key=value` (Confluent Cloud:
    /// `logicalCluster=lkc-…,identityPoolId=pool-…`).
    pub oauth_extensions: Option<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            protocol: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            verify_hostname: true,
            sasl_mechanism: None,
            username: None,
            password: None,
            password_file: None,
            oauth_token_endpoint: None,
            oauth_client_id: None,
            oauth_client_secret: None,
            oauth_client_secret_file: None,
            oauth_scope: None,
            oauth_extensions: None,
        }
    }
}

/// The keys of this section, for their `FERRY_KAFKA_SECURITY_*` variables
/// (nested tables are not in the serialized defaults).
pub const KEYS: &[&str] = &[
    "protocol",
    "ca_file",
    "cert_file",
    "key_file",
    "key_password",
    "verify_hostname",
    "sasl_mechanism",
    "username",
    "password",
    "password_file",
    "oauth_token_endpoint",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_client_secret_file",
    "oauth_scope",
    "oauth_extensions",
];

/// Keys whose environment value is always a string (a password of digits
/// stays a string).
pub fn is_string_key(key: &str) -> bool {
    key != "verify_hostname"
}

/// One librdkafka setting; secret values stay wrapped until applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Plain(String),
    Secret(Secret),
}

impl Value {
    pub fn expose(&self) -> &str {
        match self {
            Self::Plain(v) => v,
            Self::Secret(s) => s.expose(),
        }
    }
}

/// librdkafka properties that hold secrets, whichever way they were set
/// (also used to redact `kafka.librdkafka` in debug output).
pub fn is_sensitive_property(key: &str) -> bool {
    matches!(
        key,
        "sasl.password"
            | "ssl.key.password"
            | "ssl.keystore.password"
            | "ssl.key.pem"
            | "sasl.oauthbearer.client.secret"
            | "sasl.oauthbearer.config"
    )
}

/// The librdkafka settings of `config`, or every problem with it (named
/// by key). `embedded` is true when no brokers are configured.
pub fn resolve(
    config: &SecurityConfig,
    embedded: bool,
) -> Result<Vec<(String, Value)>, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut set = |key: &str, value: Value| out.push((key.to_owned(), value));
    let c = config;
    let Some(protocol) = c.protocol else {
        let configured = c.ca_file.is_some()
            || c.cert_file.is_some()
            || c.key_file.is_some()
            || c.key_password.is_some()
            || c.sasl_mechanism.is_some()
            || c.username.is_some()
            || c.password.is_some()
            || c.password_file.is_some()
            || c.oauth_token_endpoint.is_some()
            || c.oauth_client_id.is_some()
            || c.oauth_client_secret.is_some()
            || c.oauth_client_secret_file.is_some()
            || c.oauth_scope.is_some()
            || c.oauth_extensions.is_some();
        if configured {
            errors.push(
                "kafka.security: set kafka.security.protocol (plaintext, ssl, sasl_plaintext or sasl_ssl) to use the other keys".to_owned(),
            );
            return Err(errors);
        }
        return Ok(out);
    };
    if embedded && protocol != Protocol::Plaintext {
        errors.push(format!(
            "kafka.security.protocol = \"{}\" needs kafka.brokers: the embedded Kafka speaks plaintext only",
            protocol.as_str()
        ));
    }
    set("security.protocol", Value::Plain(protocol.as_str().to_owned()));

    // TLS
    let tls_only = |key: &str, errors: &mut Vec<String>| {
        errors.push(format!(
            "kafka.security.{key} needs kafka.security.protocol = \"ssl\" or \"sasl_ssl\" (it is \"{}\")",
            protocol.as_str()
        ))
    };
    if protocol.tls() {
        match &c.ca_file {
            Some(path) => {
                readable(&mut errors, "ca_file", path);
                set("ssl.ca.location", Value::Plain(path.display().to_string()));
            }
            // librdkafka then looks for the system's CA bundle at the usual
            // paths (the OpenSSL built into Ferry has no default of its own).
            None => set("ssl.ca.location", Value::Plain("probe".to_owned())),
        }
        match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => {
                readable(&mut errors, "cert_file", cert);
                readable(&mut errors, "key_file", key);
                set("ssl.certificate.location", Value::Plain(cert.display().to_string()));
                set("ssl.key.location", Value::Plain(key.display().to_string()));
            }
            (Some(_), None) => errors.push(
                "kafka.security.cert_file needs kafka.security.key_file (the client certificate's private key)".to_owned(),
            ),
            (None, Some(_)) => errors.push(
                "kafka.security.key_file needs kafka.security.cert_file (the client certificate)"
                    .to_owned(),
            ),
            (None, None) => {}
        }
        if let Some(password) = &c.key_password {
            if c.key_file.is_none() {
                errors.push("kafka.security.key_password needs kafka.security.key_file".to_owned());
            }
            set("ssl.key.password", Value::Secret(password.clone()));
        }
        let algorithm = if c.verify_hostname { "https" } else { "none" };
        set("ssl.endpoint.identification.algorithm", Value::Plain(algorithm.to_owned()));
    } else {
        for (key, present) in [
            ("ca_file", c.ca_file.is_some()),
            ("cert_file", c.cert_file.is_some()),
            ("key_file", c.key_file.is_some()),
            ("key_password", c.key_password.is_some()),
        ] {
            if present {
                tls_only(key, &mut errors);
            }
        }
    }

    // SASL
    let oauth_keys = [
        ("oauth_token_endpoint", c.oauth_token_endpoint.is_some()),
        ("oauth_client_id", c.oauth_client_id.is_some()),
        ("oauth_client_secret", c.oauth_client_secret.is_some()),
        ("oauth_client_secret_file", c.oauth_client_secret_file.is_some()),
        ("oauth_scope", c.oauth_scope.is_some()),
        ("oauth_extensions", c.oauth_extensions.is_some()),
    ];
    let password_keys = [
        ("username", c.username.is_some()),
        ("password", c.password.is_some()),
        ("password_file", c.password_file.is_some()),
    ];
    match (protocol.sasl(), c.sasl_mechanism) {
        (false, mechanism) => {
            let sasl_keys = [("sasl_mechanism", mechanism.is_some())];
            for (key, present) in sasl_keys.iter().chain(&password_keys).chain(&oauth_keys) {
                if *present {
                    errors.push(format!(
                        "kafka.security.{key} needs kafka.security.protocol = \"sasl_ssl\" or \"sasl_plaintext\" (it is \"{}\")",
                        protocol.as_str()
                    ));
                }
            }
        }
        (true, None) => errors.push(format!(
            "kafka.security.protocol = \"{}\" needs kafka.security.sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
            protocol.as_str()
        )),
        (true, Some(mechanism)) => {
            set("sasl.mechanism", Value::Plain(mechanism.as_str().to_owned()));
            let name = mechanism.as_str();
            if mechanism == Mechanism::OAuthBearer {
                for (key, present) in password_keys {
                    if present {
                        errors.push(format!("kafka.security.{key} is not used with OAUTHBEARER (it takes oauth_client_id and oauth_client_secret)"));
                    }
                }
                set("sasl.oauthbearer.method", Value::Plain("oidc".to_owned()));
                match &c.oauth_token_endpoint {
                    Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                        set("sasl.oauthbearer.token.endpoint.url", Value::Plain(url.clone()))
                    }
                    Some(url) => errors.push(format!(
                        "kafka.security.oauth_token_endpoint must be an http(s) URL, not {url:?}"
                    )),
                    None => errors
                        .push("OAUTHBEARER needs kafka.security.oauth_token_endpoint".to_owned()),
                }
                match &c.oauth_client_id {
                    Some(id) => set("sasl.oauthbearer.client.id", Value::Plain(id.clone())),
                    None => errors.push("OAUTHBEARER needs kafka.security.oauth_client_id".to_owned()),
                }
                if let Some(secret) = secret(
                    &mut errors,
                    ("oauth_client_secret", &c.oauth_client_secret),
                    ("oauth_client_secret_file", &c.oauth_client_secret_file),
                    "OAUTHBEARER",
                ) {
                    set("sasl.oauthbearer.client.secret", Value::Secret(secret));
                }
                if let Some(scope) = &c.oauth_scope {
                    set("sasl.oauthbearer.scope", Value::Plain(scope.clone()));
                }
                if let Some(extensions) = &c.oauth_extensions {
                    set("sasl.oauthbearer.extensions", Value::Plain(extensions.clone()));
                }
            } else {
                for (key, present) in oauth_keys {
                    if present {
                        errors.push(format!("kafka.security.{key} is only used with OAUTHBEARER (sasl_mechanism is {name})"));
                    }
                }
                match &c.username {
                    Some(user) if !user.is_empty() => {
                        set("sasl.username", Value::Plain(user.clone()))
                    }
                    _ => errors.push(format!("{name} needs kafka.security.username")),
                }
                if let Some(password) = secret(
                    &mut errors,
                    ("password", &c.password),
                    ("password_file", &c.password_file),
                    name,
                ) {
                    set("sasl.password", Value::Secret(password));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A secret given inline or in a file (exactly one of them).
fn secret(
    errors: &mut Vec<String>,
    (key, inline): (&str, &Option<Secret>),
    (file_key, file): (&str, &Option<PathBuf>),
    what: &str,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "kafka.security.{key} and kafka.security.{file_key} are both set; keep one"
            ));
            None
        }
        (Some(secret), None) => Some(secret.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    errors.push(format!("kafka.security.{file_key}: {} is empty", path.display()));
                }
                Some(Secret::new(value))
            }
            Err(e) => {
                errors.push(format!("kafka.security.{file_key}: {}: {e}", path.display()));
                None
            }
        },
        (None, None) => {
            errors.push(format!("{what} needs kafka.security.{key} or kafka.security.{file_key}"));
            None
        }
    }
}

fn readable(errors: &mut Vec<String>, key: &str, path: &Path) {
    if let Err(e) = std::fs::File::open(path) {
        errors.push(format!("kafka.security.{key}: {}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: &SecurityConfig) -> Vec<(String, String)> {
        resolve(config, false)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.expose().to_owned()))
            .collect()
    }

    fn get<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
        settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn nothing_configured_sets_nothing() {
        assert!(settings(&SecurityConfig::default()).is_empty());
    }

    #[test]
    fn sasl_ssl_scram_with_a_password_file() {
        let ca = temp_file("ca.pem", "not parsed here");
        let config = SecurityConfig {
            protocol: Some(Protocol::SaslSsl),
            ca_file: Some(ca.clone()),
            sasl_mechanism: Some(Mechanism::ScramSha512),
            username: Some("ferry".into()),
            password_file: Some(temp_file("password", "s3cret\n")),
            ..Default::default()
        };
        let s = settings(&config);
        assert_eq!(get(&s, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(get(&s, "ssl.ca.location"), Some(ca.to_str().unwrap()));
        assert_eq!(get(&s, "ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(get(&s, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get(&s, "sasl.username"), Some("ferry"));
        assert_eq!(get(&s, "sasl.password"), Some("s3cret"));
    }

    #[test]
    fn mutual_tls_and_the_system_ca_store() {
        let config = SecurityConfig {
            protocol: Some(Protocol::Ssl),
            cert_file: Some(temp_file("client.pem", "c")),
            key_file: Some(temp_file("client.key", "k")),
            verify_hostname: false,
            ..Default::default()
        };
        let s = settings(&config);
        assert_eq!(get(&s, "security.protocol"), Some("ssl"));
        assert_eq!(get(&s, "ssl.ca.location"), Some("probe"));
        assert!(get(&s, "ssl.certificate.location").unwrap().ends_with("client.pem"));
        assert!(get(&s, "ssl.key.location").unwrap().ends_with("client.key"));
        assert_eq!(get(&s, "ssl.endpoint.identification.algorithm"), Some("none"));
        assert_eq!(get(&s, "sasl.mechanism"), None);
    }

    #[test]
    fn oauthbearer_uses_librdkafkas_oidc_client_credentials_fetch() {
        let config = SecurityConfig {
            protocol: Some(Protocol::SaslSsl),
            sasl_mechanism: Some(Mechanism::OAuthBearer),
            oauth_token_endpoint: Some("https://idp.example/oauth2/token".into()),
            oauth_client_id: Some("ferry".into()),
            oauth_client_secret_file: Some(temp_file("client-secret", "abc\n")),
            oauth_scope: Some("kafka".into()),
            oauth_extensions: Some("logicalCluster=lkc-1,identityPoolId=pool-2".into()),
            ..Default::default()
        };
        let s = settings(&config);
        assert_eq!(get(&s, "sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(get(&s, "sasl.oauthbearer.method"), Some("oidc"));
        assert_eq!(
            get(&s, "sasl.oauthbearer.token.endpoint.url"),
            Some("https://idp.example/oauth2/token")
        );
        assert_eq!(get(&s, "sasl.oauthbearer.client.id"), Some("ferry"));
        assert_eq!(get(&s, "sasl.oauthbearer.client.secret"), Some("abc"));
        assert_eq!(get(&s, "sasl.oauthbearer.scope"), Some("kafka"));
        assert_eq!(
            get(&s, "sasl.oauthbearer.extensions"),
            Some("logicalCluster=lkc-1,identityPoolId=pool-2")
        );
        assert_eq!(get(&s, "ssl.ca.location"), Some("probe"));
    }

    #[test]
    fn mistakes_are_named_by_key() {
        let errors = |config: SecurityConfig| resolve(&config, false).unwrap_err().join("\n");
        let scram_without_user = errors(SecurityConfig {
            protocol: Some(Protocol::SaslSsl),
            sasl_mechanism: Some(Mechanism::ScramSha256),
            password: Some(Secret::new("x")),
            ..Default::default()
        });
        assert!(scram_without_user.contains("SCRAM-SHA-256 needs kafka.security.username"));
        let cert_without_key = errors(SecurityConfig {
            protocol: Some(Protocol::Ssl),
            cert_file: Some(temp_file("c.pem", "c")),
            ..Default::default()
        });
        assert!(cert_without_key.contains("cert_file needs kafka.security.key_file"));
        let missing = errors(SecurityConfig {
            protocol: Some(Protocol::Ssl),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        });
        assert!(missing.contains("kafka.security.ca_file: /nonexistent/ca.pem"), "{missing}");
        let no_mechanism =
            errors(SecurityConfig { protocol: Some(Protocol::SaslSsl), ..Default::default() });
        assert!(no_mechanism.contains("needs kafka.security.sasl_mechanism"));
        let no_protocol =
            errors(SecurityConfig { username: Some("u".into()), ..Default::default() });
        assert!(no_protocol.contains("set kafka.security.protocol"));
        let both = errors(SecurityConfig {
            protocol: Some(Protocol::SaslPlaintext),
            sasl_mechanism: Some(Mechanism::Plain),
            username: Some("u".into()),
            password: Some(Secret::new("x")),
            password_file: Some(temp_file("p", "y")),
            ..Default::default()
        });
        assert!(both.contains("both set"));
        let embedded =
            resolve(&SecurityConfig { protocol: Some(Protocol::Ssl), ..Default::default() }, true)
                .unwrap_err()
                .join("\n");
        assert!(embedded.contains("needs kafka.brokers"));
    }

    #[test]
    fn secrets_never_print() {
        let config = SecurityConfig {
            protocol: Some(Protocol::SaslSsl),
            sasl_mechanism: Some(Mechanism::Plain),
            username: Some("u".into()),
            password: Some(Secret::new("hunter2")),
            key_password: Some(Secret::new("hunter3")),
            oauth_client_secret: Some(Secret::new("hunter4")),
            ..Default::default()
        };
        let debug = format!("{config:?}");
        let toml = toml::to_string(&config).unwrap();
        for shown in [&debug, &toml] {
            assert!(!shown.contains("hunter"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        let resolved = format!("{:?}", resolve(&config, false));
        assert!(!resolved.contains("hunter"), "{resolved}");
    }
}
