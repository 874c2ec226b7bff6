//! The `subscribe` and `unsubscribe` commands. A subscribe is checked at
//! once (ACL, filter, limits) and its Kafka work ([`Routes::open`](delivery::Routes::open): the
//! live fan-out, a replay, or a shared group) then runs beside the read
//! loop. Whatever it comes to, it is answered once, and undone if the
//! client unsubscribed meanwhile or the session ended.

use std::collections::HashMap;

use ferry_protocol::{ServerFrame, Subscribe};

use super::{End, Session};
use crate::acl::Action;
use crate::delivery::{self, Held, Opened};
use crate::error::GatewayError;
use crate::metrics;

/// One subscription of the socket.
#[derive(Debug)]
pub(super) struct Subscription {
    /// On its route; dropping it takes the socket off.
    pub(super) held: Held,
    /// The canonical ACL-imposed filter it was granted with; a token refresh
    /// that changes it ends the subscription.
    pub(super) imposed: Option<String>,
}

/// The socket's subscriptions, by topic. A short list rather than a map:
/// a socket has a few (at most `limits.max_subscriptions`), and an idle
/// socket's memory counts; a map allocates room for several at the first.
#[derive(Debug, Default)]
pub(super) struct Subscriptions(Vec<(String, Subscription)>);

impl Subscriptions {
    pub(super) fn get(&self, topic: &str) -> Option<&Subscription> {
        self.0.iter().find(|(t, _)| t == topic).map(|(_, sub)| sub)
    }

    pub(super) fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds a subscription to a topic the socket has none for.
    pub(super) fn insert(&mut self, topic: String, subscription: Subscription) {
        debug_assert!(!self.contains(&topic));
        self.0.reserve_exact(1);
        self.0.push((topic, subscription));
    }

    pub(super) fn remove(&mut self, topic: &str) -> Option<Subscription> {
        let at = self.0.iter().position(|(t, _)| t == topic)?;
        Some(self.0.swap_remove(at).1)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &(String, Subscription)> {
        self.0.iter()
    }

    pub(super) fn topics(&self) -> Vec<String> {
        self.0.iter().map(|(topic, _)| topic.clone()).collect()
    }
}

/// A subscribe still waiting on Kafka.
#[derive(Debug)]
pub(super) struct Opening {
    pub(super) id: String,
    /// The client unsubscribed meanwhile: undo it once it completes.
    pub(super) cancelled: bool,
}

/// What a subscribe's Kafka work came to.
pub(super) struct SubscribeDone {
    pub(super) id: String,
    pub(super) topic: String,
    pub(super) result: Result<Opened, GatewayError>,
}

impl Session {
    /// Checks a subscribe and starts its Kafka work, which answers it when
    /// done (see [`Session::subscribe_done`]). An error is its reply now.
    pub(super) fn subscribe(&mut self, request: &Subscribe) -> Result<(), GatewayError> {
        let topic = request.topic.as_str();
        let filter = self.context.subscription_filter(
            self.principal.as_ref(),
            topic,
            request.filter.as_ref(),
        )?;
        if self.subscriptions.contains(topic) {
            return Err(GatewayError::BadRequest(format!(
                "already subscribed to {topic:?}; unsubscribe first to start elsewhere"
            )));
        }
        if self.openings.contains_key(topic) {
            return Err(GatewayError::BadRequest(format!(
                "a subscribe to {topic:?} is still waiting on Kafka"
            )));
        }
        let max = self.context.config.limits.max_subscriptions;
        if self.subscriptions.len() + self.openings.len() >= max {
            return Err(GatewayError::Limit(format!(
                "this connection already has {max} subscriptions"
            )));
        }
        if let Some(group) = &request.group {
            if !self.allowed(Action::Group, group) {
                return Err(GatewayError::Forbidden(format!(
                    "not allowed to join group {group:?}"
                )));
            }
        }
        let opening = delivery::Request {
            session: self.id,
            topic: request.topic.clone(),
            from: request.from.clone(),
            group: request.group.clone(),
            ack: request.ack,
            overflow: request.overflow,
            throttle: self.context.subscription_throttle(
                self.principal.as_ref(),
                request.throttle_ms,
                request.group.is_some(),
            ),
            filter,
            outlet: self.outlet.clone(),
        };
        let (id, topic) = (request.id.clone(), request.topic.clone());
        let opened = self.context.open_subscription(opening);
        self.openings.insert(topic.clone(), Opening { id: id.clone(), cancelled: false });
        // Beside the read loop; dropped (and so undone) if the session ends.
        self.subscribing
            .push(Box::pin(async move { SubscribeDone { id, topic, result: opened.await } }));
        Ok(())
    }

    /// A subscribe's Kafka work finished: answer it, and keep the
    /// subscription unless the client unsubscribed meanwhile.
    pub(super) async fn subscribe_done(&mut self, done: SubscribeDone) -> Result<(), End> {
        let SubscribeDone { id, topic, result } = done;
        let Some(opening) = self.openings.remove(&topic) else {
            return Ok(()); // the session is finishing
        };
        if self.openings.is_empty() {
            // Most sockets subscribe once and then sit idle: give the room
            // back rather than keep it for the next subscribe.
            self.openings = HashMap::new();
        }
        // An error was undone where it happened; a subscription the client
        // gave up on meanwhile is undone by dropping it here.
        let opened = match (result, opening.cancelled) {
            (Err(e), _) => return self.send(e.to_frame(Some(&id))).await,
            (Ok(opened), true) => {
                drop(opened); // off its route before the answer
                let e = GatewayError::BadRequest(format!(
                    "unsubscribed from {topic:?} before the subscription was live"
                ));
                return self.send(e.to_frame(Some(&id))).await;
            }
            (Ok(opened), false) => opened,
        };
        let imposed = self.imposed_canonical(&topic);
        let subscription = Subscription { held: opened.held, imposed };
        self.context.registry.subscribed(self.id, &topic);
        self.subscriptions.insert(topic.clone(), subscription);
        metrics::subscriptions_changed(1.0);
        let partitions = opened.starts.into_iter().map(|(p, o)| (p.to_string(), o)).collect();
        self.send(ServerFrame::Subscribed { id, topic, partitions }).await?;
        if let Some(prelude) = opened.prelude {
            prelude.start(); // the snapshot follows `subscribed`
        }
        for gap in opened.gaps {
            self.send(gap).await?;
        }
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, topic: &str) {
        if let Some(opening) = self.openings.get_mut(topic) {
            opening.cancelled = true;
            return;
        }
        // Dropping it takes the socket off its route.
        if self.subscriptions.remove(topic).is_some() {
            self.context.registry.unsubscribed(self.id, topic);
            metrics::subscriptions_changed(-1.0);
        }
    }
}
