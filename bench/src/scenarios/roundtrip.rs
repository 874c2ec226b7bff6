//! round trip: one socket publishes at a fixed rate (open loop), another
//! socket subscribed to the topic receives; socket→Kafka→socket latency
//! from each publish's intended send time, and publish→ack on the way.
//! Shown beside raw producer→raw consumer at the same rate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{raw_produce_consume, Fleet};
use crate::report::Row;
use crate::stats::{fmt_ms, Recorder, Summary};
use crate::ws::{publish_frame, Buffers};
use crate::{pacer, progress, util, Ctx, Outcome};

const RATE: f64 = 1_000.0;

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let duration = Duration::from_secs(ctx.pick(10, 3));
    let mut gateway = ctx.gateway(50_000)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let (raw_topic, topic) = (ctx.topic("roundtrip-raw"), ctx.topic("roundtrip"));
    ctx.create_topic(&connector, &raw_topic).await?;
    ctx.create_topic(&connector, &topic).await?;

    let raw = raw_produce_consume(ctx, &kafka, &raw_topic, RATE, duration).await?;
    progress(format_args!("round trip: raw producer→consumer {}", raw.latency.text()));

    let mut fleet = Fleet::new(connector.clone(), &topic);
    fleet.fill(1).await?;
    let publisher = connector.connect(Buffers::Busy).await?;
    let (mut sink, mut stream) = publisher.split();
    let acks = Arc::new(Recorder::new(1));
    let _ = fleet.recorder.take();

    let count = (RATE * duration.as_secs_f64()) as u64;
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, u64)>();
    let start = util::now_us() + 20_000;
    let pacer =
        pacer::spawn(RATE, count, start, move |seq, intended| tx.send((seq, intended)).is_ok());
    let value_bytes = ctx.opts.value_bytes;
    let writer = {
        let topic = topic.clone();
        tokio::spawn(async move {
            while let Some((seq, intended)) = rx.recv().await {
                let frame = publish_frame(
                    &format!("{seq}.{intended}"),
                    &topic,
                    &util::value(intended, value_bytes),
                );
                sink.feed(Message::Text(frame.into())).await?;
                while let Ok((seq, intended)) = rx.try_recv() {
                    let frame = publish_frame(
                        &format!("{seq}.{intended}"),
                        &topic,
                        &util::value(intended, value_bytes),
                    );
                    sink.feed(Message::Text(frame.into())).await?;
                }
                sink.flush().await?;
            }
            anyhow::Ok(sink)
        })
    };
    let reader = {
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            let mut errors = 0u64;
            while acked + errors < count {
                let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = next else {
                    match next {
                        Ok(Some(Ok(_))) => continue,
                        _ => break,
                    }
                };
                let now = util::now_us();
                match util::frame_type(&text) {
                    "ack" => {
                        acked += 1;
                        if let Some(t) = util::frame_id(&text)
                            .and_then(|id| id.split_once('.'))
                            .and_then(|(_, t)| t.parse::<u64>().ok())
                        {
                            acks.record(0, now.saturating_sub(t));
                        }
                    }
                    "error" => errors += 1,
                    _ => {}
                }
            }
            (acked, errors)
        })
    };
    let paced = tokio::task::spawn_blocking(move || pacer.join().unwrap_or_default()).await?;
    let _sink = writer.await??;
    let (acked, errors) = reader.await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fleet.recorder.events() < paced.sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = fleet.recorder.events();
    let round_trip = Summary::of(&fleet.recorder.take());
    let ack = Summary::of(&acks.take());
    progress(format_args!(
        "round trip: gateway {} ({received}/{} received; {acked} acked, {errors} errors); publish→ack {}",
        round_trip.text(),
        paced.sent,
        ack.text()
    ));
    fleet.close();
    gateway.check_alive()?;
    gateway.stop(Duration::from_secs(10));

    let rows = vec![
        Row::new(
            "round trip",
            &format!("socket→Kafka→socket at {} msg/s: p50 / p99 (ms)", RATE as u64),
            Some(round_trip.p99_ms),
            format!("{} / {}", fmt_ms(round_trip.p50_ms), fmt_ms(round_trip.p99_ms)),
        )
        .baseline(
            Some(raw.latency.p99_ms),
            format!(
                "{} / {} (raw producer→consumer)",
                fmt_ms(raw.latency.p50_ms),
                fmt_ms(raw.latency.p99_ms)
            ),
        )
        .delta_ms(),
        Row::new(
            "round trip",
            "… p99.9 / max (ms)",
            Some(round_trip.p999_ms),
            format!("{} / {}", fmt_ms(round_trip.p999_ms), fmt_ms(round_trip.max_ms)),
        )
        .baseline(
            Some(raw.latency.p999_ms),
            format!(
                "{} / {} (raw producer→consumer)",
                fmt_ms(raw.latency.p999_ms),
                fmt_ms(raw.latency.max_ms)
            ),
        )
        .delta_ms(),
        Row::new(
            "round trip",
            "publish→ack p50 / p99 (ms)",
            Some(ack.p99_ms),
            format!("{} / {}", fmt_ms(ack.p50_ms), fmt_ms(ack.p99_ms)),
        ),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "rate": RATE,
            "seconds": duration.as_secs_f64(),
            "sent": paced.sent,
            "received": received,
            "acked": acked,
            "errors": errors,
            "round_trip": round_trip,
            "publish_ack": ack,
            "raw_producer_consumer": raw,
        }),
    })
}
