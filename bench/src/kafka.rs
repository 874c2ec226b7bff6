//! The raw baselines' Kafka clients, built from the gateway's own client
//! settings (`gateway/src/kafka/client_config.rs`) with the same
//! `--librdkafka` overrides the gateway gets.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ferry_gateway::config::KafkaConfig;
use ferry_gateway::kafka::client_config::ClientSettings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::stats::Recorder;
use crate::util;

/// Where the Kafka is and what overrides apply.
#[derive(Debug, Clone)]
pub(crate) struct KafkaSpec {
    pub(crate) bootstrap: String,
    pub(crate) embedded: bool,
    pub(crate) librdkafka: Vec<(String, String)>,
}

impl KafkaSpec {
    /// The gateway's own client settings for this Kafka, so that the
    /// baselines use exactly what the gateway uses.
    fn settings(&self) -> Result<ClientSettings> {
        let config = KafkaConfig {
            brokers: (!self.embedded).then(|| self.bootstrap.clone()),
            librdkafka: self.librdkafka.iter().cloned().collect(),
            ..KafkaConfig::default()
        };
        ClientSettings::new(&config, self.bootstrap.clone()).map_err(|e| anyhow!(e.join("; ")))
    }

    /// The gateway's producer settings: idempotent, `acks=all`, `linger.ms=2`.
    pub(crate) fn producer(&self) -> Result<FutureProducer> {
        self.settings()?.producer().create().context("creating the raw producer")
    }

    /// The gateway's fan-out consumer settings (manual assignment, nothing
    /// committed, `fetch.wait.max.ms=5` on the embedded Kafka).
    pub(crate) fn consumer(&self) -> Result<StreamConsumer> {
        self.settings()?.consumer().create().context("creating the raw consumer")
    }
}

/// A consumer assigned to every partition of `topic` at its end offsets
/// (what the gateway does on a first subscribe): it sees only records
/// produced from now on.
pub(crate) async fn consumer_at_end(
    spec: &KafkaSpec,
    topic: &str,
    partitions: i32,
) -> Result<StreamConsumer> {
    let consumer = spec.consumer()?;
    let (consumer, list) = tokio::task::spawn_blocking({
        let topic = topic.to_owned();
        move || -> Result<_> {
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .with_context(|| format!("end offset of {topic}/{p}"))?;
                list.add_partition_offset(&topic, p, Offset::Offset(high))?;
            }
            Ok((consumer, list))
        }
    })
    .await??;
    consumer.assign(&list).context("assign")?;
    Ok(consumer)
}

/// Consumes until `expected` records arrived or `deadline`, recording
/// produce→consume latency from each record's intended send time.
pub(crate) async fn consume_latencies(
    consumer: StreamConsumer,
    recorder: &Recorder,
    expected: u64,
    deadline: tokio::time::Instant,
) -> Result<u64> {
    let mut received = 0;
    while received < expected {
        let message = tokio::select! {
            m = consumer.recv() => m.map_err(|e| anyhow!("raw consumer: {e}"))?,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let now = util::now_us();
        if let Some(t) = message.payload().and_then(util::stamp) {
            recorder.record(0, now.saturating_sub(t));
        }
        received += 1;
    }
    Ok(received)
}
