//! The node: the gateway's one state. [`crate::app::App::build`] makes its
//! handles once; every door (WebSocket sessions, SSE, HTTP publish, the ops
//! endpoints) shares them through one `Arc<Node>`, so an idle socket pays
//! for a pointer, not for a copy.
//!
//! [`limits`] holds the node's bounds on callers: the one token bucket
//! (publish rates of sockets and of HTTP subjects) and the per-subject
//! connection counts. `policy.rs` holds the decisions every door takes the
//! same way: the subscribe ACL with its imposed filters, and counting a
//! subject's connections. [`publish`] holds the publish checks and
//! batches (one outcome per record, in order). [`registry`] knows every
//! open connection and closes one from outside (the admin API, a drain);
//! [`revocations`] holds the revoked tokens the control topic announced,
//! which [`Node::authenticate`] refuses for every door.

pub mod limits;
mod policy;
pub mod publish;
pub mod registry;
pub mod revocations;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::{CurrentPolicy, Policy};
use crate::auth::{AuthError, AuthMode, Authenticator, Principal};
use crate::config::Config;
use crate::delivery::Routes;
use crate::kafka::health::Health;
use crate::kafka::producer::Publisher;
use crate::kafka::topics::Topics;
use crate::schema::Schemas;
use ferry_protocol::CloseCode;
use limits::SubjectConnections;
use publish::Batches;
use registry::Registry;
use revocations::{Loaded, Revocations};

/// The gateway's handles and settings, shared by every door.
#[derive(Debug)]
pub struct Node {
    pub config: Config,
    /// The node's name, sent in `welcome` (`--node-id`, or the host name).
    pub node_id: String,
    pub publisher: Publisher,
    /// Partition counts of the topics published to.
    pub topics: Arc<Topics>,
    /// The live fan-out, catch-up and shared groups.
    pub routes: Arc<Routes>,
    pub health: Arc<Health>,
    pub auth: Arc<Authenticator>,
    /// The ACL, swapped whole on reload.
    pub policy: Arc<CurrentPolicy>,
    /// JSON Schemas of record values, compiled at start (not reloaded).
    pub schemas: Arc<Schemas>,
    /// Open connections per subject (WebSocket and SSE).
    pub subjects: Arc<SubjectConnections>,
    /// Rates and records in flight of batch publishing, per subject.
    pub batches: Arc<Batches>,
    pub metrics: PrometheusHandle,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
    /// One permit per open WebSocket (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Every session task, so shutdown knows when all are done.
    pub sessions: TaskTracker,
    pub next_session: AtomicU64,
    /// Every open connection (WebSocket and SSE), for the admin API.
    pub registry: Arc<Registry>,
    /// Tokens revoked through the control topic.
    pub revocations: Arc<Revocations>,
    /// Set by a drain: no new connection, `/readyz` is 503.
    pub draining: AtomicBool,
}

impl Node {
    /// How long a socket may take to send `auth` (`auth.auth_timeout_ms`).
    pub fn auth_timeout(&self) -> Duration {
        self.config.auth.auth_timeout()
    }

    /// How long past its `exp` a token is still accepted (`auth.leeway_secs`).
    pub fn auth_leeway(&self) -> Duration {
        Duration::from_secs(self.config.auth.leeway_secs)
    }

    /// Verifies `token` (every door's authentication): its signature and
    /// claims, then the revocations of the control topic.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let principal = self.auth.verify(token).await?;
        if self.revocations.is_revoked(&principal, registry::now_ms() / 1000) {
            crate::metrics::auth_failed(AuthError::Revoked.kind());
            return Err(AuthError::Revoked);
        }
        Ok(principal)
    }

    /// Whether the node takes new connections; if not, why (the doors
    /// answer 503 with it). Not while it shuts down or drains, nor before
    /// it knows every revocation.
    /// The error is a metric label (`shutting_down`, `draining`,
    /// `not_ready`) and the words for the caller.
    pub fn accepting(&self) -> Result<(), (&'static str, String)> {
        if self.shutdown.is_cancelled() {
            return Err(("shutting_down", "shutting down".into()));
        }
        if self.draining.load(Ordering::Acquire) {
            return Err(("draining", "draining: connect to another node".into()));
        }
        match self.revocations.loaded() {
            Loaded::Off | Loaded::Current => Ok(()),
            Loaded::Loading => {
                Err(("not_ready", "reading the control topic (revocations) first".into()))
            }
            Loaded::Failed(why) => {
                Err(("not_ready", format!("the control topic cannot be read: {why}")))
            }
        }
    }

    /// Drains the node: from now on no new connection, and `/readyz` is
    /// 503; the open connections close with 1012 spread evenly over
    /// `over`, so that their clients reconnect elsewhere a few at a time;
    /// once none is left (or `over` plus the shutdown grace passed) the
    /// node shuts down. Returns how many connections it closes; a second
    /// drain while one runs returns `None`.
    pub fn drain(self: &Arc<Self>, over: Duration) -> Option<usize> {
        if self.draining.swap(true, Ordering::AcqRel) {
            return None;
        }
        let outlets = self.registry.outlets();
        let count = outlets.len();
        tracing::warn!(
            connections = count,
            "draining over {over:?}: closing every connection with 1012"
        );
        let node = self.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (i, outlet) in outlets.iter().enumerate() {
                let at = start + over.mul_f64(i as f64 / count.max(1) as f64);
                tokio::select! {
                    () = tokio::time::sleep_until(at) => outlet.close_with(CloseCode::SERVICE_RESTART),
                    () = node.shutdown.cancelled() => return,
                }
            }
            let deadline = start + over + node.config.shutdown_grace();
            while !node.registry.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = node.shutdown.cancelled() => return,
                }
            }
            tracing::info!("drained: shutting down");
            node.shutdown.cancel();
        });
        Some(count)
    }

    /// Re-reads the ACL from `path`; a bad policy is logged and the old one
    /// stays.
    pub fn reload_policy(&self, path: &std::path::Path) {
        let compiled = crate::config::reload_acl(path).and_then(|acl| Policy::compile(&acl));
        match compiled {
            Ok(policy) => {
                self.policy.replace(effective_policy(&self.config, policy));
                tracing::info!(file = %path.display(), "ACL policy reloaded");
            }
            Err(errors) => tracing::error!(
                file = %path.display(),
                "ACL policy rejected, keeping the previous one: {}",
                errors.join("; ")
            ),
        }
    }
}

/// Without authentication and without rules, everything is allowed (the
/// quick start); otherwise the policy is deny-by-default as written.
pub fn effective_policy(config: &Config, policy: Policy) -> Policy {
    if config.auth.mode == AuthMode::None && policy.is_empty() {
        Policy::allow_all()
    } else {
        policy
    }
}
