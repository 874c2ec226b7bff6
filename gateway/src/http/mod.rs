//! The HTTP surface: the WebSocket endpoint and the ops endpoints.
//!
//! | route | what |
//! |---|---|
//! | `GET /ws` | WebSocket upgrade (subprotocol `ferry.v1`) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when Kafka answers, 503 when not or shutting down |
//! | `GET /metrics` | Prometheus text |
//! | `GET /console` | the web console (`console.rs`; `console.enabled`) |
//! | `POST /v1/publish` | records over plain HTTP, acked once stored ([`publish`]) |
//! | `GET /sse` | Server-Sent Events subscription with resume ([`sse`]) |
//!
//! The admin API ([`admin`]) is served on its own listener
//! (`admin.listen`), never by this router.
//!
//! [`server`] is the listener that serves it (TLS from [`tls`], handshake
//! deadline and bound).

pub mod admin;
mod caller;
mod console;
mod deflate;
mod ops;
pub mod publish;
pub mod server;
pub mod sse;
pub mod tls;
mod ws;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;

/// Builds the router over the shared state.
pub fn router(state: Arc<Node>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/publish", post(publish::publish).options(caller::preflight))
        .route("/sse", get(sse::stream).options(caller::preflight));
    if state.config.console.enabled {
        router = router.merge(console::routes());
    }
    router.with_state(state)
}
