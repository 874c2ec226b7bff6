//! The WebSocket upgrade: connection limit, subprotocol, frame limits and
//! small socket buffers, then the session takes over.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::{metrics, session};

/// Read buffer per socket; it grows only for frames that need more.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes gathered before a write reaches the socket (flushes write sooner).
const WRITE_BUFFER: usize = 16 * 1024;
/// A socket whose unsent bytes pass this is failed rather than buffered.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

pub(super) async fn upgrade(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    if state.shutdown.is_cancelled() {
        metrics::connection_rejected("shutting_down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        metrics::connection_rejected("max_connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let max_frame = state.config.limits.max_frame_bytes;
    let sessions = state.sessions.clone();
    ws.protocols([ferry_protocol::SUBPROTOCOL])
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| sessions.track_future(session::run(socket, state, permit)))
}
