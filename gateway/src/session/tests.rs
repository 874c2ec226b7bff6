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
use crate::auth::Principal;
use crate::{App, Config};

/// The client's end of a session: what it sends, what it gets.
struct Client {
    to_session: mpsc::UnboundedSender<Message>,
    from_session: mpsc::UnboundedReceiver<Message>,
}

/// The session's end.
struct Channels {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
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
    let client = open(&app);
    (app, client)
}

/// Another session on the same node.
fn open(app: &App) -> Client {
    let node = app.node();
    let (to_session, incoming) = mpsc::unbounded();
    let (outgoing, from_session) = mpsc::unbounded();
    let permit = node.connections.clone().try_acquire_owned().unwrap();
    let caller = Authenticated { principal: Principal::anonymous(), guard: None };
    let socket = Channels { incoming, outgoing };
    tokio::spawn(run(socket, node, 1, permit, Some(caller)));
    Client { to_session, from_session }
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
