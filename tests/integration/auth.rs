//! Authentication and authorization as a client sees them. Tokens are
//! minted here with keys generated at test time (openssl), independently of
//! the gateway's verification code; JWKS is served by a small HTTP server in
//! the test.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ferry_gateway::auth::{AuthMode, PublicKeyConfig, Secret};
use ferry_gateway::Config;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A key pair made by openssl: (private PEM, public PEM path).
struct KeyPair {
    private: Vec<u8>,
    public_file: PathBuf,
}

fn openssl_key(kind: &str) -> KeyPair {
    let dir = std::env::temp_dir().join(format!("ferry-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let mut gen = std::process::Command::new("openssl");
    gen.args(["genpkey", "-out", private.to_str().unwrap(), "-algorithm"]);
    match kind {
        "rsa" => gen.args(["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        "p256" => gen.args(["EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        "p384" => gen.args(["EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        "ed25519" => gen.args(["ED25519"]),
        other => panic!("{other}"),
    };
    assert!(gen.status().unwrap().success(), "openssl genpkey {kind}");
    let status = std::process::Command::new("openssl")
        .args([
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    KeyPair { private: std::fs::read(private).unwrap(), public_file: public }
}

fn encoding_key(alg: Algorithm, key: &KeyPair) -> EncodingKey {
    use Algorithm as A;
    match alg {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            EncodingKey::from_rsa_pem(&key.private).unwrap()
        }
        A::ES256 | A::ES384 => EncodingKey::from_ec_pem(&key.private).unwrap(),
        A::EdDSA => EncodingKey::from_ed_pem(&key.private).unwrap(),
        _ => unreachable!(),
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, claims)
}

fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A JWT gateway with the shared secret and a policy that lets everyone
/// use `open.**` and their own `user.{sub}.**`.
fn jwt_config(tweak: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.hs_secret = Some(Secret(SECRET.into()));
        c.auth.leeway_secs = 0;
        c.acl = toml::from_str(
            r#"
            [[rules]]
            publish = ["open.**", "user.{sub}.**"]
            subscribe = ["open.**", "user.{sub}.**", "tenant.{claims.tenant}.**"]
            [[rules]]
            match = { roles = "admin" }
            publish = ["**"]
            subscribe = ["**"]
        "#,
        )
        .unwrap();
        tweak(c);
    }
}

fn request(gw: &TestGateway, token: Option<&str>) -> Request {
    let mut request = gw.ws_url().into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The HTTP status of an upgrade with `token` in the header (101 = accepted).
async fn upgrade_status(gw: &TestGateway, token: &str) -> u16 {
    match Client::connect_unauthenticated(request(gw, Some(token))).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

#[ferry_test]
async fn each_algorithm_family_is_accepted_with_its_key_and_refused_with_another() {
    let rsa = openssl_key("rsa");
    let rsa_ps = openssl_key("rsa");
    let p256 = openssl_key("p256");
    let p384 = openssl_key("p384");
    let ed = openssl_key("ed25519");
    let keys: Vec<(Algorithm, &KeyPair)> = vec![
        (Algorithm::RS256, &rsa),
        (Algorithm::PS256, &rsa_ps),
        (Algorithm::ES256, &p256),
        (Algorithm::ES384, &p384),
        (Algorithm::EdDSA, &ed),
    ];
    let public_keys: Vec<PublicKeyConfig> = keys
        .iter()
        .map(|(alg, k)| PublicKeyConfig {
            alg: format!("{alg:?}"),
            pem_file: k.public_file.clone(),
            kid: None,
        })
        .collect();
    let gw = spawn_gateway_with(jwt_config(|c| c.auth.public_keys = public_keys)).await;

    for (alg, key) in &keys {
        let token = sign(*alg, &encoding_key(*alg, key), None, &claims("alice", json!({})));
        let client = Client::connect_request(request(&gw, Some(&token))).await;
        assert_eq!(client.welcome["subject"], "alice", "{alg:?}");
        let other = openssl_key(match alg {
            Algorithm::ES256 => "p256",
            Algorithm::ES384 => "p384",
            Algorithm::EdDSA => "ed25519",
            _ => "rsa",
        });
        let forged = sign(*alg, &encoding_key(*alg, &other), None, &claims("alice", json!({})));
        assert_eq!(upgrade_status(&gw, &forged).await, 401, "{alg:?} with a foreign key");
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let good = sign(
            alg,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            &claims("bob", json!({})),
        );
        assert_eq!(upgrade_status(&gw, &good).await, 101, "{alg:?}");
        let bad = sign(
            alg,
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more!!"),
            None,
            &claims("bob", json!({})),
        );
        assert_eq!(upgrade_status(&gw, &bad).await, 401, "{alg:?} with a wrong secret");
    }
    // RS384 was not configured for the RSA key: pinned, not taken from the header.
    let rs384 = sign(
        Algorithm::RS384,
        &encoding_key(Algorithm::RS384, &rsa),
        None,
        &claims("a", json!({})),
    );
    assert_eq!(upgrade_status(&gw, &rs384).await, 401);
}

#[ferry_test]
async fn every_kind_of_bad_token_is_refused() {
    let rsa = openssl_key("rsa");
    let gw = spawn_gateway_with(jwt_config(|c| {
        c.auth.issuer = Some("https://idp.example".into());
        c.auth.audience = Some("ferry".into());
        c.auth.max_token_bytes = 2048;
        c.auth.public_keys = vec![PublicKeyConfig {
            alg: "RS256".into(),
            pem_file: rsa.public_file.clone(),
            kid: None,
        }];
    }))
    .await;
    let good =
        json!({"sub": "u", "exp": now() + 600, "iss": "https://idp.example", "aud": "ferry"});
    assert_eq!(upgrade_status(&gw, &hs(&good)).await, 101, "the valid token passes");

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good));
    let public_pem = std::fs::read(&rsa.public_file).unwrap();
    let confusion = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), None, &good);
    let mut tampered = hs(&good);
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        hs(&c)
    };
    let cases = vec![
        ("alg none", none),
        ("HS token signed with our RSA public key", confusion),
        ("tampered signature", tampered),
        ("expired", with(json!({"exp": now() - 120}))),
        ("nbf in the future", with(json!({"nbf": now() + 600}))),
        ("wrong iss", with(json!({"iss": "https://evil.example"}))),
        ("missing iss", with(json!({"iss": null}))),
        ("wrong aud", with(json!({"aud": "other"}))),
        ("missing aud", with(json!({"aud": null}))),
        ("missing exp", with(json!({"exp": null}))),
        ("string exp", with(json!({"exp": (now() + 600).to_string()}))),
        ("missing sub", with(json!({"sub": null}))),
        ("oversize", with(json!({"pad": "x".repeat(3000)}))),
        ("not a JWT", "hello".to_owned()),
    ];
    for (name, token) in &cases {
        assert_eq!(upgrade_status(&gw, token).await, 401, "header: {name}");
        // The same token in an auth frame gets `unauthorized` and the socket
        // stays unauthenticated.
        let mut client = Client::connect_unauthenticated(request(&gw, None)).await.unwrap();
        let reply = client.auth(token).await;
        assert_eq!(reply["code"], "unauthorized", "frame: {name}: {reply}");
    }
}

#[ferry_test]
async fn token_via_first_frame_and_query_when_enabled() {
    let gw = spawn_gateway_with(jwt_config(|_| {})).await;
    let token = hs(&claims("carol", json!({})));

    // First frame: nothing but `auth` is answered before it.
    let mut client = Client::connect_unauthenticated(request(&gw, None)).await.unwrap();
    let reply = client.request(json!({"type": "ping"})).await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let welcome = client.auth(&token).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["subject"], "carol");
    let expires_at = welcome["expires_at"].as_i64().unwrap();
    assert!((now() + 500) * 1000 < expires_at && expires_at <= (now() + 600) * 1000);
    assert_eq!(client.request(json!({"type": "ping"})).await["type"], "pong");

    // Query parameter: ignored unless enabled.
    let url = format!("{}?token={token}", gw.ws_url());
    let mut client =
        Client::connect_unauthenticated(url.into_client_request().unwrap()).await.unwrap();
    let reply = client.request(json!({"type": "ping"})).await;
    assert_eq!(reply["code"], "unauthorized", "query tokens are off by default");

    let gw = spawn_gateway_with(jwt_config(|c| c.auth.allow_query_token = true)).await;
    let url = format!("{}?token={token}", gw.ws_url());
    let client = Client::connect_request(url.into_client_request().unwrap()).await;
    assert_eq!(client.welcome["subject"], "carol");
}

#[ferry_test]
async fn unauthenticated_socket_is_closed_after_the_auth_timeout() {
    let gw = spawn_gateway_with(jwt_config(|c| c.auth.auth_timeout_ms = 300)).await;
    let mut client = Client::connect_unauthenticated(request(&gw, None)).await.unwrap();
    assert_eq!(client.closed().await, Some(4003));
}

#[ferry_test]
async fn refresh_before_expiry_keeps_socket_and_subscriptions_and_expiry_closes() {
    let gw = spawn_gateway_with(jwt_config(|_| {})).await;
    let topic = format!("open.{}", unique_topic("refresh"));
    let short = json!({"sub": "dave", "exp": now() + 5});
    let mut client = Client::connect_request(request(&gw, Some(&hs(&short)))).await;
    client.subscribed(&topic).await;
    let authed = client.auth(&hs(&claims("dave", json!({})))).await;
    assert_eq!(authed["type"], "authed", "{authed}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Past the first token's expiry: still open, still subscribed.
    client.acked(&topic, json!("after refresh")).await;
    assert_eq!(client.next_message().await["value"], "after refresh");

    // Without a refresh the socket is closed with 4002 when the token ends.
    let mut lapsing =
        Client::connect_request(request(&gw, Some(&hs(&json!({"sub": "erin", "exp": now() + 2})))))
            .await;
    assert_eq!(lapsing.closed().await, Some(4002));
}

#[ferry_test]
async fn refresh_for_another_subject_closes_4501() {
    let gw = spawn_gateway_with(jwt_config(|_| {})).await;
    let mut client =
        Client::connect_request(request(&gw, Some(&hs(&claims("frank", json!({})))))).await;
    client.send(json!({"type": "auth", "token": hs(&claims("mallory", json!({})))})).await;
    assert_eq!(client.closed().await, Some(4501));
}

#[ferry_test]
async fn refresh_that_removes_a_permission_ends_that_subscription() {
    let gw = spawn_gateway_with(jwt_config(|_| {})).await;
    let suffix = unique_topic("t");
    let (acme, open) = (format!("tenant.acme.{suffix}"), format!("open.{suffix}"));
    let mut client = Client::connect_request(request(
        &gw,
        Some(&hs(&claims("gina", json!({"tenant": "acme"})))),
    ))
    .await;
    client.subscribed(&acme).await;
    client.subscribed(&open).await;
    client.send(json!({"type": "auth", "id": "r1", "token": hs(&claims("gina", json!({"tenant": "other"})))})).await;
    assert_eq!(client.reply("r1").await["type"], "authed");
    let ended = client.reply_without_id().await;
    assert_eq!(ended, json!({"type": "unsubscribed", "topic": acme, "reason": "forbidden"}));
    // The allowed subscription goes on.
    let admin = hs(&claims("root", json!({"roles": ["admin"]})));
    let mut publisher = Client::connect_request(request(&gw, Some(&admin))).await;
    publisher.acked(&acme, json!("hidden")).await;
    publisher.acked(&open, json!("visible")).await;
    assert_eq!(client.next_message().await["value"], "visible");
    assert!(client.message_within(Duration::from_millis(300)).await.is_none());
}

#[ferry_test]
async fn acl_denies_by_default_and_hostile_claims_grant_nothing() {
    let gw = spawn_gateway_with(jwt_config(|_| {})).await;
    let id = unique_topic("x");
    let mut own = Client::connect_request(request(
        &gw,
        Some(&hs(&claims("henry", json!({"tenant": "acme"})))),
    ))
    .await;
    assert_eq!(own.publish(&format!("user.henry.{id}"), json!(1)).await["type"], "ack");
    let denied = own.publish(&format!("user.ivan.{id}"), json!(1)).await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
    assert_eq!(own.subscribe(&format!("secret.{id}")).await["code"], "forbidden");
    own.subscribed(&format!("tenant.acme.{id}")).await;

    for tenant in ["a.*", "**", "*", "../x", "acme.x"] {
        let token = hs(&claims("h", json!({"tenant": tenant})));
        let mut hostile = Client::connect_request(request(&gw, Some(&token))).await;
        for topic in
            [format!("tenant.acme.{id}"), format!("tenant.a.{id}"), format!("tenant.x.{id}")]
        {
            let reply = hostile.subscribe(&topic).await;
            assert_eq!(reply["code"], "forbidden", "tenant {tenant:?} on {topic}: {reply}");
        }
    }
}

#[ferry_test]
async fn policy_reloads_when_the_file_changes_and_a_bad_one_is_rejected() {
    let dir = std::env::temp_dir().join(format!("ferry-acl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ferry.toml");
    let write = |rules: &str| {
        std::fs::write(&file, format!("[auth]\nmode = \"jwt\"\nhs_secret = \"{SECRET}\"\n{rules}"))
            .unwrap();
    };
    write("[[acl.rules]]\nsubscribe = [\"a.**\"]\n");
    let overrides =
        ferry_gateway::config::Overrides { config_file: Some(file.clone()), ..Default::default() };
    let mut config = ferry_gateway::config::load(&overrides, Vec::new()).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    if let Some(bootstrap) = real_kafka() {
        config.kafka.brokers = Some(bootstrap);
        config.kafka.auto_create_topics = Some(true);
    }
    let gw = spawn_gateway_config(config).await;
    let token = hs(&claims("jo", json!({})));
    let mut client = Client::connect_request(request(&gw, Some(&token))).await;
    let topic = format!("b.{}", unique_topic("reload"));
    assert_eq!(client.subscribe(&topic).await["code"], "forbidden");

    // mtime granularity: make sure the rewrite is seen as a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write("[[acl.rules]]\nsubscribe = [\"a.**\", \"b.**\"]\n");
    let mut allowed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if client.subscribe(&topic).await["type"] == "subscribed" {
            allowed = true;
            break;
        }
    }
    assert!(allowed, "the new policy took effect without restart");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    write("[[acl.rules]]\nsubscribe = [\"a.**.b\"]\n"); // invalid: `**` not last
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = format!("b.{}", unique_topic("kept"));
    assert_eq!(client.subscribe(&other).await["type"], "subscribed", "the old policy stays");
}

#[ferry_test]
async fn origin_allow_list() {
    let gw = spawn_gateway_with(jwt_config(|c| {
        c.auth.allowed_origins = vec!["https://app.example".into()]
    }))
    .await;
    let token = hs(&claims("kim", json!({})));
    let with_origin = |origin: &str| {
        let mut r = request(&gw, Some(&token));
        r.headers_mut().insert("Origin", origin.parse().unwrap());
        r
    };
    assert_eq!(
        Client::connect_unauthenticated(with_origin("https://evil.example")).await.err(),
        Some(403)
    );
    assert!(Client::connect_unauthenticated(with_origin("https://app.example")).await.is_ok());
    assert!(
        Client::connect_unauthenticated(request(&gw, Some(&token))).await.is_ok(),
        "no Origin: not a browser"
    );
}

#[ferry_test]
async fn publish_rate_limit_then_close() {
    let gw = spawn_gateway_with(jwt_config(|c| {
        c.limits.publish_rate = 5;
        c.limits.publish_burst = 5;
        c.limits.rate_limit_strikes = 30;
    }))
    .await;
    let mut client =
        Client::connect_request(request(&gw, Some(&hs(&claims("lee", json!({})))))).await;
    assert_eq!(client.welcome["limits"]["publish_rate"], 5);
    let topic = format!("open.{}", unique_topic("rate"));
    for i in 0..20 {
        client.send(json!({"type":"publish","id":format!("r{i}"),"topic":topic,"value":i})).await;
    }
    let mut limited = 0;
    for i in 0..20 {
        let reply = client.reply(&format!("r{i}")).await;
        if reply["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(reply["type"], "ack", "{reply}");
        }
    }
    // 15 over the burst, minus what refills while they are read (5/s).
    assert!((5..=15).contains(&limited), "{limited} of 20 refused with a burst of 5");
    for i in 0..100 {
        client.send(json!({"type":"publish","id":format!("s{i}"),"topic":topic,"value":i})).await;
    }
    let code = loop {
        match client.next_frame_or_close().await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(4004), "a client that keeps going is closed");
}

#[ferry_test]
async fn connections_per_subject_are_limited() {
    let gw = spawn_gateway_with(jwt_config(|c| c.limits.max_connections_per_subject = 2)).await;
    let token = hs(&claims("max", json!({})));
    let _a = Client::connect_request(request(&gw, Some(&token))).await;
    let b = Client::connect_request(request(&gw, Some(&token))).await;
    assert_eq!(upgrade_status(&gw, &token).await, 429);
    drop(b);
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if upgrade_status(&gw, &token).await == 101 {
            ok = true;
            break;
        }
    }
    assert!(ok, "a closed connection frees its slot");
}

#[ferry_test]
async fn jwks_keys_rotate_without_restart_and_unknown_kids_are_rate_limited() {
    let key_a = openssl_key("rsa");
    let key_b = openssl_key("rsa");
    let jwk = |key: &KeyPair, kid: &str| {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
            &encoding_key(Algorithm::RS256, key),
            Algorithm::RS256,
        )
        .unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    };
    let served = Arc::new(Mutex::new(json!({"keys": [jwk(&key_a, "a")]})));
    let hits = Arc::new(AtomicUsize::new(0));
    let app = {
        let (served, hits) = (served.clone(), hits.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, hits) = (served.clone(), hits.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    axum::Json(served.lock().unwrap().clone())
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let gw = spawn_gateway_with(jwt_config(move |c| {
        c.auth.hs_secret = None;
        c.auth.jwks_url = Some(url);
        c.auth.jwks_min_refetch_ms = 1_000;
    }))
    .await;
    let token_a = sign(
        Algorithm::RS256,
        &encoding_key(Algorithm::RS256, &key_a),
        Some("a"),
        &claims("nia", json!({})),
    );
    let mut ok = false;
    for _ in 0..50 {
        if upgrade_status(&gw, &token_a).await == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "key a from JWKS");

    // Rotation: the provider now serves key b only.
    *served.lock().unwrap() = json!({"keys": [jwk(&key_b, "b")]});
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let token_b = sign(
        Algorithm::RS256,
        &encoding_key(Algorithm::RS256, &key_b),
        Some("b"),
        &claims("nia", json!({})),
    );
    assert_eq!(upgrade_status(&gw, &token_b).await, 101, "unknown kid b triggers a re-fetch");

    // A flood of random kids causes at most one fetch per min-refetch interval.
    let before = hits.load(Ordering::SeqCst);
    let flood = std::time::Instant::now();
    for i in 0..30 {
        let t = sign(
            Algorithm::RS256,
            &encoding_key(Algorithm::RS256, &key_b),
            Some(&format!("rnd{i}")),
            &claims("x", json!({})),
        );
        assert_eq!(upgrade_status(&gw, &t).await, 401);
    }
    let fetched = hits.load(Ordering::SeqCst) - before;
    // One fetch per started second at most (min re-fetch interval 1 s).
    let bound = flood.elapsed().as_secs() as usize + 1;
    assert!(
        fetched <= bound,
        "{fetched} JWKS fetches for 30 unknown kids in {:?}",
        flood.elapsed()
    );
    // The rotated-out key no longer verifies.
    assert_eq!(upgrade_status(&gw, &token_a).await, 401);
}

#[ferry_test]
async fn ferry_token_mints_a_token_the_gateway_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "token",
            "--sub",
            "ola",
            "--claim",
            "tenant=acme",
            "--claim",
            r#"roles=["ops"]"#,
            "--ttl",
            "60",
        ])
        .env("FERRY_AUTH_HS_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let gw = spawn_gateway_with(jwt_config(|_| {})).await;
    let mut client = Client::connect_request(request(&gw, Some(&token))).await;
    assert_eq!(client.welcome["subject"], "ola");
    client.subscribed(&format!("tenant.acme.{}", unique_topic("tok"))).await;
}

#[ferry_test]
async fn auth_none_refuses_a_public_address_without_insecure() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("FERRY_TEST_KAFKA")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--insecure"));
    let gw = GatewayProcess::start(&["--listen", "0.0.0.0:0", "--insecure"], &[]);
    let _ = gw; // it started
}
