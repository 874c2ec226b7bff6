//! The one pump loop of every delivery path.
//!
//! Each Kafka consumer that feeds sockets (the node's live fan-out, a
//! replay, a shared group) runs [`pump`]: it receives records until stopped
//! and hands each to its [`Route`], which says where records go:
//!
//! - the live fan-out's route encodes a record once and dispatches it to the
//!   [`crate::hub`], never waiting on a socket;
//! - a replay's route sends to its one socket's outlet, paced;
//! - a group's route picks one member and sends to it, paced, and applies
//!   the completions its members' writers send back meanwhile.
//!
//! The loop owns what the three share: stopping (a stop also cancels a
//! delivery that waits on a socket), throttled logging of consumer errors
//! with a short back-off, and yielding during bursts so that socket writers
//! run between records.

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;

use crate::throttle::Throttle;

/// Records handed on in a burst before the pump yields.
const YIELD_EVERY: u32 = 32;

/// How long the pump waits after a consumer error before receiving again.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the pump goes on after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Next,
    /// The route has nowhere to send records any more.
    Stop,
}

/// Where a pump's records go.
pub trait Route: Send {
    /// Hands `record` on; a paced route waits here for its socket.
    fn deliver(&mut self, record: &BorrowedMessage<'_>) -> impl Future<Output = Flow> + Send;

    /// Work that arrives while the pump waits for a record (a group's
    /// completions). Never ready by default.
    fn between(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Last work once the pump stopped.
    fn finish(&mut self) {}
}

/// Receives from `consumer` and hands every record to `route` until `stop`
/// is cancelled or the route stops. `name` names the consumer in logs.
pub async fn pump<C, R>(
    name: &'static str,
    consumer: &StreamConsumer<C>,
    stop: &CancellationToken,
    mut route: R,
) where
    C: ConsumerContext + 'static,
    R: Route,
{
    let errors = Throttle::default();
    let mut since_yield = 0u32;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            () = route.between() => continue,
            received = consumer.recv() => received,
        };
        match received {
            Ok(record) => {
                let flow = tokio::select! {
                    biased; // the live route is ready at once
                    flow = route.deliver(&record) => flow,
                    _ = stop.cancelled() => Flow::Stop,
                };
                if flow == Flow::Stop {
                    break;
                }
                // `recv` is always ready during a burst; let the socket
                // writers drain their queues before handing on more.
                since_yield += 1;
                if since_yield == YIELD_EVERY {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                if let Some(held_back) = errors.allow() {
                    tracing::warn!(error = %e, held_back, "{name} consumer error");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = tokio::time::sleep(ERROR_BACKOFF) => {}
                }
            }
        }
    }
    route.finish();
}
