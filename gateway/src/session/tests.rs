//! A session driven through channels instead of a WebSocket: frames in,
//! frames out, on a node built on the embedded Kafka.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};

use super::{run, Authenticated};
use crate::auth::{AuthMode, Principal, Secret};
use crate::{App, Config};

/// The client's end of a session: what it sends, what it gets.
struct Client {
    to_session: mpsc::UnboundedSender<Message>,
    from_session: mpsc::Receiver<Message>,
}

/// The session's end.
struct Channels {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::Sender<Message>,
}

impl Stream for Channels {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_next_unpin(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Channels {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_ready_unpin(cx).map_err(axum::Error::new)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outgoing.start_send_unpin(item).map_err(axum::Error::new)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_flush_unpin(cx).map_err(axum::Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_close_unpin(cx).map_err(axum::Error::new)
    }
}

impl Client {
    async fn send(&mut self, frame: Value) {
        self.to_session.send(Message::Text(frame.to_string().into())).await.unwrap();
    }

    /// The next message the session writes, within 20 s.
    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(20), self.from_session.next())
            .await
            .expect("the session answers in time")
            .expect("the session is still open")
    }

    /// The next text frame, as JSON (pings skipped).
    async fn frame(&mut self) -> Value {
        loop {
            match self.next().await {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}

/// A node on the embedded Kafka, and a session on it for an anonymous
/// caller (`auth.mode = "none"`).
async fn session() -> (App, Client) {
    session_with(|_| {}).await
}

/// Like [`session`], with the node's configuration changed by `change`.
async fn session_with(change: impl FnOnce(&mut Config)) -> (App, Client) {
    let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    change(&mut config);
    let app = App::build(config).await.expect("a node on the embedded Kafka");
    // The live fan-out's pump, as `App::run` starts it (no listener here).
    let node = app.node();
    tokio::spawn(node.routes.fanout.clone().run(node.shutdown.child_token()));
    let client = open(&app);
    (app, client)
}

/// Another session on the same node, for an anonymous caller.
fn open(app: &App) -> Client {
    let caller = Authenticated { principal: Principal::anonymous(), guard: None };
    open_as(app, Some(caller))
}

/// A session on `app`'s node; without `caller` it must send `auth`.
fn open_as(app: &App, caller: Option<Authenticated>) -> Client {
    open_with(app, caller, 1 << 16)
}

/// A session on `app`'s node whose socket holds at most `buffered`
/// messages the client has not read (then the session's writer waits).
fn open_with(app: &App, caller: Option<Authenticated>, buffered: usize) -> Client {
    let node = app.node();
    let (to_session, incoming) = mpsc::unbounded();
    let (outgoing, from_session) = mpsc::channel(buffered);
    let permit = node.connections.clone().try_acquire_owned().unwrap();
    let socket = Channels { incoming, outgoing };
    tokio::spawn(run(socket, node, 1, permit, caller));
    Client { to_session, from_session }
}

const SECRET: &str = "session-unit-tests-secret-0123456789";

/// JWT mode: anyone may publish and subscribe to `open.**` only.
fn jwt(c: &mut Config) {
    c.auth.mode = AuthMode::Jwt;
    c.auth.hs_secret = Some(Secret(SECRET.into()));
    c.acl =
        toml::from_str("[[rules]]\npublish = [\"open.**\"]\nsubscribe = [\"open.**\"]\n").unwrap();
}

/// An HS256 token for `sub`, valid for ten minutes.
fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let claims = json!({"sub": sub, "exp": now.as_secs() + 600});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

impl Client {
    /// The next text frame, which must be a reply to `id`.
    async fn reply(&mut self, id: &str) -> Value {
        let frame = self.frame().await;
        assert_eq!(frame["id"], id, "expected the reply to {id}: {frame}");
        frame
    }

    /// The close frame's code, skipping what comes before it.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.next().await {
                Message::Close(close) => return close.map_or(1005, |c| c.code),
                Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_session_without_a_websocket_welcomes_acks_refuses_and_closes() {
    let test = async {
        let (_app, mut client) = session().await;
        let welcome = client.frame().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");

        let topic = format!("session-{}", uuid::Uuid::new_v4().simple());
        client.send(json!({"type":"publish","id":"p1","topic":topic,"value":{"n":1}})).await;
        let ack = client.frame().await;
        assert_eq!((ack["type"].as_str(), ack["id"].as_str()), (Some("ack"), Some("p1")), "{ack}");
        assert_eq!(ack["offset"], 0, "the topic's first record: {ack}");

        client
            .send(json!({"type":"publish","id":"p2","topic":topic,"partition":99,"value":1}))
            .await;
        let refused = client.frame().await;
        assert_eq!(refused["code"], "bad_request", "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("partition 99"), "{refused}");

        client.to_session.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
        match client.next().await {
            Message::Close(Some(close)) => assert_eq!(close.code, 1003, "unsupported data"),
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(60), test).await.expect("the test finishes in 60 s");
}

#[tokio::test]
async fn a_rate_limit_close_answers_every_publish_before_the_close_frame() {
    let test = async {
        let (app, mut first) = session_with(|c| {
            c.limits.publish_rate = 1;
            c.limits.publish_burst = 1;
            c.limits.rate_limit_strikes = 3;
        })
        .await;
        // The topic exists and the node knows it: r0 goes to Kafka at once.
        let topic = format!("strikes-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(first.frame().await["type"], "welcome");
        first.send(json!({"type":"publish","id":"p","topic":topic,"value":0})).await;
        assert_eq!(first.frame().await["type"], "ack");

        let mut client = open(&app);
        assert_eq!(client.frame().await["type"], "welcome");
        // Six publishes back to back: r0 takes the one token, r1 and r2 are
        // refused, r3 is the third strike, r4 and r5 were sent before the
        // client could know.
        for n in 0..6 {
            client
                .send(json!({"type":"publish","id":format!("r{n}"),"topic":topic,"value":n}))
                .await;
        }
        let mut replies = std::collections::BTreeMap::new();
        let close = loop {
            match client.next().await {
                Message::Text(text) => {
                    let reply: Value = serde_json::from_str(&text).unwrap();
                    let id = reply["id"].as_str().expect("a reply to a publish").to_owned();
                    assert!(replies.insert(id, reply).is_none(), "one reply per publish");
                }
                Message::Close(close) => break close,
                _ => {}
            }
        };
        assert_eq!(close.expect("a close frame").code, 4004, "rate_limited");
        let ids: Vec<&str> = replies.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            ["r0", "r1", "r2", "r3", "r4", "r5"],
            "every publish answered: {replies:?}"
        );
        assert_eq!(replies["r0"]["type"], "ack", "r0 was produced: {}", replies["r0"]);
        for id in ["r1", "r2", "r3", "r4", "r5"] {
            assert_eq!(replies[id]["code"], "rate_limited", "{}", replies[id]);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), test).await.expect("the test finishes in 60 s");
}

/// Run under a 60 s bound, so that a stuck session fails the test.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test).await.expect("the test finishes in 60 s");
}

#[tokio::test]
async fn a_socket_authenticates_in_band_and_the_acl_applies() {
    bounded(async {
        let (app, _) = session_with(jwt).await;
        let mut client = open_as(&app, None);
        let open = unique("open.auth");
        client.send(json!({"type":"publish","id":"early","topic":open,"value":1})).await;
        assert_eq!(client.reply("early").await["code"], "unauthorized");
        client.send(json!({"type":"auth","id":"a0","token":"not-a-token"})).await;
        assert_eq!(client.reply("a0").await["code"], "unauthorized");

        client.send(json!({"type":"auth","id":"a1","token":token("dev-1")})).await;
        let welcome = client.frame().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["subject"], "dev-1", "{welcome}");
        client.send(json!({"type":"publish","id":"p1","topic":open,"value":1})).await;
        assert_eq!(client.reply("p1").await["type"], "ack");
        let closed = unique("closed");
        client.send(json!({"type":"publish","id":"p2","topic":closed,"value":1})).await;
        assert_eq!(client.reply("p2").await["code"], "forbidden");
        client.send(json!({"type":"subscribe","id":"s1","topic":closed})).await;
        assert_eq!(client.reply("s1").await["code"], "forbidden");
        // A refresh for the same subject keeps the socket.
        client.send(json!({"type":"auth","id":"a2","token":token("dev-1")})).await;
        assert_eq!(client.reply("a2").await["type"], "authed");
        // Another subject closes it (4501).
        client.send(json!({"type":"auth","id":"a3","token":token("dev-2")})).await;
        assert_eq!(client.close_code().await, 4501);
    })
    .await;
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_closed_after_the_auth_timeout() {
    bounded(async {
        let (app, _) = session_with(|c| {
            jwt(c);
            c.auth.auth_timeout_ms = 200;
        })
        .await;
        let mut client = open_as(&app, None);
        assert_eq!(client.close_code().await, 4003, "auth_timeout");
    })
    .await;
}

#[tokio::test]
async fn subscribe_delivers_records_until_unsubscribe() {
    bounded(async {
        let (app, mut reader) = session().await;
        let mut writer = open(&app);
        assert_eq!(reader.frame().await["type"], "welcome");
        assert_eq!(writer.frame().await["type"], "welcome");
        let topic = unique("sub");
        reader.send(json!({"type":"subscribe","id":"s1","topic":topic})).await;
        assert_eq!(reader.reply("s1").await["type"], "subscribed");
        writer.send(json!({"type":"publish","id":"p1","topic":topic,"value":{"n":1}})).await;
        let ack = writer.reply("p1").await;
        let message = reader.frame().await;
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["value"], json!({"n":1}));
        assert_eq!(
            (&message["partition"], &message["offset"]),
            (&ack["partition"], &ack["offset"])
        );

        reader.send(json!({"type":"unsubscribe","id":"u1","topic":topic})).await;
        assert_eq!(reader.reply("u1").await["type"], "unsubscribed");
        writer.send(json!({"type":"publish","id":"p2","topic":topic,"value":2})).await;
        assert_eq!(writer.reply("p2").await["type"], "ack");
        // Nothing more for the reader: its next frame answers its ping.
        reader.send(json!({"type":"ping","id":"after"})).await;
        assert_eq!(reader.reply("after").await["type"], "pong");
    })
    .await;
}

#[tokio::test]
async fn the_subscription_and_in_flight_limits_refuse_with_limit() {
    bounded(async {
        let (_app, mut client) = session_with(|c| {
            c.limits.max_subscriptions = 1;
            c.limits.max_inflight_publishes = 1;
        })
        .await;
        assert_eq!(client.frame().await["type"], "welcome");
        client.send(json!({"type":"subscribe","id":"s1","topic":unique("one")})).await;
        assert_eq!(client.reply("s1").await["type"], "subscribed");
        client.send(json!({"type":"subscribe","id":"s2","topic":unique("two")})).await;
        assert_eq!(client.reply("s2").await["code"], "limit");

        // Two publishes back to back to a new topic: the second finds the
        // first still in flight.
        let topic = unique("inflight");
        client.send(json!({"type":"publish","id":"p1","topic":topic,"value":1})).await;
        client.send(json!({"type":"publish","id":"p2","topic":topic,"value":2})).await;
        let (first, second) = (client.frame().await, client.frame().await);
        let refused = if first["id"] == "p2" { &first } else { &second };
        assert_eq!(refused["code"], "limit", "{first} {second}");
    })
    .await;
}

/// A client that does not read its answers: once its socket and its
/// replies' room are full, the session stops producing (and reading) until
/// the client reads again. Every publish is answered exactly once, in
/// Kafka's order per topic, and none is lost.
#[tokio::test]
async fn a_client_that_does_not_read_its_acks_holds_up_its_publishes_and_loses_none() {
    bounded(async {
        let (app, mut first) = session_with(|c| c.limits.max_inflight_publishes = 8).await;
        let topic = unique("unread");
        assert_eq!(first.frame().await["type"], "welcome");
        first.send(json!({"type":"publish","id":"p","topic":topic,"value":0})).await;
        assert_eq!(first.frame().await["type"], "ack", "the node knows the topic");

        let caller = Authenticated { principal: Principal::anonymous(), guard: None };
        let mut client = open_with(&app, Some(caller), 1);
        assert_eq!(client.frame().await["type"], "welcome");
        // Far more than the replies' room (8 + 64) and the socket's buffer.
        let total = 1_000;
        for n in 0..total {
            client
                .send(json!({"type":"publish","id":format!("r{n}"),"topic":topic,"value":n}))
                .await;
        }
        let mut answered = std::collections::HashSet::new();
        let mut offsets = Vec::new();
        while answered.len() < total {
            let reply = client.frame().await;
            let id = reply["id"].as_str().expect("a reply to a publish").to_owned();
            assert!(answered.insert(id.clone()), "{id} answered twice");
            match reply["type"].as_str() {
                Some("ack") => {
                    offsets.push((reply["partition"].as_i64(), reply["offset"].as_i64()))
                }
                // More than 8 awaiting Kafka at once: refused, not lost.
                _ => assert_eq!(reply["code"], "limit", "{reply}"),
            }
        }
        assert!(!offsets.is_empty(), "some publishes were produced");
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), offsets.len(), "each record stored once");
        // Nothing else was written.
        client.send(json!({"type":"ping","id":"last"})).await;
        assert_eq!(client.reply("last").await["type"], "pong");
    })
    .await;
}

#[tokio::test]
async fn a_client_close_is_echoed_and_a_silent_client_is_closed_as_idle() {
    bounded(async {
        let (app, mut client) = session().await;
        assert_eq!(client.frame().await["type"], "welcome");
        let close = axum::extract::ws::CloseFrame { code: 1000, reason: "bye".into() };
        client.to_session.send(Message::Close(Some(close))).await.unwrap();
        // The session ends: its end of the channel closes.
        let rest = tokio::time::timeout(Duration::from_secs(20), async {
            while client.from_session.next().await.is_some() {}
        });
        rest.await.expect("the session ends after the client's close");
        drop(app);

        let (_app, mut silent) = session_with(|c| {
            c.websocket.ping_interval_ms = 100;
            c.websocket.idle_timeout_ms = 300;
        })
        .await;
        assert_eq!(silent.close_code().await, 4001, "idle_timeout");
    })
    .await;
}
