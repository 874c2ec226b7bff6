//! Operating a fleet through the admin API: revocation and disconnects
//! that reach every node through the control topic, who is connected and
//! where, the API's own security, and a drain that ends in a clean exit.
//! Each test has its own control topic, so the nodes of other tests running
//! at the same time are not in its fleet.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_gateway::auth::{AuthMode, Secret};
use ferry_gateway::Config;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

const SECRET: &str = "admin-tests-jwt-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-tests-admin-token-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A token for `sub` issued at `iat`, valid for ten minutes.
fn token_at(sub: &str, iat: i64) -> String {
    let claims = json!({"sub": sub, "iat": iat, "exp": now() + 600});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn token(sub: &str) -> String {
    token_at(sub, now())
}

/// JWT mode (everyone may use `open.**`) with the admin API on loopback
/// port 0 and `control` as the control topic.
fn fleet_config(control: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.hs_secret = Some(Secret(SECRET.into()));
        c.acl = toml::from_str("[[rules]]\npublish = [\"open.**\"]\nsubscribe = [\"open.**\"]\n")
            .unwrap();
        c.admin.enabled = true;
        c.admin.listen = "127.0.0.1:0".parse().unwrap();
        c.admin.token = Some(Secret(ADMIN_TOKEN.into()));
        c.admin.control_topic = control.to_owned();
        c.admin.heartbeat_ms = 200;
        // Nodes in one process would all be `<host>-<pid>`.
        c.node_id = Some(unique_topic("node"));
        c.kafka.auto_create_topics = Some(true);
    }
}

/// A node of the fleet on `kafka`, ready (control topic read). On the real
/// Kafka the node creates the control topic itself; the embedded Kafka
/// answers no CreateTopics request from a client, so the test makes it.
async fn fleet_node(kafka: &TestKafka, control: &str) -> TestGateway {
    if kafka.is_embedded() {
        kafka.create_topic(control, 1).await;
    }
    let node = kafka.spawn_node_with(fleet_config(control)).await;
    let ready = node.wait_readyz(200, WAIT).await;
    assert_eq!(ready, 200, "the node did not get ready: {:?}", node.get("/readyz").await);
    node
}

fn admin_addr(gw: &TestGateway) -> SocketAddr {
    gw.admin.expect("the admin API is on")
}

/// An admin API call: (status, JSON body).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let url = format!("http://{addr}{path}");
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn admin(gw: &TestGateway, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, value) = call(admin_addr(gw), method, path, body, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{method} {path}: {value}");
    value
}

/// Waits until `gw` sees `count` live nodes; returns their ids.
async fn wait_fleet(gw: &TestGateway, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let nodes = admin(gw, "GET", "/admin/v1/nodes", None).await;
        let ids: Vec<String> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap().to_owned())
            .collect();
        if ids.len() == count {
            return ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "fleet of {count} not seen: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request(gw: &TestGateway, token: &str) -> Request {
    let mut request = gw.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn connect(gw: &TestGateway, token: &str) -> Client {
    Client::connect_request(request(gw, token)).await
}

/// The upgrade's status with `token` (101: accepted).
async fn upgrade_status(gw: &TestGateway, token: &str) -> u16 {
    match Client::connect_unauthenticated(request(gw, token)).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

/// The socket is still served: a ping is answered.
async fn still_open(client: &mut Client) {
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[ferry_test(timeout_secs = 180)]
async fn a_revoked_subject_is_closed_and_refused_on_every_node_and_after_a_restart() {
    let kafka = TestKafka::start().await;
    let control = unique_topic("control");
    let a = fleet_node(&kafka, &control).await;
    let b = fleet_node(&kafka, &control).await;
    wait_fleet(&a, 2).await;
    let alice = unique_topic("alice");
    let bob = unique_topic("bob");
    let alice_token = token(&alice);
    let mut alice_on_a = connect(&a, &alice_token).await;
    let mut alice_on_b = connect(&b, &alice_token).await;
    let mut bob_on_b = connect(&b, &token(&bob)).await;

    let revoked = admin(&a, "POST", "/admin/v1/revoke", Some(json!({"subject": alice}))).await;
    assert_eq!(revoked["closed"], 2, "{revoked}");
    assert_eq!(revoked["missing"], json!([]), "{revoked}");
    // Node B closed its socket before it answered: the close is on its way.
    let closed = tokio::time::timeout(Duration::from_secs(2), alice_on_b.closed()).await;
    assert_eq!(closed.expect("closed within 2 s on the other node"), Some(4502));
    assert_eq!(alice_on_a.closed().await, Some(4502));
    still_open(&mut bob_on_b).await;

    for node in [&a, &b] {
        assert_eq!(upgrade_status(node, &alice_token).await, 401, "refused on every node");
    }
    // A token issued after the revocation is accepted again.
    let fresh = token_at(&alice, now() + 1);
    assert_eq!(upgrade_status(&b, &fresh).await, 101);

    // A node started afterwards reads the revocation before it is ready.
    drop(a);
    let c = fleet_node(&kafka, &control).await;
    assert_eq!(upgrade_status(&c, &alice_token).await, 401, "still refused after a restart");
    let mut bob_on_c = connect(&c, &token(&bob)).await;
    still_open(&mut bob_on_c).await;
}

#[ferry_test(timeout_secs = 180)]
async fn disconnects_by_subject_and_by_session_reach_every_node() {
    let kafka = TestKafka::start().await;
    let control = unique_topic("control");
    let a = fleet_node(&kafka, &control).await;
    let b = fleet_node(&kafka, &control).await;
    wait_fleet(&b, 2).await;
    let (carol, dave) = (unique_topic("carol"), unique_topic("dave"));
    let topic = format!("open.{}", unique_topic("presence"));
    kafka.create_topic(&topic, 1).await;
    let mut carol_on_a = connect(&a, &token(&carol)).await;
    let mut carol_on_b = connect(&b, &token(&carol)).await;
    carol_on_b.subscribed(&topic).await;
    let mut dave_1 = connect(&b, &token(&dave)).await;
    let mut dave_2 = connect(&b, &token(&dave)).await;
    dave_2.subscribed(&topic).await;

    // Who is connected, and where.
    let listed = admin(&a, "GET", &format!("/admin/v1/connections?subject={carol}"), None).await;
    let listed = listed["connections"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let on_b = listed.iter().find(|c| c["session"] == carol_on_b.welcome["session"]).unwrap();
    assert_eq!(on_b["node"], b_name(&b).await);
    assert_eq!(on_b["transport"], "websocket");
    assert_eq!(on_b["topics"], json!([topic]));
    let counts = admin(&a, "GET", &format!("/admin/v1/topics/{topic}/subscribers"), None).await;
    assert_eq!(counts["total"], 2, "{counts}");
    assert_eq!(counts["nodes"][b_name(&b).await], 2, "{counts}");

    // By subject: every socket of carol, on both nodes.
    let done = admin(&a, "POST", "/admin/v1/disconnect", Some(json!({"subject": carol}))).await;
    assert_eq!(done["closed"], 2, "{done}");
    assert_eq!(carol_on_a.closed().await, Some(4006));
    assert_eq!(carol_on_b.closed().await, Some(4006));
    // Her token still holds: she may come back.
    assert_eq!(upgrade_status(&a, &token(&carol)).await, 101);

    // By session: one of dave's two sockets.
    let session = dave_2.welcome["session"].as_str().unwrap().to_owned();
    let done = admin(&a, "POST", "/admin/v1/disconnect", Some(json!({"session": session}))).await;
    assert_eq!(done["closed"], 1, "{done}");
    assert_eq!(dave_2.closed().await, Some(4006));
    still_open(&mut dave_1).await;
}

/// The `node` name a gateway gives in `welcome`.
async fn b_name(gw: &TestGateway) -> String {
    let client = connect(gw, &token("who")).await;
    client.welcome["node"].as_str().unwrap().to_owned()
}

#[ferry_test]
async fn the_admin_api_is_off_by_default_and_needs_its_token() {
    let plain = spawn_gateway().await;
    assert!(plain.admin.is_none(), "off by default");
    assert_eq!(plain.get("/admin/v1/nodes").await.0, 404, "never on the public port");

    let kafka = TestKafka::start().await;
    let control = unique_topic("control");
    let node = fleet_node(&kafka, &control).await;
    let addr = admin_addr(&node);
    assert_eq!(call(addr, "GET", "/admin/v1/nodes", None, None).await.0, 401, "no token");
    let user = token("mallory");
    let (status, body) = call(addr, "GET", "/admin/v1/nodes", None, Some(&user)).await;
    assert_eq!(status, 401, "a user's JWT is no admin token: {body}");
    let (status, _) =
        call(addr, "POST", "/admin/v1/revoke", Some(json!({"subject": "x"})), Some(&user)).await;
    assert_eq!(status, 401);
    assert_eq!(call(addr, "GET", "/admin/v1/nodes", None, Some(ADMIN_TOKEN)).await.0, 200);
    assert_eq!(node.get("/admin/v1/nodes").await.0, 404, "not on the public port");

    // Requests that name nothing, or too much, are refused in words.
    for body in [json!({}), json!({"subject": "a", "session": "b"}), json!({"subjekt": "a"})] {
        let (status, answer) =
            call(addr, "POST", "/admin/v1/disconnect", Some(body.clone()), Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
}

#[ferry_test(timeout_secs = 180)]
async fn a_drain_closes_every_socket_with_1012_over_its_time_and_the_node_exits() {
    let kafka = TestKafka::start().await;
    let control = unique_topic("control");
    let extra = format!(
        "[auth]\nmode = \"jwt\"\nhs_secret = \"{SECRET}\"\n[[acl.rules]]\nsubscribe = [\"open.**\"]\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncontrol_topic = \"{control}\"\n"
    );
    if kafka.is_embedded() {
        kafka.create_topic(&control, 1).await;
    }
    let file = node_config(&kafka, "ferry-drain", &extra);
    let mut node = GatewayProcess::start(
        &["--config", file.to_str().unwrap()],
        &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN), ("FERRY_KAFKA_AUTO_CREATE_TOPICS", "true")],
    );
    let line = node.wait_log("admin API on http://", WAIT).await.expect("admin API");
    let addr: SocketAddr = line.split("http://").nth(1).unwrap().trim().parse().unwrap();
    let ready = |addr| async move { http_get(addr, "/readyz").await.0 };
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(node.addr).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the node did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topic = format!("open.{}", unique_topic("drain"));
    kafka.create_topic(&topic, 1).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let url = node.ws_url().into_client_request().unwrap();
        let mut request = url;
        let bearer = format!("Bearer {}", token(&format!("drained-{i}")));
        request.headers_mut().insert("Authorization", bearer.parse().unwrap());
        let mut client = Client::connect_request(request).await;
        client.subscribed(&topic).await;
        clients.push(client);
    }

    let started = tokio::time::Instant::now();
    let (status, body) =
        call(addr, "POST", "/admin/v1/drain", Some(json!({"seconds": 2})), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["connections"], 20, "{body}");
    assert_eq!(ready(node.addr).await, 503, "/readyz is 503 while draining");
    let mut late = node.ws_url().into_client_request().unwrap();
    let bearer = format!("Bearer {}", token("late"));
    late.headers_mut().insert("Authorization", bearer.parse().unwrap());
    assert_eq!(Client::connect_unauthenticated(late).await.err(), Some(503), "no new connection");
    let (again, _) =
        call(addr, "POST", "/admin/v1/drain", Some(json!({"seconds": 2})), Some(ADMIN_TOKEN)).await;
    assert_eq!(again, 409, "one drain at a time");

    // Read at once, so that each close counts from when it came.
    let waits = clients.iter_mut().map(|client| async move {
        let code = client.closed().await;
        (code, started.elapsed())
    });
    let closes = futures::future::join_all(waits).await;
    assert!(closes.iter().all(|(code, _)| *code == Some(1012)), "{closes:?}");
    // Spread over the drain, not all at once.
    let first = closes.iter().map(|(_, at)| *at).min().unwrap();
    let last = closes.iter().map(|(_, at)| *at).max().unwrap();
    assert!(last - first >= Duration::from_millis(1_000), "closes {first:?}..{last:?}");
    let code = node.wait(WAIT).await;
    assert_eq!(code, Some(0), "the drained node exits cleanly");
}

/// `ferry drain`, as a Kubernetes `preStop` hook runs it: it drains the
/// node of the same configuration and returns once the node has exited.
#[ferry_test(timeout_secs = 180)]
async fn ferry_drain_returns_once_the_drained_node_has_exited() {
    let kafka = TestKafka::start().await;
    let control = unique_topic("control");
    if kafka.is_embedded() {
        kafka.create_topic(&control, 1).await;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        "[admin]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ncontrol_topic = \"{control}\"\n"
    );
    let file = node_config(&kafka, "ferry-prestop", &extra);
    let file = file.to_str().unwrap();
    let env = [("FERRY_ADMIN_TOKEN", ADMIN_TOKEN), ("FERRY_KAFKA_AUTO_CREATE_TOPICS", "true")];
    let mut node = GatewayProcess::start(&["--config", file], &env);
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(node.addr, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the node did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = Client::connect(&node.ws_url()).await;

    let drain = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["drain", "--seconds", "1", "--config", file])
        .envs(env)
        .output();
    let output = tokio::time::timeout(WAIT * 2, drain).await.expect("ferry drain returns").unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("the node has exited"), "{said}");
    assert_eq!(client.closed().await, Some(1012));
    assert_eq!(
        node.wait(Duration::from_secs(5)).await,
        Some(0),
        "already gone when drain returned"
    );
}

/// A node whose control topic cannot be read (here: it does not exist and
/// the node may not create it) says so on `/readyz` and takes no
/// connection, rather than let a revoked token in.
#[ferry_test]
async fn a_node_that_cannot_read_the_control_topic_says_so_and_takes_no_connection() {
    let kafka = TestKafka::start().await;
    let control = unique_topic("missing-control");
    let node = kafka
        .spawn_node_with(|c| {
            fleet_config(&control)(c);
            c.kafka.auto_create_topics = Some(false);
        })
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = node.get("/readyz").await;
        if body.contains("control topic cannot be read") {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains(&control), "names the topic: {body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz never said why: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(upgrade_status(&node, &token("someone")).await, 503, "no connection meanwhile");
}
