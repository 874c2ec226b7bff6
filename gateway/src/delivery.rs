//! Opening a subscription on the delivery path, for every transport (a
//! WebSocket session, an SSE stream).
//!
//! The route follows from the request: a `group` joins a shared group
//! ([`crate::kafka::groups`]); every other subscription goes to the node's
//! live fan-out ([`crate::kafka::fanout`]): `latest` at once, any other
//! start after catching up ([`crate::kafka::catchup`]: from the recent
//! records, or the topic's shared Kafka reader). Records then flow into
//! the socket's [`Outlet`], whatever the route.
//!
//! A `from: "snapshot"` subscription starts with its topic's table
//! ([`crate::tables`]): [`Routes::open`] takes the snapshot, and
//! [`Prelude::start`] (called once `subscribed` is queued) sends its frames
//! and `snapshot_end`, then joins the live fan-out from exactly the
//! snapshot's positions, through the same catch-up as a resume.
//!
//! [`Routes::open`] answers with where each partition starts, the `gap`
//! notices to send, and a [`Held`] subscription: dropping it takes the socket off its
//! route. It is made before any Kafka work, so a subscribe that fails, times
//! out or is abandoned half way is undone by the same drop.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_protocol::{AckMode, Overflow, ServerFrame, StartFrom};
use tokio_util::sync::DropGuard;

use crate::error::GatewayError;
use crate::filter::Filter;
use crate::hub::Subscriber;
use crate::kafka::fanout::Fanout;
use crate::kafka::groups::{Groups, Member};
use crate::kafka::topics::Topics;
use crate::outlet::Outlet;
use crate::tables::Tables;

/// The routes a subscription can take, shared by every transport.
#[derive(Debug)]
pub struct Routes {
    /// Partition counts (and creation) of the topics subscribed to.
    pub topics: Arc<Topics>,
    /// The node's live fan-out, and the catch-up that leads into it.
    pub fanout: Arc<Fanout>,
    pub groups: Groups,
    /// The keyed tables `from: "snapshot"` reads.
    pub tables: Tables,
}

/// What a transport asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The socket (or stream) the records are for.
    pub session: u64,
    pub topic: String,
    pub from: StartFrom,
    pub group: Option<String>,
    pub ack: AckMode,
    pub overflow: Overflow,
    /// At most one live record per key per this window (`throttle_ms`, or
    /// the floor the node imposes); never with a group.
    pub throttle: Option<std::time::Duration>,
    /// The requested filter AND-ed with the one the ACL imposes.
    pub filter: Option<Arc<Filter>>,
    pub outlet: Outlet,
}

/// A subscription Kafka set up.
#[derive(Debug)]
pub struct Opened {
    /// Where each partition's delivery starts: every record at or past
    /// these offsets arrives. Empty for a group (Kafka assigns).
    pub starts: BTreeMap<i32, i64>,
    /// `gap` notices to send after `subscribed` (a start Kafka no longer,
    /// or not yet, has).
    pub gaps: Vec<ServerFrame>,
    pub held: Held,
    /// A snapshot to send once `subscribed` is queued, before the live
    /// records (`from: "snapshot"` only).
    pub prelude: Option<Prelude>,
}

/// A snapshot's frames and what follows them, ready to go once the door has
/// queued `subscribed`.
#[derive(Debug)]
pub struct Prelude {
    routes: Arc<Routes>,
    topic: String,
    partitions: i32,
    subscriber: Subscriber,
    frames: Vec<axum::extract::ws::Utf8Bytes>,
    positions: BTreeMap<i32, i64>,
    /// Cancelled when the subscription is dropped.
    stop: tokio_util::sync::CancellationToken,
}

impl Prelude {
    /// Sends the snapshot and `snapshot_end` at the socket's pace, then joins
    /// the live fan-out from the snapshot's positions, until the
    /// subscription is dropped.
    pub fn start(self) {
        tokio::spawn(self.run());
    }

    async fn run(self) {
        let Self { routes, topic, partitions, subscriber, mut frames, positions, stop } = self;
        let outlet = subscriber.outlet.clone();
        let session = subscriber.session;
        let end = ServerFrame::SnapshotEnd {
            topic: topic.clone(),
            positions: positions.iter().map(|(p, o)| (p.to_string(), *o)).collect(),
        };
        frames.push(end.encode().into());
        let sent = tokio::select! {
            sent = outlet.send_paced_all(frames) => sent,
            () = stop.cancelled() => return,
        };
        if !sent {
            return; // the socket is gone
        }
        let from = StartFrom::Offsets(positions);
        let joined = tokio::select! {
            joined = routes.fanout.subscribe(&topic, partitions, subscriber, &from) => joined,
            () = stop.cancelled() => return,
        };
        match joined {
            Ok(subscribed) => {
                let _catching_up = subscribed.catching_up;
                let gaps: Vec<_> = subscribed.gaps.iter().map(|g| g.encode().into()).collect();
                if !gaps.is_empty() {
                    outlet.send_paced_all(gaps).await;
                }
                stop.cancelled().await;
                routes.fanout.unsubscribe(&topic, session);
            }
            Err(e) => {
                tracing::warn!(topic, session, "a snapshot's live part could not start: {e}");
                let reason = format!("the live records after the snapshot could not start: {e}");
                let ended = ServerFrame::Unsubscribed {
                    id: None,
                    topic: topic.clone(),
                    reason: Some(reason),
                };
                outlet.send_paced_all(vec![ended.encode().into()]).await;
            }
        }
    }
}

/// A subscription on its route; dropping it takes the socket off.
#[derive(Debug)]
pub struct Held {
    routes: Arc<Routes>,
    session: u64,
    topic: String,
    route: Route,
}

#[derive(Debug)]
enum Route {
    /// On the fan-out, live or catching up (its catch-up stops when the
    /// guard drops).
    Live(Option<DropGuard>),
    Group(String),
    /// A snapshot, then live: its [`Prelude`] owns the fan-out membership
    /// and ends when the guard drops.
    Snapshot {
        _stop: DropGuard,
    },
}

impl Held {
    /// The shared group, for a group subscription (commits go there).
    pub fn group(&self) -> Option<&str> {
        match &self.route {
            Route::Group(group) => Some(group),
            _ => None,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match &self.route {
            Route::Live(_) => self.routes.fanout.unsubscribe(&self.topic, self.session),
            Route::Group(group) => self.routes.groups.leave(group, &self.topic, self.session),
            Route::Snapshot { .. } => {}
        }
    }
}

impl Routes {
    /// Opens `request` on its route; returns once the subscription is live.
    /// Not bounded in time itself: callers bound it (`limits.request_timeout_ms`)
    /// and drop it on timeout, which undoes it.
    pub async fn open(self: &Arc<Self>, request: Request) -> Result<Opened, GatewayError> {
        let Request { session, topic, from, group, ack, overflow, throttle, filter, outlet } =
            request;
        if from == StartFrom::Snapshot && group.is_none() {
            return self.open_snapshot(session, topic, overflow, throttle, filter, outlet).await;
        }
        let route = match &group {
            Some(group) => Route::Group(group.clone()),
            None => Route::Live(None),
        };
        // Held before any Kafka work: an error or a drop below undoes it.
        let mut held = Held { routes: self.clone(), session, topic: topic.clone(), route };
        let partitions = self.topics.partitions(&topic).await?;
        match &mut held.route {
            Route::Group(group) => {
                let member = Member { session, ack, outlet, filter };
                self.groups.join(group, &topic, partitions, &from, member).await?;
                Ok(Opened { starts: BTreeMap::new(), gaps: Vec::new(), held, prelude: None })
            }
            Route::Live(guard) => {
                let topic_name = topic.as_str().into();
                let throttle_ms = throttle_ms(throttle);
                let subscriber = Subscriber {
                    session,
                    topic: topic_name,
                    overflow,
                    throttle_ms,
                    outlet,
                    filter,
                };
                let subscribed =
                    self.fanout.subscribe(&topic, partitions, subscriber, &from).await?;
                *guard = subscribed.catching_up;
                Ok(Opened { starts: subscribed.starts, gaps: subscribed.gaps, held, prelude: None })
            }
            Route::Snapshot { .. } => unreachable!("opened by open_snapshot"),
        }
    }

    /// A `from: "snapshot"` subscription: the snapshot now (waiting for the
    /// table to be current), the rest once the door starts its prelude.
    async fn open_snapshot(
        self: &Arc<Self>,
        session: u64,
        topic: String,
        overflow: Overflow,
        throttle: Option<std::time::Duration>,
        filter: Option<Arc<Filter>>,
        outlet: Outlet,
    ) -> Result<Opened, GatewayError> {
        let table = self.tables.table(&topic)?;
        let partitions = self.topics.partitions(&topic).await?;
        let snapshot = table.snapshot(filter.as_deref()).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let held = Held {
            routes: self.clone(),
            session,
            topic: topic.clone(),
            route: Route::Snapshot { _stop: stop.clone().drop_guard() },
        };
        let name = topic.as_str().into();
        let throttle_ms = throttle_ms(throttle);
        let subscriber = Subscriber { session, topic: name, overflow, throttle_ms, outlet, filter };
        let prelude = Prelude {
            routes: self.clone(),
            topic,
            partitions,
            subscriber,
            frames: snapshot.frames,
            positions: snapshot.positions.clone(),
            stop,
        };
        Ok(Opened { starts: snapshot.positions, gaps: Vec::new(), held, prelude: Some(prelude) })
    }
}

/// A throttle window as the hub keeps it: whole ms, at least 1.
fn throttle_ms(window: Option<std::time::Duration>) -> Option<std::num::NonZeroU32> {
    let ms = window?.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
    std::num::NonZeroU32::new(ms)
}
