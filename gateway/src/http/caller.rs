//! Who calls a plain HTTP endpoint (`/sse`, `/v1/publish`) and whether a
//! browser page may read the answer: the same token and origin rules as the
//! WebSocket upgrade, and one JSON error body for every refusal.

use std::collections::HashMap;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{AuthMode, Principal};
use crate::error::GatewayError;
use crate::node::Node;

/// A refused request: its status and a message for a human, answered as
/// `{"error":{"code","message"}}` (the codes of the protocol).
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// Seconds, for 429 and 503.
    pub(super) retry_after: Option<u64>,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The one mapping of a request error to an HTTP answer: its protocol
    /// code, its message (internal details to the log only), and a status.
    pub(super) fn of(e: &GatewayError) -> Self {
        let (code, message) = (e.code().as_str(), e.client_message(None));
        match e {
            GatewayError::BadRequest(_) | GatewayError::InvalidValue(_) => {
                Self::new(StatusCode::BAD_REQUEST, code, message)
            }
            GatewayError::UnknownTopic(_) => Self::new(StatusCode::NOT_FOUND, code, message),
            GatewayError::TooLarge => Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message),
            GatewayError::Unauthorized(_) => Self::new(StatusCode::UNAUTHORIZED, code, message),
            GatewayError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, code, message),
            GatewayError::Limit(_) | GatewayError::Overloaded(_) | GatewayError::RateLimited(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(1)
            }
            GatewayError::Unavailable(_)
            | GatewayError::Timeout
            | GatewayError::NoAnswer(_)
            | GatewayError::Internal(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
            }
        }
    }

    pub(super) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Where a request's token may come from besides `Authorization: Bearer`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TokenSources<'a> {
    /// The query parameter to read, when allowed.
    pub(super) query: Option<&'a str>,
    /// The cookie to read, when configured.
    pub(super) cookie: Option<&'a str>,
}

/// The caller: anonymous without authentication, else the verified token
/// from the header (or the allowed query parameter or cookie). 401 when it
/// is missing or refused.
pub(super) async fn principal(
    state: &Node,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    sources: TokenSources<'_>,
) -> Result<Principal, Refusal> {
    if state.auth.mode() == AuthMode::None {
        return Ok(Principal::anonymous());
    }
    let unauthorized = |m: String| Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let token = bearer(headers)
        .or_else(|| sources.query.and_then(|name| query.get(name)).map(String::as_str))
        .or_else(|| sources.cookie.and_then(|name| cookie(headers, name)));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(unauthorized("a token is required: Authorization: Bearer <jwt>".into()));
    };
    state.authenticate(token).await.map_err(|e| unauthorized(e.to_string()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Cross-origin access for browser pages: a request whose `Origin` passes
/// the same check as a WebSocket upgrade (`auth.allowed_origins`, the
/// gateway's own host, loopback pages in the unauthenticated loopback dev
/// setup) gets `Access-Control-Allow-Origin` for that origin (with
/// credentials, for the cookie). Others get no CORS headers, so the browser
/// hides the answer; the request itself was refused with 403 before any
/// work.
pub(super) fn allow_origin(state: &Node, headers: &HeaderMap, response: &mut Response) {
    let Some(origin) = headers.get(header::ORIGIN) else { return };
    if !super::ws::origin_allowed(state, headers) {
        return;
    }
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// 403 for a browser page whose origin may not use the gateway.
pub(super) fn check_origin(state: &Node, headers: &HeaderMap) -> Result<(), Refusal> {
    if super::ws::origin_allowed(state, headers) {
        return Ok(());
    }
    Err(Refusal::new(StatusCode::FORBIDDEN, "forbidden", "origin not allowed"))
}

/// `OPTIONS /v1/publish` and `OPTIONS /sse`: the CORS preflight of a
/// browser `fetch` that sends a token or JSON. Allowed origins get the
/// methods and headers the endpoints read; others get no CORS headers.
pub(super) async fn preflight(State(state): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(&state, &headers, &mut response);
    let out = response.headers_mut();
    if out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, content-encoding, last-event-id, accept",
            ),
        );
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600));
    }
    response
}
