//! `ferry-relay`: the fan-out baseline, a minimal Kafka→WebSocket relay.
//!
//! One rdkafka `StreamConsumer` per topic, opened by the topic's first
//! subscriber and assigned to every partition at the end offsets (what
//! Ferry does for a live subscribe), with the gateway's consumer settings.
//! Each record is encoded once, as the very `message` frame Ferry sends
//! (`MessageFrame::encode`), and the shared bytes are queued to every
//! subscriber's bounded outlet with `try_send`; a socket whose queue is
//! full is closed with 4000 and dropped from the topic. Clients speak
//! Ferry's protocol v1 (`welcome`, `subscribe` → `subscribed`,
//! `unsubscribe`, `ping`), so `ferry-bench` drives it with the same reader
//! code as the gateway.
//!
//! Why it is a fair bar: it is the textbook shape of this job (and the
//! shape of Ferry's own fan-out) done in the fewest moving parts, in its own
//! process, on the same Kafka, with the same buffers and queue policy. It
//! has no authentication, ACL, filters, replay, limits or metrics, so it
//! does less per socket than Ferry. It keeps a topic's consumer after its
//! last subscriber leaves (Ferry closes it), which changes nothing while a
//! benchmark runs.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_gateway::kafka::client_config::ClientSettings;
use ferry_protocol::{decode_client_frame, ClientFrame, ErrorCode, MessageFrame, ServerFrame};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use common::{Args, Outlet};

/// Records handed on in a burst before the pump yields (as Ferry's pump).
const YIELD_EVERY: u32 = 32;
/// How long Kafka look-ups of a first subscribe may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match common::runtime().and_then(|rt| rt.block_on(run(args))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-relay: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let relay = Arc::new(Relay { settings: args.settings()?, topics: Default::default() });
    let listener = common::listen(&args, "ferry-relay").await?;
    let mut next_id = 0u64;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        next_id += 1;
        tokio::spawn(serve(tcp, next_id, relay.clone()));
    }
}

/// Topic name → its subscribers. The async lock is held only while a
/// topic's consumer is opened, so that concurrent first subscribers wait
/// for one consumer rather than open several.
#[derive(Debug)]
struct Relay {
    settings: ClientSettings,
    topics: tokio::sync::Mutex<HashMap<String, Arc<Topic>>>,
}

/// One topic's subscribers: (socket id, outlet). A std lock: held for a
/// push, a removal, or one pass of `try_send`s, never across an await.
#[derive(Debug, Default)]
struct Topic {
    subscribers: RwLock<Vec<(u64, Arc<Outlet>)>>,
}

impl Topic {
    fn remove(&self, socket: u64) {
        let mut subscribers = self.subscribers.write().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|(id, _)| *id != socket);
    }
}

async fn serve(tcp: TcpStream, socket: u64, relay: Arc<Relay>) {
    let Some((mut stream, outlet)) = common::accept(tcp).await else {
        return;
    };
    let mut subscribed: Vec<(String, Arc<Topic>)> = Vec::new();
    while let Some(text) = common::next_text(&mut stream).await {
        match decode_client_frame(&text) {
            Ok(ClientFrame::Subscribe(s)) => {
                if subscribed.iter().any(|(t, _)| *t == s.topic) {
                    outlet.error(Some(&s.id), ErrorCode::BadRequest, "already subscribed");
                    continue;
                }
                match relay.topic(&s.topic).await {
                    Ok(topic) => {
                        topic
                            .subscribers
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((socket, outlet.clone()));
                        outlet.reply(&ServerFrame::Subscribed {
                            id: s.id,
                            topic: s.topic.clone(),
                            partitions: Default::default(),
                        });
                        subscribed.push((s.topic, topic));
                    }
                    Err(e) => outlet.error(Some(&s.id), ErrorCode::Unavailable, format!("{e:#}")),
                }
            }
            Ok(ClientFrame::Unsubscribe { id, topic }) => {
                if let Some(at) = subscribed.iter().position(|(t, _)| *t == topic) {
                    subscribed.swap_remove(at).1.remove(socket);
                }
                outlet.reply(&ServerFrame::Unsubscribed { id: Some(id), topic, reason: None });
            }
            Ok(ClientFrame::Ping { id }) => outlet.reply(&ServerFrame::Pong { id }),
            Ok(other) => {
                outlet.error(Some(other.id()), ErrorCode::BadRequest, "the relay only subscribes")
            }
            Err(e) => outlet.error(e.id.as_deref(), e.code, e.message),
        }
    }
    for (_, topic) in subscribed {
        topic.remove(socket);
    }
}

impl Relay {
    /// The topic's subscriber list, opening its consumer on first use.
    async fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        let mut topics = self.topics.lock().await;
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        let consumer = tokio::task::spawn_blocking({
            let (config, name) = (self.settings.consumer(), name.to_owned());
            move || open_at_end(config, &name)
        })
        .await??;
        let topic = Arc::new(Topic::default());
        tokio::spawn(pump(consumer, topic.clone()));
        topics.insert(name.to_owned(), topic.clone());
        Ok(topic)
    }
}

/// A consumer assigned to every partition of `topic` at its end offsets.
fn open_at_end(config: rdkafka::ClientConfig, topic: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = config.create().context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .with_context(|| format!("topic {topic} not found"))?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
            .with_context(|| format!("end offset of {topic}/{p}"))?;
        list.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&list).context("assign")?;
    Ok(consumer)
}

/// Receives the topic's records forever: each is encoded once and queued to
/// every subscriber; a subscriber whose queue is full is dropped.
async fn pump(consumer: StreamConsumer, topic: Arc<Topic>) {
    let mut burst = 0u32;
    let mut slow = Vec::new();
    loop {
        let record = match consumer.recv().await {
            Ok(record) => record,
            Err(e) => {
                eprintln!("ferry-relay: consumer: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let frame = MessageFrame {
            topic: record.topic(),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp().to_millis(),
            key: record.key(),
            headers: &headers,
            value: record.payload(),
        };
        let frame = Utf8Bytes::from(frame.encode());
        {
            let subscribers = topic.subscribers.read().unwrap_or_else(|e| e.into_inner());
            for (id, outlet) in subscribers.iter() {
                if !outlet.push(frame.clone()) {
                    slow.push(*id);
                }
            }
        }
        for id in slow.drain(..) {
            topic.remove(id);
        }
        burst += 1;
        if burst == YIELD_EVERY {
            burst = 0;
            tokio::task::yield_now().await;
        }
    }
}
