//! The `publish` command: rate limit, ACL, de-duplication of retries, the
//! in-flight bound; then the producer, at once for a known topic, or after
//! the topic's look-up (publishes to one topic keep their order). The ACL,
//! schema and partition checks are the node's (see [`crate::node::publish`]);
//! the window of publishes in flight is the connection's own.
//!
//! Kafka's answer does not come back through the session: each record
//! carries an [`Answer`], which the producer's delivery callback fills
//! into the socket's outlet (the `ack`, or the `error`) in room taken for
//! it when the record was produced. No future, channel or wake-up of the
//! session per publish; the session only waits for its publishes when it
//! closes ([`Awaiting::settle`]).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{AckFrame, Payload, Publish};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{End, Session};
use crate::error::GatewayError;
use crate::kafka::producer::{OnDelivery, Outcome};
use crate::kafka::topics::check_partition;
use crate::metrics;
use crate::node::publish::{Admit, Window};
use crate::outlet::{ReplySlot, WriterGone};

/// A connection's publishes not answered yet (produced, or waiting for
/// their topic's look-up), shared with the delivery callbacks that answer
/// them.
#[derive(Debug, Default)]
pub(super) struct Awaiting {
    /// Short critical sections only; a callback writes its reply under it
    /// (see [`Awaiting::answer`]).
    window: Mutex<Window>,
    /// Notified when the window empties, for a closing session.
    settled: Notify,
}

impl Awaiting {
    pub(super) fn lock(&self) -> MutexGuard<'_, Window> {
        // A panic under this lock leaves a plain set behind: still usable.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `id`'s reply, if it is still awaited. Under the lock, so that
    /// a closing session that found the window empty (or took what was left
    /// in it to answer `timeout`) never sees a reply queued after its own
    /// answers and its close frame.
    fn answer(&self, id: &str, write: impl FnOnce()) {
        let mut window = self.lock();
        if !window.remove(id) {
            return;
        }
        write();
        let empty = window.is_empty();
        drop(window);
        if empty {
            self.settled.notify_one();
        }
    }

    /// Waits until every publish was answered, or until `deadline`; then
    /// returns the ids still unanswered, which no callback answers any more.
    pub(super) async fn settle(&self, deadline: Instant) -> Vec<String> {
        loop {
            let settled = self.settled.notified();
            if self.lock().is_empty() {
                return Vec::new();
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.lock().take_all();
            }
        }
    }
}

/// One publish's answer, carried through Kafka with its record and written
/// by the producer's delivery callback.
struct Answer {
    id: String,
    /// The ack's beginning (id and topic), finished with the position.
    ack: AckFrame,
    /// Room in the socket's replies, taken when the record was produced.
    slot: ReplySlot,
    awaiting: Arc<Awaiting>,
}

impl OnDelivery for Answer {
    fn delivered(self: Box<Self>, outcome: Outcome) {
        let Self { id, ack, slot, awaiting } = *self;
        let (reply, failed) = match outcome {
            Ok(stored) => (ack.finish(stored.partition, stored.offset), None),
            Err(e) => (e.to_frame(Some(&id)).encode(), Some(e.code())),
        };
        // Counted only when this is the publish's answer (not one the
        // session already answered with `timeout` as it closed).
        awaiting.answer(&id, || {
            if let Some(code) = failed {
                metrics::publish_failed(code.as_str());
            }
            slot.fill(Utf8Bytes::from(reply));
        });
    }
}

/// What became of a publish the session accepted.
pub(super) enum Accepted {
    /// Produced, or queued behind its topic's look-up: answered later.
    Done,
    /// Its reply has no room yet: produce it once there is (the session
    /// stops reading meanwhile).
    NeedsRoom(Publish<'static>),
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
    /// The connection's publishes awaiting Kafka, made on its first
    /// publish: a socket that only subscribes pays nothing for them.
    pub(super) fn awaiting(&mut self) -> &Arc<Awaiting> {
        self.awaiting.get_or_insert_with(Arc::default)
    }

    /// The publish rate limit, taken for one publish read at `now`.
    pub(super) fn check_rate(&mut self, now: std::time::Instant) -> Rate {
        if self.rate.take_at(now) {
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
    /// topic's look-up; the reply comes later from the delivery callback.
    /// An error is the publish's reply now (with its id). `now`: when it
    /// was read (one clock reading for every check of a publish).
    pub(super) fn publish(
        &mut self,
        publish: Publish<'_>,
        now: std::time::Instant,
    ) -> Result<Accepted, (String, GatewayError)> {
        if let Err(e) = self.context.may_publish(self.principal.as_ref(), &publish.topic) {
            return Err((publish.id.into_owned(), e));
        }
        let max = self.context.config.limits.max_inflight_publishes;
        match self.awaiting().lock().admit(&publish.id, max) {
            Ok(Admit::New) => {}
            // A retry of a publish still awaiting Kafka: not produced twice;
            // the original's reply answers this id.
            Ok(Admit::Retry) => return Ok(Accepted::Done),
            Err(e) => return Err((publish.id.into_owned(), e)),
        }
        // Validated once, here, before it can wait for its topic's look-up.
        if let Err(e) = self.context.schemas.validate(&publish.topic, &publish.value) {
            return Err((publish.id.into_owned(), e));
        }
        // Known topic, nothing queued before it: produce now. Otherwise the
        // publish waits for the topic's look-up, behind earlier ones.
        let known = self.context.topics.cached_at(&publish.topic, now);
        let fits = |n: i32| publish.partition.is_none_or(|p| p < n);
        if !self.waiting.contains_key(&*publish.topic) && known.is_some_and(fits) {
            let slot = match self.replies.try_reserve() {
                Ok(Some(slot)) => slot,
                Ok(None) => {
                    self.awaiting().lock().insert(publish.id.to_string());
                    return Ok(Accepted::NeedsRoom(owned(publish)));
                }
                Err(WriterGone) => return Err((publish.id.into_owned(), writer_gone())),
            };
            return self
                .produce(&publish, slot, now)
                .map(|()| Accepted::Done)
                .map_err(|e| (publish.id.into_owned(), e));
        }
        if !self.context.health.is_ready() {
            let e = GatewayError::Unavailable("Kafka is unreachable".into());
            return Err((publish.id.into_owned(), e));
        }
        self.awaiting().lock().insert(publish.id.to_string());
        let topic = publish.topic.to_string();
        let queue = self.waiting.entry(topic.clone()).or_default();
        queue.push_back(owned(publish));
        if queue.len() == 1 {
            let found = self.context.look_up_topic(topic.clone(), true);
            self.lookups.push(Box::pin(async move { (topic, found.await) }));
        }
        Ok(Accepted::Done)
    }

    /// Produces a publish (its id already in the window) once its reply
    /// has room; or answers it with why not.
    pub(super) async fn produce_when_room(&mut self, publish: &Publish<'_>) -> Result<(), End> {
        let slot = self.replies.reserve().await.map_err(|WriterGone| End::WriterGone)?;
        if let Err(e) = self.produce(publish, slot, std::time::Instant::now()) {
            self.awaiting().lock().remove(&publish.id);
            metrics::publish_failed(e.code().as_str());
            self.send(e.to_frame(Some(&publish.id))).await?;
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
            let checked = match &found {
                Err(e) => Err(e.clone()),
                Ok(n) => publish.partition.map_or(Ok(()), |p| check_partition(topic, *n, p)),
            };
            match checked {
                Ok(()) => self.produce_when_room(&publish).await?,
                Err(e) => {
                    self.awaiting().lock().remove(&publish.id);
                    metrics::publish_failed(e.code().as_str());
                    self.send(e.to_frame(Some(&publish.id))).await?;
                }
            }
        }
        Ok(())
    }

    /// Hands a checked publish to the producer, with room for its reply;
    /// the delivery callback writes the ack as soon as Kafka stored it.
    pub(super) fn produce(
        &mut self,
        publish: &Publish<'_>,
        slot: ReplySlot,
        now: std::time::Instant,
    ) -> Result<(), GatewayError> {
        let id = publish.id.to_string();
        let ack = AckFrame::new(&id, &publish.topic);
        // In the window before Kafka can answer it.
        self.awaiting().lock().insert(id.clone());
        let answer = Box::new(Answer { id, ack, slot, awaiting: self.awaiting().clone() });
        self.context.publisher.send_answered(publish, answer, now).inspect_err(|_| {
            self.awaiting().lock().remove(&publish.id);
        })
    }
}

fn writer_gone() -> GatewayError {
    GatewayError::Unavailable("the connection is closing".into())
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
