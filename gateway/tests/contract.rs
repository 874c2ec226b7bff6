//! The contract as the binary implements it, checked against what is
//! written down: README.md's configuration table and metric list against
//! the configuration and `metrics.rs`, `protocol/vectors/filters.json`
//! against the filter compiler, the upgrade's subprotocol rule and
//! `welcome.capabilities` on the wire. The exit codes of `ferry` are
//! checked in `tests/integration/startup.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_gateway::filter::{Filter, RecordView};
use ferry_gateway::{App, Config};
use ferry_test_macros::ferry_test;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const README: &str = include_str!("../../README.md");
const METRICS_RS: &str = include_str!("../src/metrics.rs");

/// The lines of README.md's section titled `title` (up to the next `## `).
fn readme_section(title: &str) -> Vec<&'static str> {
    let mut lines = README.lines().skip_while(|l| *l != format!("## {title}"));
    let first = lines.next().unwrap_or_else(|| panic!("README.md has no \"## {title}\""));
    std::iter::once(first).chain(lines.take_while(|l| !l.starts_with("## "))).collect()
}

/// Every backticked word of `text` that `keep` accepts.
fn backticked(text: &str, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    text.split('`').skip(1).step_by(2).filter(|w| keep(w)).map(str::to_owned).collect()
}

/// Every configuration key of the binary: the serialized defaults (scalar
/// keys, and tables of a section such as `kafka.librdkafka`) plus the
/// optional keys that have no default (they are in `env_keys`).
fn binary_config_keys() -> BTreeSet<String> {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = BTreeSet::new();
    for (name, value) in defaults.as_table().unwrap() {
        match value.as_table() {
            Some(section) => keys.extend(section.keys().map(|k| format!("{name}.{k}"))),
            None => {
                keys.insert(name.clone());
            }
        }
    }
    keys.extend(ferry_gateway::config::env_keys().into_values().map(|path| path.join(".")));
    // A table whose own keys are listed (`kafka.security.*`) is documented
    // by them, not as one row.
    let parents: Vec<String> = keys
        .iter()
        .filter(|k| keys.iter().any(|other| other.starts_with(&format!("{k}."))))
        .cloned()
        .collect();
    for parent in parents {
        keys.remove(&parent);
    }
    keys
}

#[test]
fn readme_config_table_lists_exactly_the_binary_keys() {
    let section = readme_section("Configuration");
    let mut documented = BTreeSet::new();
    for row in section.iter().filter(|l| l.starts_with("| `")) {
        let first_cell = row.split('|').nth(1).unwrap();
        documented.extend(backticked(first_cell, |_| true));
    }
    let binary = binary_config_keys();
    let undocumented: Vec<_> = binary.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&binary).collect();
    assert!(undocumented.is_empty(), "keys missing from README.md's table: {undocumented:?}");
    assert!(unknown.is_empty(), "README.md's table names keys the binary lacks: {unknown:?}");
}

#[test]
fn readme_metrics_are_exactly_the_binary_metrics() {
    let binary: BTreeSet<String> = METRICS_RS
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
        .map(|l| l.split('"').nth(1).unwrap().to_owned())
        .collect();
    assert!(binary.len() >= 10, "{binary:?}");
    let documented: BTreeSet<String> =
        backticked(&readme_section("Operations").join("\n"), |w| w.starts_with("ferry_"))
            .into_iter()
            .map(|w| w.split('{').next().unwrap().to_owned())
            .collect();
    let undocumented: Vec<_> = binary.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&binary).collect();
    assert!(undocumented.is_empty(), "metrics missing from README.md: {undocumented:?}");
    assert!(unknown.is_empty(), "README.md names metrics the binary lacks: {unknown:?}");
}

#[test]
fn filter_vectors_compile_and_match_as_stated() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors/filters.json");
    let vectors: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut valid, mut refused) = (0, 0);
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        match v.get("error_contains").and_then(Value::as_str) {
            Some(part) => {
                let err = Filter::parse(&v["filter"]).expect_err(name);
                assert!(err.0.contains(part), "{name}: {:?} lacks {part:?}", err.0);
                refused += 1;
            }
            None => {
                let filter = Filter::parse(&v["filter"]).unwrap_or_else(|e| panic!("{name}: {e}"));
                for r in v["records"].as_array().unwrap() {
                    let key = r["key"].as_str().map(str::as_bytes);
                    let headers: Vec<(&str, Option<&[u8]>)> = r["headers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| (h[0].as_str().unwrap(), h[1].as_str().map(str::as_bytes)))
                        .collect();
                    let value = r["value"].as_str().map(str::as_bytes);
                    let record = RecordView::new(key, &headers, value);
                    assert_eq!(filter.matches(&record), r["matches"], "{name}: {r}");
                }
                valid += 1;
            }
        }
    }
    assert!(valid >= 10 && refused >= 10, "{valid} valid, {refused} refused");
}

/// A gateway in this process on port 0, with its embedded Kafka.
async fn gateway() -> (String, tokio_util::sync::CancellationToken) {
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let app = App::build(config).await.expect("gateway builds");
    let url = format!("ws://{}/ws", app.local_addr());
    let shutdown = app.shutdown_token();
    tokio::spawn(app.run());
    (url, shutdown)
}

async fn upgrade(url: &str, offer: Option<&str>) -> Result<(Option<String>, Value), (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    if let Some(offer) = offer {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(offer).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, response)) => {
            let selected = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            let frame = ws.next().await.expect("welcome").expect("welcome");
            let welcome = serde_json::from_str(frame.to_text().unwrap()).unwrap();
            Ok((selected, welcome))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            Err((response.status().as_u16(), body.into_owned()))
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[ferry_test]
async fn the_upgrade_refuses_unknown_subprotocols_and_welcome_announces_capabilities() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (url, shutdown) = gateway().await;
        let (status, body) = upgrade(&url, Some("ferry.v2")).await.expect_err("ferry.v2 only");
        assert_eq!(status, ferry_protocol::UpgradeRefusal::UnsupportedSubprotocol.status());
        assert!(body.contains("ferry.v2") && body.contains("ferry.v1"), "{body}");

        let (selected, welcome) = upgrade(&url, Some("ferry.v2, ferry.v1")).await.unwrap();
        assert_eq!(selected.as_deref(), Some("ferry.v1"));
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["protocol"], 1);
        assert_eq!(welcome["capabilities"], serde_json::json!(ferry_protocol::CAPABILITIES));

        let (selected, welcome) = upgrade(&url, None).await.expect("no offer is accepted");
        assert_eq!(selected, None);
        assert_eq!(welcome["type"], "welcome");
        shutdown.cancel();
    })
    .await
    .expect("test timed out");
}
