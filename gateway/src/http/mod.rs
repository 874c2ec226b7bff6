//! The HTTP surface: the WebSocket endpoint and the ops endpoints.
//!
//! | route | what |
//! |---|---|
//! | `GET /ws` | WebSocket upgrade (subprotocol `ferry.v1`) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when Kafka answers, 503 when not or shutting down |
//! | `GET /metrics` | Prometheus text |

mod ops;
mod ws;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

/// Builds the router over the shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}
