//! The admin API, on its own listener (`admin.listen`), never on the public
//! port. Every request carries the admin bearer token (`admin.token` or
//! `admin.token_file`); without it the answer is 401. Every action is
//! logged (target `ferry::admin`, with the caller's address) and counted
//! (`ferry_admin_requests_total`).
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/v1/nodes` | every live node, from the control topic's heartbeats |
//! | `GET /admin/v1/connections?subject=S` | the subject's connections on every node |
//! | `POST /admin/v1/disconnect` | `{"subject":S}` or `{"session":ID}`: close with 4006 wherever they are |
//! | `POST /admin/v1/revoke` | `{"subject":S}` or `{"jti":J}`, optional `"until"`: refuse, close with 4502 |
//! | `POST /admin/v1/drain` | `{"seconds":N}`: this node drains and then exits |
//! | `GET /admin/v1/topics/{topic}/subscribers` | subscriber counts per node |
//!
//! What concerns the fleet goes through the control topic ([`crate::control`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Secret;
use crate::control::{Answers, Ask, Control};
use crate::metrics;
use crate::node::registry::now_ms;

/// The longest drain one request may ask for.
const MAX_DRAIN_SECS: u64 = 3_600;

/// The admin routes over `control`, behind `token`.
pub fn router(control: Arc<Control>, token: Secret) -> Router {
    let token = Arc::new(token);
    Router::new()
        .route("/admin/v1/nodes", get(nodes))
        .route("/admin/v1/connections", get(connections))
        .route("/admin/v1/disconnect", post(disconnect))
        .route("/admin/v1/revoke", post(revoke))
        .route("/admin/v1/drain", post(drain))
        .route("/admin/v1/topics/{topic}/subscribers", get(subscribers))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let token = token.clone();
            async move { authorize(&token, request, next).await }
        }))
        .with_state(control)
}

/// Serves the admin API on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, service)
        .with_graceful_shutdown(async move { stop.cancelled().await });
    if let Err(e) = served.await {
        tracing::error!("admin API stopped: {e}");
    }
}

/// 401 unless the request carries the admin token.
async fn authorize(token: &Secret, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if given.is_some_and(|given| same(given.as_bytes(), token.0.as_bytes())) {
        return next.run(request).await;
    }
    let caller = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    tracing::warn!(
        target: "ferry::admin",
        caller = ?caller,
        path = %request.uri().path(),
        "admin request refused: no or a wrong admin token"
    );
    metrics::admin_request("refused", 401);
    let mut response =
        error(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is required".into());
    response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
    response
}

/// Compares in time that does not depend on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

/// Answers, counting and logging the action.
fn done(action: &'static str, caller: SocketAddr, response: Response) -> Response {
    let status = response.status().as_u16();
    metrics::admin_request(action, status);
    tracing::info!(target: "ferry::admin", action, %caller, status, "admin request");
    response
}

/// The fleet's answers, or 503 when the control topic did not take the
/// request.
fn answered(result: Result<Answers, String>, body: impl FnOnce(&Answers) -> Value) -> Response {
    match result {
        Ok(answers) => {
            let mut value = body(&answers);
            value["missing"] = json!(answers.missing);
            Json(value).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

/// A JSON body with exactly the fields of `T`; else the 400 to answer.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(bad_request(format!("the body: {e}"))))
}

async fn nodes(
    State(control): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
) -> Response {
    let nodes = control.live_nodes();
    done("nodes", caller, Json(json!({ "nodes": nodes })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectQuery {
    subject: String,
}

async fn connections(
    State(control): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    query: Result<Query<SubjectQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(SubjectQuery { subject })) = query else {
        return done("connections", caller, bad_request("give ?subject=S"));
    };
    let result = control.ask(Ask::Connections { subject }).await;
    let response = answered(result, |a| {
        let all: Vec<_> = a.answers.iter().flat_map(|a| a.connections.iter().flatten()).collect();
        json!({ "connections": all })
    });
    done("connections", caller, response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    subject: Option<String>,
    session: Option<String>,
}

async fn disconnect(
    State(control): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let ask = match parse::<DisconnectBody>(&body) {
        Err(response) => return done("disconnect", caller, *response),
        Ok(DisconnectBody { subject: Some(subject), session: None }) if !subject.is_empty() => {
            Ask::DisconnectSubject { subject }
        }
        Ok(DisconnectBody { subject: None, session: Some(session) }) if !session.is_empty() => {
            Ask::DisconnectSession { session }
        }
        Ok(_) => {
            let response = bad_request("give exactly one of \"subject\" and \"session\"");
            return done("disconnect", caller, response);
        }
    };
    tracing::info!(target: "ferry::admin", %caller, ?ask, "disconnect asked");
    let response = answered(control.ask(ask).await, closed);
    done("disconnect", caller, response)
}

/// `{"closed": total, "nodes": {node: closed}}`.
fn closed(answers: &Answers) -> Value {
    let per_node: serde_json::Map<String, Value> =
        answers.answers.iter().map(|a| (a.node.clone(), json!(a.closed.unwrap_or(0)))).collect();
    let total: usize = answers.answers.iter().filter_map(|a| a.closed).sum();
    json!({ "closed": total, "nodes": per_node })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    subject: Option<String>,
    jti: Option<String>,
    /// Unix seconds.
    until: Option<i64>,
}

async fn revoke(
    State(control): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let body = match parse::<RevokeBody>(&body) {
        Ok(body) => body,
        Err(response) => return done("revoke", caller, *response),
    };
    let now = now_ms() / 1000;
    let default_secs = control.node().config.admin.revoke_secs as i64;
    let until = body.until.unwrap_or(now + default_secs);
    if until <= now {
        return done("revoke", caller, bad_request("\"until\" is in the past"));
    }
    let ask = match (body.subject, body.jti) {
        (Some(subject), None) if !subject.is_empty() => {
            Ask::RevokeSubject { subject, before: now, until }
        }
        (None, Some(jti)) if !jti.is_empty() => Ask::RevokeToken { jti, until },
        _ => {
            return done(
                "revoke",
                caller,
                bad_request("give exactly one of \"subject\" and \"jti\""),
            )
        }
    };
    tracing::warn!(target: "ferry::admin", %caller, ?ask, "revocation asked");
    let response = answered(control.ask(ask).await, |a| {
        let mut value = closed(a);
        value["until"] = json!(until);
        value
    });
    done("revoke", caller, response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    seconds: u64,
}

async fn drain(
    State(control): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let seconds = match parse::<DrainBody>(&body) {
        Ok(DrainBody { seconds }) if seconds <= MAX_DRAIN_SECS => seconds,
        Ok(_) => {
            let response = bad_request(format!("\"seconds\" is at most {MAX_DRAIN_SECS}"));
            return done("drain", caller, response);
        }
        Err(response) => return done("drain", caller, *response),
    };
    let response = match control.node().drain(Duration::from_secs(seconds)) {
        Some(connections) => (
            StatusCode::ACCEPTED,
            Json(json!({ "draining": true, "seconds": seconds, "connections": connections })),
        )
            .into_response(),
        None => error(StatusCode::CONFLICT, "conflict", "the node is already draining".into()),
    };
    done("drain", caller, response)
}

async fn subscribers(
    State(control): State<Arc<Control>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
) -> Response {
    let result = control.ask(Ask::Subscribers { topic: topic.clone() }).await;
    let response = answered(result, |a| {
        let per_node: serde_json::Map<String, Value> =
            a.answers.iter().map(|a| (a.node.clone(), json!(a.subscribers.unwrap_or(0)))).collect();
        let total: usize = a.answers.iter().filter_map(|a| a.subscribers).sum();
        json!({ "topic": topic, "total": total, "nodes": per_node })
    });
    done("subscribers", caller, response)
}
