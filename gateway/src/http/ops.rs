//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::AppState;

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable\n")
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> String {
    state.metrics.render()
}
