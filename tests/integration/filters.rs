//! Server-side filters: records that do not match never leave the gateway;
//! an ACL-imposed filter cannot be widened by the client.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// (key, header "type", value) of the records every filter test produces.
fn records() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("acme.dev1", "reading", json!({"temp": 21.5, "status": "ok", "n": 0})),
        ("acme.dev2", "alert", json!({"temp": 35.0, "status": "hot", "n": 1})),
        ("globex.dev1", "reading", json!({"temp": 18, "status": "ok", "n": 2})),
        ("globex.dev2", "alert", json!({"temp": 40, "status": "fire", "n": 3})),
        ("acme.dev3", "reading", json!({"temp": 30, "status": "warm", "n": 4})),
    ]
}

async fn produce_records(bootstrap: &str, topic: &str) {
    let producer = producer(bootstrap);
    for (key, kind, value) in records() {
        let body = value.to_string();
        produce(
            &producer,
            topic,
            Some(0),
            Some(key.as_bytes()),
            body.as_bytes(),
            &[("type", kind.as_bytes())],
        )
        .await;
    }
}

async fn received_ns(client: &mut Client, expected: usize) -> Vec<i64> {
    let mut ns = Vec::new();
    for _ in 0..expected {
        ns.push(client.next_message().await["value"]["n"].as_i64().unwrap());
    }
    assert!(
        client.message_within(Duration::from_millis(500)).await.is_none(),
        "nothing else: {ns:?}"
    );
    ns
}

#[ferry_test]
async fn every_filter_kind_delivers_only_matching_records() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("filters");
    gw.kafka().create_topic(&topic, 1).await;
    let cases = vec![
        (json!({"key": {"eq": "acme.dev2"}}), vec![1]),
        (json!({"key": {"prefix": "globex."}}), vec![2, 3]),
        (json!({"header": {"name": "type", "eq": "alert"}}), vec![1, 3]),
        (json!({"value": {"path": "status", "eq": "ok"}}), vec![0, 2]),
        (json!({"value": {"path": "status", "in": ["hot", "fire", "warm"]}}), vec![1, 3, 4]),
        (json!({"value": {"path": "temp", "gte": 30}}), vec![1, 3, 4]),
        (json!({"value": {"path": "temp", "gt": 18, "lt": 31}}), vec![0, 4]),
        (
            json!({"all": [{"key": {"prefix": "acme."}}, {"header": {"name": "type", "eq": "reading"}}]}),
            vec![0, 4],
        ),
    ];
    let mut clients = Vec::new();
    for (filter, _) in &cases {
        let mut client = gw.client().await;
        let reply = client.request(json!({"type":"subscribe","topic":topic,"filter":filter})).await;
        assert_eq!(reply["type"], "subscribed", "{filter}: {reply}");
        clients.push(client);
    }
    // Two sockets share one filter (one group in the hub): both get it all.
    let mut twin = gw.client().await;
    twin.request(json!({"type":"subscribe","topic":topic,"filter":{"key":{"prefix":"globex."}}}))
        .await;
    let mut unfiltered = gw.client().await;
    unfiltered.subscribed(&topic).await;

    produce_records(&gw.bootstrap, &topic).await;
    for ((filter, want), client) in cases.iter().zip(&mut clients) {
        assert_eq!(&received_ns(client, want.len()).await, want, "{filter}");
    }
    assert_eq!(received_ns(&mut twin, 2).await, vec![2, 3]);
    assert_eq!(received_ns(&mut unfiltered, 5).await, vec![0, 1, 2, 3, 4]);
}

#[ferry_test]
async fn filters_apply_to_replays_and_bad_filters_are_refused() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("filtered-replay");
    gw.kafka().create_topic(&topic, 1).await;
    produce_records(&gw.bootstrap, &topic).await;
    let mut client = gw.client().await;
    let reply = client
        .request(json!({"type":"subscribe","topic":topic,"from":"earliest","filter":{"value":{"path":"temp","lt":25}}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(received_ns(&mut client, 2).await, vec![0, 2]);

    let bad = client
        .request(json!({"type":"subscribe","topic":unique_topic("x"),"filter":{"value":{"path":"a","ne":1}}}))
        .await;
    assert_eq!(bad["code"], "bad_request", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("ne"), "{bad}");
}

#[ferry_test]
async fn an_acl_imposed_filter_cannot_be_widened() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
    let topic = unique_topic("tenants");
    let gw = spawn_gateway_with(|c| {
        c.auth.mode = ferry_gateway::auth::AuthMode::Jwt;
        c.auth.hs_secret = Some(ferry_gateway::auth::Secret(SECRET.into()));
        c.acl = toml::from_str(&format!(
            r#"
            [[rules]]
            subscribe = [{{ topic = "{topic}", filter = {{ key = {{ prefix = "{{claims.tenant}}." }} }} }}]
        "#
        ))
        .unwrap();
    })
    .await;
    gw.kafka().create_topic(&topic, 1).await;
    let token = |tenant: &str| {
        let exp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                + 600;
        let claims = json!({"sub": "dash", "tenant": tenant, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let connect = |tenant: &'static str| {
        let url = gw.ws_url();
        let token = token(tenant);
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
            Client::connect_request(request).await
        }
    };
    let mut plain = connect("acme").await;
    plain.subscribed(&topic).await;
    // Asking for another tenant's prefix only narrows further: nothing.
    let mut sneaky = connect("acme").await;
    let reply = sneaky
        .request(json!({"type":"subscribe","topic":topic,"filter":{"key":{"prefix":"globex."}}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // A hostile claim is used literally.
    let mut hostile = connect("*").await;
    hostile.subscribed(&topic).await;

    produce_records(&gw.bootstrap, &topic).await;
    assert_eq!(received_ns(&mut plain, 3).await, vec![0, 1, 4]);
    assert_eq!(received_ns(&mut sneaky, 0).await, Vec::<i64>::new());
    assert_eq!(received_ns(&mut hostile, 0).await, Vec::<i64>::new());

    // A refresh that changes the tenant ends the subscription.
    plain.send(json!({"type":"auth","id":"r1","token":token("globex")})).await;
    assert_eq!(plain.reply("r1").await["type"], "authed");
    assert_eq!(
        plain.reply_without_id().await,
        json!({"type":"unsubscribed","topic":topic,"reason":"forbidden"})
    );
}
