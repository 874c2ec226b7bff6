//! `POST /v1/publish` as an HTTP client sees it: batches (gzipped or not)
//! acked with their positions and read back by an independent consumer,
//! retried ids not produced twice, and every refusal with its status.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_gateway::auth::{AuthMode, Secret};
use ferry_gateway::Config;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

pub const SECRET: &str = "http-transports-secret-0123456789abcdef";

/// An HS256 token for `sub`, valid for ten minutes.
pub fn token(sub: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": sub, "exp": now + 600});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// JWT mode: everyone may publish and subscribe to `open.**` only.
pub fn jwt(c: &mut Config) {
    c.auth.mode = AuthMode::Jwt;
    c.auth.hs_secret = Some(Secret(SECRET.into()));
    c.acl =
        toml::from_str("[[rules]]\npublish = [\"open.**\"]\nsubscribe = [\"open.**\"]\n").unwrap();
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// POSTs `body` (gzipped when `gzip`) to `/v1/publish`: (status, JSON body,
/// headers).
async fn post(
    gw: &TestGateway,
    token: Option<&str>,
    body: Vec<u8>,
    gzip: bool,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = http()
        .post(format!("http://{}/v1/publish", gw.addr))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let body = if gzip {
        request = request.header("content-encoding", "gzip");
        gzipped(&body)
    } else {
        body
    };
    let response = request.body(body).send().await.expect("HTTP publish answered");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value, headers)
}

fn gzipped(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn records(records: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "records": records })).unwrap()
}

#[ferry_test(timeout_secs = 180)]
async fn gzipped_batch_of_1000_is_acked_in_order_and_readable_from_kafka() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("http-batch");
    gw.kafka().create_topic(&topic, 3).await;
    let batch: Vec<Value> = (0..1000)
        .map(|i| {
            let mut r =
                json!({"topic": topic, "id": format!("r{i}"), "key": format!("k{}", i % 7)});
            if i % 10 == 0 {
                r["value_b64"] = json!(base64_of(&[0xff, i as u8]));
                r["headers"] = json!({"n": i.to_string()});
            } else {
                r["value"] = json!({"n": i, "text": "telemetry"});
            }
            r
        })
        .collect();
    let (status, body, _) = post(&gw, None, records(Value::Array(batch.clone())), true).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1000);
    let mut placed: HashMap<(i32, i64), usize> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["id"], format!("r{i}"), "results come in request order: {r}");
        assert_eq!(r["topic"], topic.as_str());
        let place = (r["partition"].as_i64().unwrap() as i32, r["offset"].as_i64().unwrap());
        assert!(placed.insert(place, i).is_none(), "two records acked at {place:?}");
    }
    let read = read_all(&gw.bootstrap, &topic, 3, 1000).await;
    assert_eq!(read.len(), 1000, "every acked record is in Kafka");
    for record in read {
        let i = placed[&(record.partition, record.offset)];
        assert_eq!(record.headers["ferry-id"], format!("r{i}").into_bytes());
        assert_eq!(record.key.as_deref(), Some(format!("k{}", i % 7).as_bytes()));
        if i % 10 == 0 {
            assert_eq!(record.value.as_deref(), Some(&[0xff, i as u8][..]));
            assert_eq!(record.headers["n"], i.to_string().into_bytes());
        } else {
            let value: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
            assert_eq!(value, json!({"n": i, "text": "telemetry"}));
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[ferry_test]
async fn record_errors_stay_with_their_record_and_a_retried_id_is_produced_once() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("http-mixed");
    gw.kafka().create_topic(&topic, 1).await;
    let batch = json!([
        {"topic": topic, "id": "ok-1", "value": {"a": 1}},
        {"topic": "bad topic", "id": "bad-topic", "value": 1},
        {"topic": topic, "id": "bad-field", "value": 1, "from": "latest"},
        {"topic": topic, "id": "bad-partition", "value": 1, "partition": 7},
        {"topic": topic, "value": "no id"},
        {"topic": topic, "id": "dup", "value": "first"},
        {"topic": topic, "id": "dup", "value": "second"},
        "not an object",
    ]);
    let (status, body, _) = post(&gw, None, records(batch), false).await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 8);
    assert_eq!((r[0]["id"].as_str(), r[0]["offset"].as_i64()), (Some("ok-1"), Some(0)));
    assert_eq!(r[1]["error"]["code"], "invalid_topic", "{}", r[1]);
    assert_eq!(r[1]["id"], "bad-topic");
    assert_eq!(r[2]["error"]["code"], "bad_request");
    assert!(r[2]["error"]["message"].as_str().unwrap().contains("`from`"), "{}", r[2]);
    assert_eq!(r[3]["error"]["code"], "bad_request");
    assert!(r[3]["error"]["message"].as_str().unwrap().contains("partition 7"), "{}", r[3]);
    let made_up = r[4]["id"].as_str().expect("an id is made up");
    assert!(!made_up.is_empty() && r[4]["offset"].is_i64(), "{}", r[4]);
    assert_eq!(r[5], r[6], "a retried id still in flight gets the original's result");
    assert_eq!(r[7]["error"]["code"], "bad_request");
    let read = read_all(&gw.bootstrap, &topic, 1, 4).await;
    let values: Vec<String> =
        read.iter().map(|rec| String::from_utf8(rec.value.clone().unwrap()).unwrap()).collect();
    assert_eq!(values, [r#"{"a":1}"#, r#""no id""#, r#""first""#], "nothing produced twice");
    assert_eq!(read[1].headers["ferry-id"], made_up.as_bytes());
}

#[ferry_test]
async fn bad_bodies_get_400_with_a_clear_message() {
    let gw = spawn_gateway().await;
    let cases: [(&[u8], &str); 5] = [
        (b"not json", "{\"records\":[...]}"),
        (b"{}", "missing `records`"),
        (b"{\"records\":{}}", "`records` must be an array"),
        (b"{\"records\":[],\"extra\":1}", "unknown field `extra`"),
        (b"{\"records\":[]}", "`records` is empty"),
    ];
    for (body, expected) in cases {
        let (status, answer, _) = post(&gw, None, body.to_vec(), false).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message:?} should say {expected:?}");
    }
    let response = http()
        .post(format!("http://{}/v1/publish", gw.addr))
        .header("content-encoding", "gzip")
        .body("plainly not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("not valid gzip"));
    let response = http()
        .post(format!("http://{}/v1/publish", gw.addr))
        .header("content-encoding", "br")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
}

#[ferry_test]
async fn too_many_records_too_large_bodies_and_gzip_bombs_get_413() {
    let gw = spawn_gateway_with(|c| {
        c.http_publish.max_records = 10;
        c.http_publish.max_body_bytes = 64 * 1024;
    })
    .await;
    let topic = unique_topic("http-413");
    let eleven: Vec<Value> = (0..11).map(|i| json!({"topic": topic, "value": i})).collect();
    let (status, body, _) = post(&gw, None, records(Value::Array(eleven)), false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 10"));

    let big = records(json!([{"topic": topic, "value": "x".repeat(70 * 1024)}]));
    let (status, body, _) = post(&gw, None, big, false).await;
    assert_eq!(status, 413, "{body}");

    // 100 MiB of spaces gzip to about 100 KiB; over the 64 KiB compressed
    // bound too, so build one that fits compressed: 32 MiB → ~32 KiB.
    let mut bomb = b"{\"records\":[".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 32 * 1024 * 1024));
    let bomb = gzipped(&bomb);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let (status, body, _) = post(&gw, None, bomb, false).await;
    // Sent as gzip without saying so: 400 (not JSON).
    assert_eq!(status, 400, "{body}");
    let response = http()
        .post(format!("http://{}/v1/publish", gw.addr))
        .header("content-encoding", "gzip")
        .body({
            let mut bomb = b"{\"records\":[".to_vec();
            bomb.extend(std::iter::repeat_n(b' ', 32 * 1024 * 1024));
            gzipped(&bomb)
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413, "a gzip bomb is cut at the bound");
    assert_eq!(gw.get("/healthz").await.0, 200);
    let (_, metrics) = gw.get("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ferry_http_publish_requests_total{status=\"413\"}"))
        .expect("413s are counted");
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3.0, "{line}");
}

#[ferry_test]
async fn tokens_acl_and_rate_limit_give_401_403_and_429() {
    let gw = spawn_gateway_with(|c| {
        jwt(c);
        c.http_publish.rate = 1;
        c.http_publish.burst = 5;
    })
    .await;
    let topic = format!("open.{}", unique_topic("http-auth"));
    // Made beforehand, so that the publishes below are quick: the bucket
    // refills one token per second between them.
    gw.kafka().create_topic(&topic, gw_partitions()).await;
    let one = || records(json!([{"topic": topic, "value": 1}]));

    let (status, body, _) = post(&gw, None, one(), false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _, _) = post(&gw, Some("not-a-jwt"), one(), false).await;
    assert_eq!(status, 401);

    let alice = token("alice");
    let mixed = records(json!([
        {"topic": topic, "value": 1},
        {"topic": "private.x", "value": 2},
    ]));
    let (status, body, _) = post(&gw, Some(&alice), mixed, false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("private.x"));

    let (status, body, _) = post(&gw, Some(&alice), one(), false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"][0]["offset"].is_i64(), "{body}");
    let five: Vec<Value> = (0..5).map(|i| json!({"topic": topic, "value": i})).collect();
    let (status, body, headers) = post(&gw, Some(&alice), records(Value::Array(five)), false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let (status, _, _) = post(&gw, Some(&token("bob")), one(), false).await;
    assert_eq!(status, 200, "the rate is per subject");
    // Nothing of the refused batches reached Kafka: alice's one and bob's.
    let read = read_all(&gw.bootstrap, &topic, gw_partitions(), 3).await;
    assert_eq!(read.len(), 2, "{read:?}");
}

/// Partitions of topics the gateway creates (the default config).
fn gw_partitions() -> i32 {
    Config::default().kafka.topic_partitions
}

#[ferry_test]
async fn browser_pages_get_cors_answers_only_from_allowed_origins() {
    let gw =
        spawn_gateway_with(|c| c.auth.allowed_origins = vec!["https://app.example".into()]).await;
    let url = format!("http://{}/v1/publish", gw.addr);
    let preflight = http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let sse = http()
        .request(reqwest::Method::OPTIONS, format!("http://{}/sse", gw.addr))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 204);
    assert!(sse.headers()["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    let evil = http()
        .request(reqwest::Method::OPTIONS, format!("http://{}/sse", gw.addr))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());

    let topic = unique_topic("http-cors");
    let body = records(json!([{"topic": topic, "value": 1}]));
    let allowed = http()
        .post(&url)
        .header("origin", "https://app.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    let other =
        http().post(&url).header("origin", "https://evil.example").body(body).send().await.unwrap();
    assert_eq!(other.status().as_u16(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let read = read_all(&gw.bootstrap, &topic, gw_partitions(), 1).await;
    assert_eq!(read.len(), 1, "the allowed origin's record is in Kafka");
}

/// A topic's JSON Schema applies to HTTP publishes as to socket ones: a
/// value that fails it is that record's `invalid_value` (naming the
/// violation), and only valid records are stored.
#[ferry_test]
async fn values_that_fail_their_topics_schema_are_refused_per_record() {
    let base = unique_topic("http-schema");
    let topic = format!("{base}.readings");
    let entry = ferry_gateway::schema::SchemaConfig {
        topics: format!("{base}.*"),
        schema_file: None,
        schema: Some(
            r#"{"type":"object","required":["temp"],"properties":{"temp":{"type":"number"}}}"#
                .into(),
        ),
    };
    let gw = spawn_gateway_with(|c| c.schemas = vec![entry]).await;
    gw.kafka().create_topic(&topic, 1).await;
    let batch = json!([
        {"topic": topic, "id": "bad", "value": {"temp": "hot"}},
        {"topic": topic, "id": "bytes", "value_b64": "AAE="},
        {"topic": topic, "id": "good", "value": {"temp": 21.5}},
    ]);
    let (status, body, _) = post(&gw, None, records(batch), false).await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(
        (r[0]["id"].as_str(), r[0]["error"]["code"].as_str()),
        (Some("bad"), Some("invalid_value"))
    );
    assert!(r[0]["error"]["message"].as_str().unwrap().contains("/temp"), "{}", r[0]);
    assert_eq!(r[1]["error"]["code"], "invalid_value", "{}", r[1]);
    assert_eq!((r[2]["id"].as_str(), r[2]["offset"].as_i64()), (Some("good"), Some(0)), "{}", r[2]);
    let read = read_all(&gw.bootstrap, &topic, 1, 1).await;
    let values: Vec<&[u8]> = read.iter().map(|rec| rec.value.as_deref().unwrap()).collect();
    assert_eq!(values, [br#"{"temp":21.5}"#.as_slice()], "only the valid record is in Kafka");
}

#[ferry_test]
async fn only_the_documented_body_shape_is_accepted_and_errors_name_the_problem() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("http-shape");
    gw.kafka().create_topic(&topic, 1).await;
    let record = json!({"topic": topic, "value": 1});
    // A bare array, of records or of arrays, is not `{"records":[...]}`:
    // refused as a whole, nothing produced.
    for (body, says) in [
        (json!([[record.clone()]]), "not an array"),
        (json!([record.clone()]), "not an array"),
        (json!({"records": record.clone()}), "`records` must be an array"),
        (json!({"record": [record.clone()]}), "unknown field `record`"),
    ] {
        let (status, answer, _) = post(&gw, None, serde_json::to_vec(&body).unwrap(), false).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message:?} does not say {says:?}");
        assert!(!message.contains("invalid type"), "serde's words, not the caller's: {message}");
    }
    // A record with a `type` gets its own result, in the caller's terms;
    // the records beside it are produced.
    let typed = json!({"type": "publish", "id": "typed", "topic": topic, "value": 2});
    let (status, answer, _) = post(&gw, None, records(json!([typed, record])), false).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["id"], "typed", "{answer}");
    assert_eq!(results[0]["error"]["code"], "bad_request", "{answer}");
    let message = results[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("no `type` field"), "{message}");
    // One partition: offset 0 means nothing before it was produced.
    assert_eq!(results[1]["offset"], 0, "only the untyped record reached Kafka: {answer}");
}
