//! Ferry: a WebSocket ⇄ Kafka event hub.
//!
//! Module map (who owns what, and hands what to whom):
//!
//! - [`config`]: one typed [`config::Config`] from file, `FERRY_*` env and flags.
//! - [`auth`]: JWT (header, query or `auth` frame) → [`auth::Principal`];
//!   keys pinned to algorithms, JWKS cache.
//! - [`acl`]: deny-by-default topic policy with claim templates, reloadable.
//! - [`template`]: the one parser of `{sub}` / `{claims.NAME}` placeholders,
//!   for ACL patterns and ACL-imposed filters.
//! - [`node`]: the one state ([`node::Node`]): every handle the doors
//!   share, built once; the node's bounds on callers (the token bucket,
//!   per-subject connection counts); the decisions every door takes the
//!   same way (subscribe ACL and imposed filters, the publish checks and
//!   batches in [`node::publish`], request timeouts).
//! - [`app`]: builds Kafka clients, hub, fan-out, the [`node::Node`] and
//!   the HTTP server; runs and drains.
//! - [`http`]: the listener (plain or TLS with hot reload, header-read
//!   timeout, pending-handshake bound) and the router: `/ws` upgrade,
//!   `/healthz`, `/readyz`, `/metrics`, `/console` (the embedded web
//!   console), and the plain HTTP transports: `POST /v1/publish` (batches,
//!   acked once stored) and `GET /sse` (Server-Sent Events, resumable on
//!   any node).
//! - [`control`]: the fleet's control topic (heartbeats, revocations,
//!   disconnects, queries and their answers), which the admin API
//!   (`http::admin`, its own listener) asks through.
//! - [`resume`]: the SSE resume token (every partition's next offset).
//! - [`delivery`]: the routes ([`delivery::Routes`]: live fan-out, replay,
//!   shared group) and opening a subscription on one for any transport;
//!   what it returns undoes it when dropped.
//! - [`session`]: one client: a read loop that owns the connection state
//!   (requests that wait on Kafka run beside it, each answered once, in
//!   bounded time) and a writer task that is the only owner of the sink.
//!   A session holds the [`node::Node`] by one `Arc`.
//!   Both tasks are kept small for idle sockets (frames are handled
//!   synchronously, rare steps are boxed): ~7.5 KiB per idle subscriber.
//! - [`hub`]: topic → local subscribers, grouped by filter (a registry:
//!   join/leave say first/last); dispatch never blocks.
//! - [`outlet`]: one per socket: one bounded queue (one lock, one wake-up)
//!   that the session's replies and every delivery path fill, with the
//!   subscription's policy when full (disconnect, lossy, paced); the writer
//!   takes everything queued in one go.
//! - [`filter`]: server-side record filters (key, headers, JSON fields):
//!   parsing, evaluation and the record view in separate files.
//! - [`kafka`]: producer (publish + acks); the one pump loop
//!   ([`kafka::source`]) that every consumer runs with its route: the live
//!   fan-out (assigns topics under a per-topic lock, never under the hub's),
//!   replays, groups; topic catalog, health probe, embedded mock cluster,
//!   client settings and security, the shared client context.
//! - [`error`]: [`error::GatewayError`] and its one mapping to `error` frames.
//! - [`metrics`]: metric names and the functions that record them.
//! - [`tables`]: keyed tables of the topics `[[tables]]` names, built on
//!   first use from the node's own reader: the snapshot of
//!   `from: "snapshot"`.
//! - [`schema`]: per-topic JSON Schemas of record values, checked once per
//!   publish before the producer (`invalid_value`).
//! - [`telemetry`]: the gateway's own spans over OTLP/HTTP when
//!   `telemetry.otlp_endpoint` is set (`ferry.publish` from the producer to
//!   Kafka's ack, `ferry.deliver` in the live fan-out, both continuing the
//!   records' `traceparent`); off, one relaxed load on the hot paths.
//! - [`throttle`]: rate-limited logging of repeated failures.
//!
//! Publish: a door (session, HTTP) → the node's checks (ACL, rate,
//! schema, topic and partition) → [`kafka::producer`] → delivery future →
//! `ack`/`error` into the socket's outlet (replies first) → writer, or the
//! HTTP answer.
//!
//! Delivery: every consumer runs [`kafka::source::pump`], which hands each
//! record to its route. The live route ([`kafka::fanout`]) encodes a record
//! once and dispatches it through the [`hub`] to each subscriber's
//! [`outlet`], never waiting; a catch-up ([`kafka::catchup`]) and a
//! shared group ([`kafka::groups`]) fill the same outlet, paced. The socket's
//! writer (or an SSE stream) drains the outlet; a group record's completion
//! flows back from the writer to its group as a message, the only thing
//! that flows back.

pub mod acl;
pub mod app;
pub mod auth;
pub mod config;
pub mod control;
pub mod delivery;
pub mod error;
pub mod filter;
pub mod http;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod node;
pub mod outlet;
pub mod recent;
pub mod resume;
pub mod schema;
pub mod session;
pub mod tables;
pub mod telemetry;
pub mod template;
pub mod throttle;

pub use app::App;
pub use config::Config;
