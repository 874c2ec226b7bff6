//! The gateway's own spans over OTLP/HTTP: a `ferry` process pointed at a
//! collector stand-in (an HTTP server recording what it gets at
//! `/v1/traces`) sends a `ferry.publish` and a `ferry.deliver` span that
//! continue the publish's `traceparent`; one with telemetry unset sends
//! nothing. Telemetry is per process, so each gateway here is a process of
//! its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// The client's trace: its trace id and the client span's id.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An OTLP/HTTP receiver on port 0: every JSON body posted to
/// `/v1/traces`, as it came.
struct Collector {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<usize>>,
}

impl Collector {
    async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let (kept, counted) = (bodies.clone(), requests.clone());
        let app = axum::Router::new().fallback(post(move |body: String| async move {
            *counted.lock().unwrap() += 1;
            if let Ok(value) = serde_json::from_str::<Value>(&body) {
                kept.lock().unwrap().push(value);
            }
            ([("content-type", "application/json")], "{}")
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, bodies, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, with its resource's attributes.
    fn spans(&self) -> Vec<(Value, Value)> {
        let bodies = self.bodies.lock().unwrap();
        let mut spans = Vec::new();
        for body in bodies.iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let attributes = attributes(&resource["resource"]);
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push((span.clone(), attributes.clone()));
                    }
                }
            }
        }
        spans
    }

    /// Waits (at most [`WAIT`]) for a span named `name` in `trace`.
    async fn span(&self, name: &str, trace: &str) -> (Value, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found =
                self.spans().into_iter().find(|(s, _)| s["name"] == name && s["traceId"] == trace);
            if let Some(found) = found {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {name} span of trace {trace} within {WAIT:?}; received: {:?}",
                self.spans().iter().map(|(s, _)| (&s["name"], &s["traceId"])).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An OTLP attribute list (`[{"key","value":{"stringValue"|"intValue"}}]`)
/// as one JSON object; integers (strings in OTLP JSON) as numbers.
fn attributes(holder: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for kv in holder["attributes"].as_array().into_iter().flatten() {
        let value = &kv["value"];
        let value = if let Some(s) = value["stringValue"].as_str() {
            json!(s)
        } else if let Some(i) = value["intValue"].as_i64() {
            json!(i)
        } else if let Some(i) = value["intValue"].as_str().and_then(|s| s.parse::<i64>().ok()) {
            json!(i)
        } else {
            value.clone()
        };
        out.insert(kv["key"].as_str().unwrap_or_default().to_owned(), value);
    }
    Value::Object(out)
}

/// A `ferry` process with `env`, ready (embedded Kafka answering).
async fn ready_node(env: &[(&str, &str)]) -> GatewayProcess {
    let node = GatewayProcess::start(&["--node-id", "otel-node"], env);
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(node.addr, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the node did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node
}

/// Subscribes a client to a new topic, then publishes to it with the
/// client's `traceparent`: returns the ack and the message the subscriber
/// got.
async fn publish_traced(node: &GatewayProcess) -> (String, Value, Value) {
    let topic = unique_topic("otel");
    let mut publisher = Client::connect(&node.ws_url()).await;
    // The topic exists (created by a first publish) before it is subscribed.
    let first = publisher.publish(&topic, json!("untraced")).await;
    assert_eq!(first["type"], "ack", "{first}");
    let mut subscriber = Client::connect(&node.ws_url()).await;
    subscriber.subscribed(&topic).await;
    let ack = publisher
        .request(json!({"type":"publish","topic":topic,"value":{"n":1},"traceparent":TP}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message = subscriber.next_message().await;
    (topic, ack, message)
}

#[ferry_test(timeout_secs = 90)]
async fn publish_and_deliver_spans_continue_the_clients_trace() {
    let collector = Collector::start().await;
    let url = collector.url();
    let node = ready_node(&[("FERRY_TELEMETRY_OTLP_ENDPOINT", &url)]).await;
    let (topic, ack, message) = publish_traced(&node).await;

    let (publish, resource) = collector.span("ferry.publish", TRACE).await;
    assert_eq!(publish["parentSpanId"], CLIENT_SPAN, "the client's span is the parent: {publish}");
    let attrs = attributes(&publish);
    assert_eq!(attrs["messaging.destination.name"], topic.as_str(), "{attrs}");
    assert_eq!(attrs["messaging.kafka.offset"], ack["offset"], "{attrs} {ack}");
    assert_eq!(
        attrs["messaging.destination.partition.id"],
        ack["partition"].to_string().as_str(),
        "{attrs} {ack}"
    );
    assert_eq!(attrs["ferry.outcome"], "ok", "{attrs}");
    assert_eq!(resource["service.name"], "ferry", "{resource}");
    assert_eq!(resource["service.instance.id"], "otel-node", "{resource}");
    assert!(resource["service.version"].is_string(), "{resource}");

    // The record carries the gateway's span as parent, in the same trace.
    let publish_span = publish["spanId"].as_str().unwrap();
    let carried = format!("00-{TRACE}-{publish_span}-01");
    assert_eq!(message["headers"]["traceparent"], carried.as_str(), "{message}");

    let (deliver, _) = collector.span("ferry.deliver", TRACE).await;
    assert_eq!(deliver["parentSpanId"], publish_span, "{deliver}");
    let attrs = attributes(&deliver);
    assert_eq!(attrs["messaging.destination.name"], topic.as_str(), "{attrs}");
    assert_eq!(attrs["messaging.kafka.offset"], ack["offset"], "{attrs}");
    assert_eq!(attrs["ferry.sockets"], 1, "queued to the one subscriber: {attrs}");

    // The untraced first publish has a span of its own trace; no record
    // without trace context gets a deliver span.
    let spans = collector.spans();
    let untraced = spans.iter().filter(|(s, _)| s["traceId"] != TRACE);
    assert!(untraced.clone().any(|(s, _)| s["name"] == "ferry.publish"), "{spans:?}");
    assert!(untraced.clone().all(|(s, _)| s["name"] != "ferry.deliver"), "{spans:?}");
}

/// Unset, there is no exporter: not even the SDK's own environment
/// variables make one, and the client's `traceparent` reaches subscribers
/// as it was sent. The node's shutdown (which flushes an exporter) is
/// awaited before the collector is checked.
#[ferry_test(timeout_secs = 90)]
async fn unset_no_span_leaves_the_node() {
    let collector = Collector::start().await;
    let url = collector.url();
    let traces = format!("{url}/v1/traces");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces),
    ];
    let mut node = ready_node(&env).await;
    let (_, ack, message) = publish_traced(&node).await;
    assert!(ack["offset"].is_i64(), "{ack}");
    assert_eq!(message["headers"]["traceparent"], TP, "{message}");
    node.signal("TERM");
    assert_eq!(node.wait(WAIT).await, Some(0), "the node exits cleanly");
    assert_eq!(*collector.requests.lock().unwrap(), 0, "nothing was exported");
}
