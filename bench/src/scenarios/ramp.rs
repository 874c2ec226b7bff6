//! connection ramp: open connections as fast as the gateway accepts them
//! (256 handshakes at once, from several 127.0.0.x source addresses) up to
//! `--ramp-connections`, then check how many the gateway holds.

use std::time::Duration;

use anyhow::Result;

use crate::report::Row;
use crate::ws;
use crate::{progress, util, Ctx, Outcome};

/// The goal: connections held on this box.
const GOAL: usize = 50_000;

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let wanted = ctx.pick(ctx.opts.ramp_connections, ctx.opts.ramp_connections.min(10_000));
    // Both this process and the gateway (which inherits the limit) need a
    // descriptor per connection, plus a few for Kafka and the rest.
    let cap = ctx.nofile.saturating_sub(400) as usize;
    let n = wanted.min(cap);
    let limited = (n < wanted).then(|| {
        format!(
            "capped at {n}: RLIMIT_NOFILE hard limit {}, CAP_SYS_RESOURCE to raise it",
            ctx.nofile
        )
    });
    if let Some(why) = &limited {
        progress(format_args!("ramp: {why}"));
    }
    let mut gateway = ctx.gateway(n + 100)?;
    let connector = ctx.connector(&gateway);
    let before = gateway.rss_kib()?;
    let started = util::now_us();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(ctx.pick(120, 25));
    let (sockets, errors) = ws::open_many(&connector, n, 256, None, deadline, 100).await;
    let secs = (util::now_us() - started) as f64 / 1e6;
    let opened = sockets.len();
    let rate = opened as f64 / secs;
    progress(format_args!(
        "ramp: {opened} connections in {secs:.1} s = {}/s ({} errors{})",
        util::thousands(rate),
        errors.len(),
        errors.first().map_or(String::new(), |e| format!(", first: {e}"))
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = gateway.metric("ferry_connections").unwrap_or(f64::NAN);
    let after = gateway.rss_kib()?;
    let open = sockets.open();
    let per_conn = after.saturating_sub(before) as f64 / open.max(1) as f64;
    progress(format_args!(
        "ramp: gateway holds {held} connections ({open} open here), RSS {before} → {after} KiB \
         ({per_conn:.1} KiB each)"
    ));
    gateway.check_alive()?;
    drop(sockets);
    gateway.stop(Duration::from_secs(10));

    let held_n = if held.is_nan() { open as f64 } else { held.min(open as f64) };
    let rows = vec![
        Row::new(
            "connection ramp",
            "connections accepted per second (WebSocket upgrade + welcome)",
            Some(rate),
            util::thousands(rate),
        ),
        Row::new(
            "connection ramp",
            &format!(
                "most connections held{}",
                limited.as_ref().map_or(String::new(), |w| format!(" ({w})"))
            ),
            Some(held_n),
            util::thousands(held_n),
        )
        .goal("≥ 50,000", held_n >= GOAL as f64),
        Row::new(
            "connection ramp",
            "gateway RSS per connection held (not subscribed)",
            Some(per_conn),
            format!("{per_conn:.1} KiB"),
        ),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "wanted": wanted,
            "attempted": n,
            "limited_by": limited,
            "opened": opened,
            "open_at_measurement": open,
            "held_per_gateway_metric": held,
            "seconds": secs,
            "per_second": rate,
            "errors": errors.len(),
            "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
            "rss_before_kib": before,
            "rss_after_kib": after,
        }),
    })
}
