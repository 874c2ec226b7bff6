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

/// The routes a subscription can take, shared by every transport.
#[derive(Debug)]
pub struct Routes {
    /// Partition counts (and creation) of the topics subscribed to.
    pub topics: Arc<Topics>,
    /// The node's live fan-out, and the catch-up that leads into it.
    pub fanout: Arc<Fanout>,
    pub groups: Groups,
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
                Ok(Opened { starts: BTreeMap::new(), gaps: Vec::new(), held })
            }
            Route::Live(guard) => {
                let topic_name = topic.as_str().into();
                let subscriber =
                    Subscriber { session, topic: topic_name, overflow, throttle, outlet, filter };
                let subscribed =
                    self.fanout.subscribe(&topic, partitions, subscriber, &from).await?;
                *guard = subscribed.catching_up;
                Ok(Opened { starts: subscribed.starts, gaps: subscribed.gaps, held })
            }
        }
    }
}
