//! `ferry-publisher`: the publish baseline, a minimal WebSocket→Kafka
//! publisher.
//!
//! Each `publish` frame is decoded with Ferry's own decoder and handed to
//! one `ThreadedProducer` shared by every socket, with the gateway's
//! producer settings (idempotent, `acks=all`, `linger.ms=2`, the same queue
//! limits) and the same record: the value as sent, the key, the headers and
//! a `ferry-id` header. The delivery callback, on librdkafka's polling
//! thread, writes the `ack` (the same bytes as Ferry's: `AckFrame`) or the
//! `error` straight into the socket's bounded outlet. Per publish there is
//! one small boxed delivery opaque (the socket's outlet and the id) and no
//! task, future or channel. A full producer queue is answered with
//! `unavailable`, as Ferry answers it.
//!
//! Why it is a fair bar: it is the cheapest simple way to do this job with
//! rdkafka (a naive one with a task per publish and `linger.ms=0` is several
//! times dearer), in its own process, on the same Kafka, with the same
//! socket buffers. It has no authentication, ACL, rate limits, id
//! de-duplication, schemas or metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_protocol::{decode_client_frame, AckFrame, ClientFrame, ErrorCode, Publish, ServerFrame};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::net::TcpStream;

use common::{Args, Outlet};

/// The Kafka header carrying the publish id (as Ferry writes it).
const ID_HEADER: &str = "ferry-id";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match common::runtime().and_then(|rt| rt.block_on(run(args))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-publisher: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

type Producer = ThreadedProducer<Acks>;

async fn run(args: Args) -> Result<()> {
    let producer: Arc<Producer> = Arc::new(
        args.settings()?.producer().create_with_context(Acks).context("creating the producer")?,
    );
    let listener = common::listen(&args, "ferry-publisher").await?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(serve(tcp, producer.clone()));
    }
}

/// What the delivery callback needs to answer one publish.
#[derive(Debug)]
struct Pending {
    outlet: Arc<Outlet>,
    id: String,
}

/// Turns delivery reports into `ack` / `error` frames on the socket's
/// outlet.
#[derive(Debug)]
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(record) => {
                let ack = AckFrame::new(&pending.id, record.topic())
                    .finish(record.partition(), record.offset());
                pending.outlet.push(ack.into());
            }
            Err((e, _)) => {
                let code = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageTimedOut) => ErrorCode::Timeout,
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => ErrorCode::TooLarge,
                    _ => ErrorCode::Unavailable,
                };
                pending.outlet.error(Some(&pending.id), code, e.to_string());
            }
        }
    }
}

async fn serve(tcp: TcpStream, producer: Arc<Producer>) {
    let Some((mut stream, outlet)) = common::accept(tcp).await else {
        return;
    };
    while let Some(text) = common::next_text(&mut stream).await {
        match decode_client_frame(&text) {
            Ok(ClientFrame::Publish(publish)) => produce(&producer, &outlet, publish),
            Ok(ClientFrame::Ping { id }) => outlet.reply(&ServerFrame::Pong { id }),
            Ok(other) => outlet.error(
                Some(other.id()),
                ErrorCode::BadRequest,
                "the publisher only publishes",
            ),
            Err(e) => outlet.error(e.id.as_deref(), e.code, e.message),
        }
    }
}

/// Hands one record to librdkafka; the answer comes from [`Acks::delivery`]
/// unless the record is refused at once.
fn produce(producer: &Producer, outlet: &Arc<Outlet>, publish: Publish<'_>) {
    let mut headers = OwnedHeaders::new_with_capacity(publish.headers.len() + 1)
        .insert(Header { key: ID_HEADER, value: Some(publish.id.as_bytes()) });
    for (key, value) in &publish.headers {
        headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
    }
    let pending = Box::new(Pending { outlet: outlet.clone(), id: publish.id.clone().into_owned() });
    let mut record =
        BaseRecord::<[u8], [u8], Box<Pending>>::with_opaque_to(&publish.topic, pending)
            .payload(publish.value.as_bytes())
            .headers(headers);
    if let Some(key) = &publish.key {
        record = record.key(key.as_slice());
    }
    if let Some(partition) = publish.partition {
        record = record.partition(partition);
    }
    if let Err((e, record)) = producer.send(record) {
        let code = match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => ErrorCode::Unavailable,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                ErrorCode::TooLarge
            }
            KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                ErrorCode::UnknownTopic
            }
            _ => ErrorCode::Unavailable,
        };
        outlet.error(Some(&record.delivery_opaque.id), code, e.to_string());
    }
}
