//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use crate::node::Node;

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<Arc<Node>>) -> (StatusCode, String) {
    if let Err((_, why)) = state.accepting() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    } else if state.health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else if let Some(cause) = state.health.refusal() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("kafka refused the gateway: {}\n", cause.as_str()),
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable\n".into())
    }
}

pub(super) async fn metrics(State(state): State<Arc<Node>>) -> String {
    state.metrics.render()
}
