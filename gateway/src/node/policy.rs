//! The decisions every door takes the same way: may this caller read a
//! topic and through which filter, may it open one more connection; and
//! the requests that wait on Kafka (opening a subscription, a topic's
//! look-up), each bounded by `limits.request_timeout_ms`. A door only
//! translates the answer to its wire.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::limits::SubjectGuard;
use super::Node;
use crate::acl::{Action, SubscribeGrantResult};
use crate::auth::{AuthMode, Principal};
use crate::delivery::{self, Opened};
use crate::error::GatewayError;
use crate::filter::Filter;
use crate::metrics;

impl Node {
    /// The throttle window of a subscription: the one `asked`
    /// (`throttle_ms`), raised to the floor of `limits.min_throttle_ms` and
    /// of the ACL rules matching `principal`; `None` when neither asks.
    /// A group is never throttled (a throttle it asks for is refused
    /// earlier, with the frame).
    pub fn subscription_throttle(
        &self,
        principal: Option<&Principal>,
        asked: Option<u32>,
        group: bool,
    ) -> Option<Duration> {
        if group {
            return None;
        }
        let rules = principal.map_or(0, |p| self.policy.get().min_throttle_ms(p));
        let floor = self.config.limits.min_throttle_ms.max(rules);
        let ms = u64::from(asked.unwrap_or(0)).max(floor);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// May `principal` (`None`: not authenticated yet) subscribe to
    /// `topic`? If so, the filter its records go through: the one `asked`
    /// (wire form) and the one the ACL imposes, both. A refusal is counted.
    pub fn subscription_filter(
        &self,
        principal: Option<&Principal>,
        topic: &str,
        asked: Option<&Value>,
    ) -> Result<Option<Arc<Filter>>, GatewayError> {
        let grant = match principal {
            Some(p) => self.policy.get().subscribe_grant(p, topic),
            None => SubscribeGrantResult::Denied,
        };
        let imposed = match grant {
            SubscribeGrantResult::Denied => {
                metrics::forbidden(Action::Subscribe.as_str());
                let m = format!("not allowed to subscribe to {topic:?}");
                return Err(GatewayError::Forbidden(m));
            }
            SubscribeGrantResult::Allowed { imposed } => imposed,
        };
        let asked = match asked {
            None => None,
            Some(wire) => Some(
                Filter::parse(wire)
                    .map_err(|e| GatewayError::BadRequest(format!("bad filter: {e}")))?,
            ),
        };
        Ok(match (asked, imposed) {
            (None, None) => None,
            (Some(f), None) | (None, Some(f)) => Some(Arc::new(f)),
            (Some(asked), Some(imposed)) => Some(Arc::new(asked.and(imposed))),
        })
    }

    /// Counts one more connection of `principal`'s subject, refused past
    /// `limits.max_connections_per_subject` (JWT mode only: without
    /// authentication every caller is the same anonymous subject).
    pub fn count_connection(
        &self,
        principal: &Principal,
    ) -> Result<Option<SubjectGuard>, GatewayError> {
        if self.auth.mode() == AuthMode::None {
            return Ok(None);
        }
        let max = self.config.limits.max_connections_per_subject;
        match self.subjects.acquire(&principal.subject, max) {
            Some(guard) => Ok(Some(guard)),
            None => Err(GatewayError::Limit(format!("subject already has {max} connections"))),
        }
    }
}

impl Node {
    /// Opens a subscription on its route for any door, bounded by
    /// `limits.request_timeout_ms`: past it the answer is `NoAnswer` and
    /// the work is dropped, which undoes whatever part of it was done.
    /// While Kafka is unreachable the answer is `unavailable` at once, as
    /// for a publish.
    pub fn open_subscription(
        &self,
        request: delivery::Request,
    ) -> impl Future<Output = Result<Opened, GatewayError>> + Send + 'static {
        let routes = self.routes.clone();
        let reachable = self.health.is_ready();
        within(self.config.limits.request_timeout(), async move {
            if !reachable {
                return Err(GatewayError::Unavailable("Kafka is unreachable".into()));
            }
            routes.open(request).await
        })
    }

    /// A topic's partition count for a publish, creating the topic where
    /// allowed; `fresh` asks Kafka again rather than trust the cache.
    /// Bounded like [`Node::open_subscription`].
    pub fn look_up_topic(
        &self,
        topic: String,
        fresh: bool,
    ) -> impl Future<Output = Result<i32, GatewayError>> + Send + 'static {
        let topics = self.topics.clone();
        within(self.config.limits.request_timeout(), async move {
            if fresh {
                topics.refresh(&topic).await
            } else {
                topics.partitions(&topic).await
            }
        })
    }
}

/// `work`, or `NoAnswer` once `timeout` has passed (`work` is dropped).
async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(GatewayError::NoAnswer(timeout.as_millis() as u64)),
    }
}
