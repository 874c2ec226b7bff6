//! The `publish` command: rate limit, ACL, de-duplication of retries, the
//! in-flight bound; then the producer, at once for a known topic, or after
//! the topic's look-up (publishes to one topic keep their order). The ACL,
//! schema and partition checks are the node's (see [`crate::node::publish`]);
//! the window of publishes in flight is the connection's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{AckFrame, Payload, Publish};

use super::{End, Session};
use crate::error::GatewayError;
use crate::kafka::producer::Delivery;
use crate::kafka::topics::check_partition;
use crate::metrics;
use crate::node::publish::Admit;

/// A publish Kafka has yet to answer: resolves to its id and its reply (the
/// `ack`, or the `error`). A plain struct rather than a boxed `async`
/// block: there is one per publish.
pub(super) struct InFlight {
    id: String,
    /// Its beginning, taken (left empty) when the reply is written.
    ack: AckFrame,
    delivery: Delivery,
}

impl InFlight {
    pub(super) fn id(&self) -> &str {
        &self.id
    }
}

impl Future for InFlight {
    type Output = (String, Utf8Bytes);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = ready!(Pin::new(&mut this.delivery).poll(cx));
        let reply = match outcome {
            Ok(stored) => std::mem::take(&mut this.ack).finish(stored.partition, stored.offset),
            Err(e) => {
                metrics::publish_failed(e.code().as_str());
                e.to_frame(Some(&this.id)).encode()
            }
        };
        Poll::Ready((std::mem::take(&mut this.id), Utf8Bytes::from(reply)))
    }
}

/// What the rate limit says of one publish.
pub(super) enum Rate {
    Allowed,
    /// This publish is refused.
    Refused(GatewayError),
    /// Refused, and the client kept going after `rate_limit_strikes`
    /// refusals: the socket closes with 4004 once it is answered.
    Close(GatewayError),
}

impl Session {
    /// The publish rate limit, taken for one publish.
    pub(super) fn check_rate(&mut self) -> Rate {
        if self.rate.take() {
            self.strikes = 0;
            return Rate::Allowed;
        }
        self.strikes += 1;
        let limits = &self.context.config.limits;
        let refused = GatewayError::RateLimited(limits.publish_rate);
        if self.strikes >= limits.rate_limit_strikes {
            return Rate::Close(refused);
        }
        Rate::Refused(refused)
    }

    /// Checks a publish and hands it to Kafka, or queues it behind its
    /// topic's look-up; the reply comes later through `inflight`. An error
    /// is the publish's reply now (with its id).
    pub(super) fn publish(&mut self, publish: Publish<'_>) -> Result<(), (String, GatewayError)> {
        if let Err(e) = self.context.may_publish(self.principal.as_ref(), &publish.topic) {
            return Err((publish.id.into_owned(), e));
        }
        let max = self.context.config.limits.max_inflight_publishes;
        match self.inflight_ids.admit(&publish.id, max) {
            Ok(Admit::New) => {}
            // A retry of a publish still awaiting Kafka: not produced twice;
            // the original's reply answers this id.
            Ok(Admit::Retry) => return Ok(()),
            Err(e) => return Err((publish.id.into_owned(), e)),
        }
        // Validated once, here, before it can wait for its topic's look-up.
        if let Err(e) = self.context.schemas.validate(&publish.topic, &publish.value) {
            return Err((publish.id.into_owned(), e));
        }
        // Known topic, nothing queued before it: produce now. Otherwise the
        // publish waits for the topic's look-up, behind earlier ones.
        let known = self.context.topics.cached(&publish.topic);
        let fits = |n: i32| publish.partition.is_none_or(|p| p < n);
        if !self.waiting.contains_key(&*publish.topic) && known.is_some_and(fits) {
            return self.produce(&publish).map_err(|e| (publish.id.into_owned(), e));
        }
        if !self.context.health.is_ready() {
            let e = GatewayError::Unavailable("Kafka is unreachable".into());
            return Err((publish.id.into_owned(), e));
        }
        self.inflight_ids.insert(publish.id.to_string());
        let topic = publish.topic.to_string();
        let queue = self.waiting.entry(topic.clone()).or_default();
        queue.push_back(owned(publish));
        if queue.len() == 1 {
            let found = self.context.look_up_topic(topic.clone(), true);
            self.lookups.push(Box::pin(async move { (topic, found.await) }));
        }
        Ok(())
    }

    /// A topic's look-up finished: the publishes that waited for it go to
    /// Kafka in their order, or get its error.
    pub(super) async fn lookup_done(
        &mut self,
        topic: &str,
        found: Result<i32, GatewayError>,
    ) -> Result<(), End> {
        let queued = self.waiting.remove(topic).unwrap_or_default();
        for publish in queued {
            let outcome = match &found {
                Err(e) => Err(e.clone()),
                Ok(n) => publish
                    .partition
                    .map_or(Ok(()), |p| check_partition(topic, *n, p))
                    .and_then(|()| {
                        self.inflight_ids.remove(&publish.id);
                        self.produce(&publish)
                    }),
            };
            if let Err(e) = outcome {
                self.inflight_ids.remove(&publish.id);
                metrics::publish_failed(e.code().as_str());
                self.send(e.to_frame(Some(&publish.id))).await?;
            }
        }
        Ok(())
    }

    /// Hands a checked publish to the producer; its delivery joins
    /// `inflight`, answered with the ack written as soon as Kafka stored it.
    pub(super) fn produce(&mut self, publish: &Publish<'_>) -> Result<(), GatewayError> {
        let delivery = self.context.publisher.send(publish)?;
        let id = publish.id.to_string();
        let ack = AckFrame::new(&id, &publish.topic);
        self.inflight_ids.insert(id.clone());
        self.inflight.push(InFlight { id, ack, delivery });
        Ok(())
    }
}

/// A publish that must outlive the frame it was decoded from (it waits for
/// its topic's look-up).
fn owned(publish: Publish<'_>) -> Publish<'static> {
    let value = match publish.value {
        Payload::Json(raw) => Payload::Bytes(raw.get().as_bytes().to_vec()),
        Payload::Bytes(bytes) => Payload::Bytes(bytes),
    };
    Publish {
        id: publish.id.into_owned().into(),
        topic: publish.topic.into_owned().into(),
        value,
        key: publish.key,
        headers: publish.headers,
        partition: publish.partition,
    }
}
