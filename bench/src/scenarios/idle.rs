//! idle connections: 10,000 authenticated (`--token`), subscribed sockets
//! that then stay quiet; the gateway's RSS growth per connection, from
//! `/proc/PID/status` before and after.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::report::Row;
use crate::ws::{self, Buffers};
use crate::{progress, util, Ctx, Outcome};

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let wanted = ctx.opts.idle_connections;
    let cap = ctx.nofile.saturating_sub(400) as usize;
    let n = wanted.min(cap);
    if n < wanted {
        progress(format_args!(
            "idle: {wanted} connections wanted, {n} possible with the file limit {}",
            ctx.nofile
        ));
    }
    let mut gateway = ctx.gateway(n + 100)?;
    let connector = ctx.connector(&gateway);
    let topic = ctx.topic("idle");
    // The topic and its consumer assignment exist before the baseline, so
    // the growth measured is the connections' alone.
    let mut first = connector.subscriber(&topic, Buffers::Small).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = gateway.rss_kib()?;

    let started = util::now_us();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(ctx.pick(90, 30));
    let (sockets, errors) = ws::open_many(&connector, n, 128, Some(&topic), deadline, 50).await;
    let secs = (util::now_us() - started) as f64 / 1e6;
    let opened = sockets.len();
    progress(format_args!(
        "idle: {opened} subscribed connections in {secs:.1} s ({} errors{})",
        errors.len(),
        errors.first().map_or(String::new(), |e| format!(", first: {e}"))
    ));
    if opened == 0 {
        bail!("no connection opened: {errors:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = gateway.rss_kib()?;
    let held = gateway.metric("ferry_connections").unwrap_or(f64::NAN);
    // Per connection still open (the first one included), as the client
    // sees it; a connection the gateway closed no longer costs it memory.
    let open = sockets.open();
    let per_conn = (after.saturating_sub(before)) as f64 / open.max(1) as f64;
    progress(format_args!(
        "idle: gateway RSS {before} KiB → {after} KiB: {per_conn:.1} KiB per connection \
         ({open} open here, {held} per the gateway)"
    ));
    gateway.check_alive()?;
    ws::unsubscribe(&mut first, &topic).await.ok();
    drop(sockets);
    drop(first);
    gateway.stop(Duration::from_secs(5));

    let reached = open >= wanted;
    let rows = vec![
        Row::new(
            "idle connections",
            &format!("gateway RSS growth per subscribed connection ({open} held)"),
            Some(per_conn),
            format!("{per_conn:.1} KiB"),
        )
        .goal("≤ 8 KiB", reached && per_conn <= 8.0),
        Row::new(
            "idle connections",
            "subscribed connections opened per second",
            Some(opened as f64 / secs),
            util::thousands(opened as f64 / secs),
        ),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "wanted": wanted,
            "opened": opened,
            "open_at_measurement": open,
            "held_per_gateway_metric": held,
            "errors": errors.len(),
            "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
            "open_seconds": secs,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_connection": per_conn,
            "token": ctx.opts.token.is_some(),
        }),
    })
}
