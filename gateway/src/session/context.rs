//! What a session uses of the gateway, and nothing more: built once at start
//! ([`crate::app::App::build`]) and shared by every session through one
//! `Arc`, so an idle socket pays for a pointer, not for a copy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::acl::CurrentPolicy;
use crate::auth::Authenticator;
use crate::config::{LimitsConfig, WebSocketConfig};
use crate::delivery::Routes;
use crate::kafka::health::Health;
use crate::kafka::producer::Publisher;
use crate::kafka::topics::Topics;
use crate::schema::Schemas;

use super::limits::SubjectConnections;

#[derive(Debug)]
pub struct Context {
    /// The node's name, sent in `welcome`.
    pub node_id: String,
    pub limits: LimitsConfig,
    pub websocket: WebSocketConfig,
    /// How long a socket may take to send `auth` (`auth.auth_timeout_ms`).
    pub auth_timeout: Duration,
    /// How long past its `exp` a token is still accepted (`auth.leeway_secs`).
    pub auth_leeway: Duration,
    /// How long a shutdown waits for in-flight publishes.
    pub shutdown_grace: Duration,
    pub auth: Arc<Authenticator>,
    pub policy: Arc<CurrentPolicy>,
    pub subjects: Arc<SubjectConnections>,
    pub schemas: Arc<Schemas>,
    pub publisher: Publisher,
    /// Partition counts of the topics published to.
    pub topics: Arc<Topics>,
    pub health: Arc<Health>,
    pub routes: Arc<Routes>,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
}
