//! snapshot: how long `from: "snapshot"` takes, from the `subscribe` sent
//! to `snapshot_end` read, for topics of 10,000 and 100,000 keys (two
//! versions of each key, so the table keeps half of what the topic holds):
//! - to 1 socket, the first snapshot of the topic (the node builds its
//!   table then: it reads the topic from the beginning);
//! - to 1 socket again (the table is current: no Kafka read);
//! - to 100 sockets at once (every one of them until its `snapshot_end`).
//!
//! Each snapshot is checked: exactly one `message` per key before
//! `snapshot_end`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::{SinkExt, StreamExt};
use rdkafka::producer::FutureRecord;
use tokio_tungstenite::tungstenite::Message;

use crate::report::Row;
use crate::stats::fmt_ms;
use crate::ws::{Buffers, Connector, Ws};
use crate::{progress, util, Ctx, Outcome};

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sizes: Vec<usize> = ctx.pick(vec![10_000, 100_000], vec![10_000]);
    let fleet = ctx.pick(100, 10);
    let topics: Vec<String> = sizes.iter().map(|k| ctx.topic(&format!("snapshot-{k}"))).collect();
    let mut spec = ctx.gateway_spec(fleet + 50);
    for topic in &topics {
        spec.extra_config.push_str(&format!(
            "[[tables]]\ntopics = \"{topic}\"\nmax_keys = 1000000\nmax_bytes = 1073741824\n"
        ));
    }
    let mut gateway = ctx.start_gateway(&spec, "gateway")?;
    let connector = ctx.connector(&gateway);
    let producer = ctx.kafka(&gateway).producer()?;

    let mut rows = Vec::new();
    let mut detail = Vec::new();
    for (&keys, topic) in sizes.iter().zip(&topics) {
        ctx.create_topic(&connector, topic).await?;
        let started = Instant::now();
        let mut acks = Vec::with_capacity(2 * keys);
        for version in 0..2 {
            for k in 0..keys {
                let key = format!("device-{k:06}");
                let value = format!(
                    r#"{{"device":"{key}","version":{version},"status":"ok","temp":{}.5,"site":"plant-north"}}"#,
                    18 + k % 9
                );
                let mut record = FutureRecord::to(topic).key(&key).payload(&value);
                loop {
                    match producer.send_result(record) {
                        Ok(ack) => {
                            acks.push(ack);
                            break;
                        }
                        // The producer's queue is full: let it drain.
                        Err((_, back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }
        for ack in acks {
            if !matches!(ack.await, Ok(Ok(_))) {
                bail!("a record of {topic} was not stored");
            }
        }
        progress(format_args!(
            "snapshot: {} records of {} keys produced in {:.1} s",
            util::thousands(2.0 * keys as f64),
            util::thousands(keys as f64),
            started.elapsed().as_secs_f64()
        ));

        let first = snapshot(&connector, topic, keys).await?;
        let warm = snapshot(&connector, topic, keys).await?;
        let many: Vec<Result<Duration>> =
            futures::future::join_all((0..fleet).map(|_| snapshot(&connector, topic, keys))).await;
        let mut many = many.into_iter().collect::<Result<Vec<_>>>()?;
        many.sort();
        let (median, slowest) = (many[many.len() / 2], many[many.len() - 1]);
        progress(format_args!(
            "snapshot: {keys} keys: first {} (table built), then {}; {fleet} sockets at once: \
             median {}, all done in {}",
            ms(first),
            ms(warm),
            ms(median),
            ms(slowest)
        ));
        let what = format!("snapshot of {} keys", util::thousands(keys as f64));
        rows.push(Row::new(
            "snapshot",
            &format!("{what} to 1 socket, first (table built from Kafka)"),
            Some(first.as_secs_f64() * 1e3),
            ms(first),
        ));
        rows.push(Row::new(
            "snapshot",
            &format!("{what} to 1 socket, table current"),
            Some(warm.as_secs_f64() * 1e3),
            ms(warm),
        ));
        rows.push(Row::new(
            "snapshot",
            &format!("{what} to {fleet} sockets at once, the last one done"),
            Some(slowest.as_secs_f64() * 1e3),
            ms(slowest),
        ));
        detail.push(serde_json::json!({
            "keys": keys,
            "first_ms": first.as_secs_f64() * 1e3,
            "warm_ms": warm.as_secs_f64() * 1e3,
            "sockets": fleet,
            "many_median_ms": median.as_secs_f64() * 1e3,
            "many_slowest_ms": slowest.as_secs_f64() * 1e3,
        }));
    }
    gateway.check_alive()?;
    gateway.stop(Duration::from_secs(5));
    Ok(Outcome { rows, detail: serde_json::json!({ "snapshots": detail }) })
}

fn ms(d: Duration) -> String {
    format!("{} ms", fmt_ms(d.as_secs_f64() * 1e3))
}

/// Connects, subscribes `from: "snapshot"`, and reads until `snapshot_end`:
/// the time from the `subscribe` sent, checking one record per key.
async fn snapshot(connector: &Connector, topic: &str, keys: usize) -> Result<Duration> {
    let mut ws: Ws = connector.connect(Buffers::Busy).await?;
    let subscribe =
        format!(r#"{{"type":"subscribe","id":"s","topic":"{topic}","from":"snapshot"}}"#);
    let started = Instant::now();
    ws.send(Message::text(subscribe)).await?;
    let mut records = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let Ok(Some(Ok(message))) = next else { bail!("no snapshot_end within 300 s") };
        let Message::Text(text) = message else { continue };
        match util::frame_type(&text) {
            "message" => records += 1,
            "snapshot_end" => break,
            "subscribed" => {}
            other => bail!("unexpected {other}: {text}"),
        }
    }
    let took = started.elapsed();
    let _ = ws.close(None).await;
    if records != keys {
        bail!("a snapshot of {keys} keys held {records} records");
    }
    Ok(took)
}
