//! Ferry: a WebSocket ⇄ Kafka event hub.
//!
//! Module map (who owns what, and hands what to whom):
//!
//! - [`config`]: one typed [`config::Config`] from file, `FERRY_*` env and flags.
//! - [`auth`]: JWT (header, query or `auth` frame) → [`auth::Principal`];
//!   keys pinned to algorithms, JWKS cache.
//! - [`acl`]: deny-by-default topic policy with claim templates, reloadable.
//! - [`app`]: builds Kafka clients, hub, fan-out and HTTP server; runs and drains.
//! - [`http`]: the router: `/ws` upgrade, `/healthz`, `/readyz`, `/metrics`.
//! - [`session`]: one client: a read loop that owns the connection state and
//!   a writer task that is the only owner of the socket's sink.
//! - [`hub`]: topic → local subscribers, grouped by filter; dispatch never
//!   blocks.
//! - [`filter`]: server-side record filters (key, headers, JSON fields).
//! - [`kafka`]: producer (publish + acks), fan-out consumer, topic catalog,
//!   health probe, embedded mock cluster, client settings.
//! - [`error`]: [`error::GatewayError`] and its one mapping to `error` frames.
//! - [`metrics`]: metric names and the functions that record them.
//!
//! Publish: session → ACL and rate limit → topic check → [`kafka::producer`] → delivery future →
//! `ack`/`error` on the session's reply queue → writer.
//!
//! Fan-out: [`kafka::fanout`] consumer → record encoded once → [`hub`] →
//! each subscriber's bounded queue → its writer.

pub mod acl;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod filter;
pub mod http;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod session;

pub use app::App;
pub use config::Config;
