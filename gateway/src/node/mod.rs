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
//! batches (one outcome per record, in order).

pub mod limits;
mod policy;
pub mod publish;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::{CurrentPolicy, Policy};
use crate::auth::{AuthMode, Authenticator};
use crate::config::Config;
use crate::delivery::Routes;
use crate::kafka::health::Health;
use crate::kafka::producer::Publisher;
use crate::kafka::topics::Topics;
use crate::schema::Schemas;
use limits::SubjectConnections;
use publish::Batches;

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
