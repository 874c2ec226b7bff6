//! Ferry against a secured Kafka: the broker of
//! `FERRY_KAFKA_SECURE=1 scripts/kafka start` (SASL_SSL with SCRAM and
//! OAUTHBEARER, and an mTLS listener), found through
//! `FERRY_TEST_KAFKA_SECURE=<its state folder>` (the script writes
//! `secure.env` there). Without it these tests return early with a note,
//! except under `CI=true`, where they fail.
//!
//! Every positive case goes through `[kafka.security]` (not the raw
//! librdkafka passthrough) and checks on the wire and in Kafka: publish and
//! ack, the record read back by an independent client over the same
//! listener, live fan-out, a replay from `earliest` and a shared group.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferry_gateway::config::kafka_security::{Mechanism, Protocol, Secret, SecurityConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// The secured broker's listeners and files (`STATE/secure.env`).
struct SecureKafka(BTreeMap<String, String>);

impl SecureKafka {
    fn get(&self, key: &str) -> String {
        self.0.get(key).unwrap_or_else(|| panic!("{key} missing from secure.env")).to_owned()
    }
}

/// The secured broker, or `None` (with a note) outside CI when none is set.
fn secure_kafka() -> Option<SecureKafka> {
    let Some(state) = std::env::var("FERRY_TEST_KAFKA_SECURE").ok().filter(|s| !s.is_empty())
    else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "FERRY_TEST_KAFKA_SECURE is not set: CI must run the secured-Kafka tests \
                 (FERRY_KAFKA_SECURE=1 scripts/kafka start, then point it at the state folder)"
            );
        }
        eprintln!(
            "note: secured-Kafka test not run: set FERRY_TEST_KAFKA_SECURE to the state \
             folder of `FERRY_KAFKA_SECURE=1 scripts/kafka start`"
        );
        return None;
    };
    let file = std::path::Path::new(&state).join("secure.env");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("FERRY_TEST_KAFKA_SECURE: {}: {e}", file.display()));
    let vars = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(SecureKafka(vars))
}

fn scram(kafka: &SecureKafka, mechanism: Mechanism, password: &str) -> SecurityConfig {
    SecurityConfig {
        protocol: Some(Protocol::SaslSsl),
        ca_file: Some(kafka.get("FERRY_SECURE_CA").into()),
        sasl_mechanism: Some(mechanism),
        username: Some(kafka.get("FERRY_SECURE_USER")),
        password: Some(Secret::new(password)),
        ..Default::default()
    }
}

fn mtls(kafka: &SecureKafka) -> SecurityConfig {
    SecurityConfig {
        protocol: Some(Protocol::Ssl),
        ca_file: Some(kafka.get("FERRY_SECURE_CA").into()),
        cert_file: Some(kafka.get("FERRY_SECURE_CLIENT_CERT").into()),
        key_file: Some(kafka.get("FERRY_SECURE_CLIENT_KEY").into()),
        ..Default::default()
    }
}

/// Reads the record at `partition`/`offset` with an independent consumer
/// configured by hand (raw librdkafka keys) for the same listener.
async fn read_back(
    bootstrap: &str,
    settings: &[(&str, String)],
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<u8> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ferry-tests-secure-reader")
        .set("enable.auto.commit", "false");
    for (k, v) in settings {
        config.set(*k, v);
    }
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("reader");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, partition, Offset::Offset(offset)).unwrap();
        consumer.assign(&list).unwrap();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => return m.payload().unwrap_or_default().to_vec(),
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
        panic!("the independent reader got nothing at {topic}/{partition}@{offset}");
    })
    .await
    .unwrap()
}

/// Publish/ack, read back, fan-out, replay and a shared group through a
/// gateway whose `[kafka.security]` is `security`.
async fn exercise(bootstrap: String, security: SecurityConfig, reader: &[(&str, String)]) {
    let mut config = test_config();
    config.kafka.brokers = Some(bootstrap.clone());
    config.kafka.auto_create_topics = Some(true);
    config.kafka.security = security;
    let gateway = spawn_gateway_config(config).await;
    assert_eq!(gateway.wait_readyz(200, WAIT).await, 200, "/readyz over the secured listener");

    let topic = unique_topic("secure");
    let mut live = gateway.client().await;
    live.subscribed(&topic).await; // creates the topic through the admin client
    let mut publisher = gateway.client().await;
    let value = json!({"secure": topic});
    let (partition, offset) = publisher.acked(&topic, value.clone()).await;

    let message = live.next_message().await;
    assert_eq!(message["value"], value, "{message}");
    assert_eq!(
        (message["partition"].as_i64(), message["offset"].as_i64()),
        (Some(partition.into()), Some(offset))
    );

    let stored = read_back(&bootstrap, reader, &topic, partition, offset).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&stored).unwrap(), value);

    let mut replay = gateway.client().await;
    let reply = replay.request(json!({"type":"subscribe","topic":topic,"from":"earliest"})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let replayed = replay.next_message().await;
    assert_eq!(
        (replayed["value"].clone(), replayed["offset"].as_i64()),
        (value.clone(), Some(offset))
    );

    let mut member = gateway.client().await;
    let group = unique_topic("g");
    let reply = member
        .request(
            json!({"type":"subscribe","topic":topic,"group":group,"ack":"auto","from":"earliest"}),
        )
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let grouped = member.next_message().await;
    assert_eq!((grouped["value"].clone(), grouped["offset"].as_i64()), (value, Some(offset)));
}

fn reader_tls(kafka: &SecureKafka) -> Vec<(&'static str, String)> {
    vec![("ssl.ca.location", kafka.get("FERRY_SECURE_CA"))]
}

fn reader_scram(kafka: &SecureKafka, mechanism: &str) -> Vec<(&'static str, String)> {
    let mut settings = reader_tls(kafka);
    settings.extend([
        ("security.protocol", "SASL_SSL".to_owned()),
        ("sasl.mechanism", mechanism.to_owned()),
        ("sasl.username", kafka.get("FERRY_SECURE_USER")),
        ("sasl.password", kafka.get("FERRY_SECURE_PASSWORD")),
    ]);
    settings
}

#[ferry_test]
async fn sasl_ssl_with_scram_sha_512() {
    let Some(kafka) = secure_kafka() else { return };
    let security = scram(&kafka, Mechanism::ScramSha512, &kafka.get("FERRY_SECURE_PASSWORD"));
    let reader = reader_scram(&kafka, "SCRAM-SHA-512");
    tokio::time::timeout(
        Duration::from_secs(90),
        exercise(kafka.get("FERRY_SECURE_SASL_SSL"), security, &reader),
    )
    .await
    .expect("SCRAM-SHA-512 scenario within 90 s");
}

#[ferry_test]
async fn sasl_ssl_with_scram_sha_256() {
    let Some(kafka) = secure_kafka() else { return };
    let security = scram(&kafka, Mechanism::ScramSha256, &kafka.get("FERRY_SECURE_PASSWORD"));
    let reader = reader_scram(&kafka, "SCRAM-SHA-256");
    tokio::time::timeout(
        Duration::from_secs(90),
        exercise(kafka.get("FERRY_SECURE_SASL_SSL"), security, &reader),
    )
    .await
    .expect("SCRAM-SHA-256 scenario within 90 s");
}

#[ferry_test]
async fn mutual_tls() {
    let Some(kafka) = secure_kafka() else { return };
    let security = mtls(&kafka);
    let mut reader = reader_tls(&kafka);
    reader.extend([
        ("security.protocol", "SSL".to_owned()),
        ("ssl.certificate.location", kafka.get("FERRY_SECURE_CLIENT_CERT")),
        ("ssl.key.location", kafka.get("FERRY_SECURE_CLIENT_KEY")),
    ]);
    tokio::time::timeout(
        Duration::from_secs(90),
        exercise(kafka.get("FERRY_SECURE_MTLS"), security, &reader),
    )
    .await
    .expect("mTLS scenario within 90 s");
}

/// A tiny OIDC token endpoint: checks the client-credentials request's
/// Basic auth and answers an unsigned JWT, which the test broker's
/// unsecured validator accepts. Counts the tokens it issued.
async fn token_endpoint(
    client_id: &'static str,
    secret: &'static str,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let issued = Arc::new(AtomicUsize::new(0));
    let count = issued.clone();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let expected_auth = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
    )
    .to_ascii_lowercase();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let authorized =
                head.lines().any(|l| l.trim() == format!("authorization: {expected_auth}"));
            let response = if authorized {
                count.fetch_add(1, Ordering::SeqCst);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = b64.encode(json!({"alg":"none"}).to_string());
                let claims = b64.encode(
                    json!({"sub":"ferry-oauth","iat":now,"exp":now + 3600,"scope":"kafka"})
                        .to_string(),
                );
                let body = json!({"access_token": format!("{header}.{claims}."), "token_type":"bearer", "expires_in":3600}).to_string();
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    (url, issued)
}

#[ferry_test]
async fn sasl_ssl_with_oauthbearer_oidc_client_credentials() {
    let Some(kafka) = secure_kafka() else { return };
    let (url, issued) = token_endpoint("ferry-gateway", "oidc-secret").await;
    let security = SecurityConfig {
        protocol: Some(Protocol::SaslSsl),
        ca_file: Some(kafka.get("FERRY_SECURE_CA").into()),
        sasl_mechanism: Some(Mechanism::OAuthBearer),
        oauth_token_endpoint: Some(url),
        oauth_client_id: Some("ferry-gateway".into()),
        oauth_client_secret: Some(Secret::new("oidc-secret")),
        oauth_scope: Some("kafka".into()),
        ..Default::default()
    };
    // The reader checks the record over SCRAM: an independent client.
    let reader = reader_scram(&kafka, "SCRAM-SHA-512");
    tokio::time::timeout(
        Duration::from_secs(90),
        exercise(kafka.get("FERRY_SECURE_SASL_SSL"), security, &reader),
    )
    .await
    .expect("OAUTHBEARER scenario within 90 s");
    assert!(issued.load(Ordering::SeqCst) >= 1, "the gateway fetched its token from the endpoint");
}

/// Starts the `ferry` binary against a listener that will refuse it, and
/// checks what an operator and a client see.
async fn refused(bootstrap: String, mut env: Vec<(&'static str, String)>, cause: &str) {
    env.push(("FERRY_KAFKA_METADATA_TIMEOUT_MS", "1000".into()));
    env.push(("FERRY_KAFKA_AUTO_CREATE_TOPICS", "true".into()));
    let gateway = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        GatewayProcess::start(&["--kafka-brokers", &bootstrap], &env)
    })
    .await
    .unwrap();

    let line = gateway
        .wait_log("Kafka refused the gateway", WAIT)
        .await
        .unwrap_or_else(|| panic!("no refusal log line; log: {:?}", gateway.log_lines("")));
    assert!(line.contains(cause), "the log line names the cause {cause:?}: {line}");

    let (status, body) = http_get(gateway.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(cause), "/readyz says why: {body}");

    let mut client = Client::connect(&gateway.ws_url()).await;
    let started = Instant::now();
    let reply = client.publish(&unique_topic("refused"), json!(1)).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(started.elapsed() < Duration::from_millis(500), "answered in {:?}", started.elapsed());

    // librdkafka reports the refusal again on every reconnect: the clear
    // line stays one (it repeats at most once a minute).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = gateway.log_lines("Kafka refused the gateway");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let all = gateway.log_lines("").join("\n");
    assert!(!all.contains("wrong-password"), "the password reached the log");
}

#[ferry_test]
async fn a_wrong_password_is_named_and_refused_promptly() {
    let Some(kafka) = secure_kafka() else { return };
    let env = vec![
        ("FERRY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        ("FERRY_KAFKA_SECURITY_CA_FILE", kafka.get("FERRY_SECURE_CA")),
        ("FERRY_KAFKA_SECURITY_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
        ("FERRY_KAFKA_SECURITY_USERNAME", kafka.get("FERRY_SECURE_USER")),
        ("FERRY_KAFKA_SECURITY_PASSWORD", "wrong-password".to_owned()),
    ];
    tokio::time::timeout(
        Duration::from_secs(60),
        refused(kafka.get("FERRY_SECURE_SASL_SSL"), env, "authentication failed"),
    )
    .await
    .expect("wrong-password scenario within 60 s");
}

#[ferry_test]
async fn an_untrusted_broker_certificate_is_named_and_refused_promptly() {
    let Some(kafka) = secure_kafka() else { return };
    let env = vec![
        ("FERRY_KAFKA_SECURITY_PROTOCOL", "ssl".to_owned()),
        ("FERRY_KAFKA_SECURITY_CA_FILE", kafka.get("FERRY_SECURE_UNTRUSTED_CA")),
        ("FERRY_KAFKA_SECURITY_CERT_FILE", kafka.get("FERRY_SECURE_CLIENT_CERT")),
        ("FERRY_KAFKA_SECURITY_KEY_FILE", kafka.get("FERRY_SECURE_CLIENT_KEY")),
    ];
    tokio::time::timeout(
        Duration::from_secs(60),
        refused(kafka.get("FERRY_SECURE_MTLS"), env, "broker certificate not trusted"),
    )
    .await
    .expect("untrusted-CA scenario within 60 s");
}
