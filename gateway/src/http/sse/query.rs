//! The `/sse` query, the SSE door's wire format for a subscription:
//! parsed, then each topic checked as a socket `subscribe` frame would be
//! (the same decoder) and by the node's subscribe ACL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::http::StatusCode;
use ferry_protocol::{decode_client_frame, ClientFrame, StartFrom};
use serde_json::{json, Value};

use super::super::caller::Refusal;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::filter::Filter;
use crate::node::Node;

/// The query parameters `/sse` knows.
const PARAMS: &[&str] = &["topic", "from", "filter", "throttle_ms", "access_token", "resume"];

/// A refusal and its `ferry_sse_rejected_total` reason.
pub(super) type Refused = (&'static str, Refusal);

pub(super) fn bad(message: impl Into<String>) -> Refused {
    ("bad_request", Refusal::bad_request(message))
}

/// What the query asks for.
#[derive(Debug, Default)]
pub(super) struct Request {
    pub(super) topics: Vec<String>,
    pub(super) from: Option<String>,
    pub(super) filter: Option<String>,
    pub(super) throttle_ms: Option<String>,
    pub(super) resume: Option<String>,
    pub(super) query: HashMap<String, String>,
}

pub(super) fn parse_query(query: &str) -> Result<Request, Refused> {
    let mut request = Request::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let once = |slot: &mut Option<String>| {
            if slot.is_some() {
                return Err(bad(format!("`{name}` given twice")));
            }
            *slot = Some(value.to_string());
            Ok(())
        };
        match name.as_ref() {
            "topic" => request.topics.push(value.to_string()),
            "from" => once(&mut request.from)?,
            "filter" => once(&mut request.filter)?,
            "throttle_ms" => once(&mut request.throttle_ms)?,
            "resume" => once(&mut request.resume)?,
            "access_token" => {
                request.query.insert(name.to_string(), value.to_string());
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter `{other}`; /sse takes {}",
                    PARAMS.join(", ")
                )))
            }
        }
    }
    if request.topics.is_empty() {
        return Err(bad("name at least one `topic`"));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = request.topics.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(bad(format!("topic {dup:?} named twice")));
    }
    Ok(request)
}

/// One topic's subscription, checked.
pub(super) struct Wanted {
    pub(super) topic: String,
    pub(super) from: StartFrom,
    pub(super) filter: Option<Arc<Filter>>,
    pub(super) throttle: Option<std::time::Duration>,
}

/// Checks each topic as a socket `subscribe` frame would be, and the ACL.
pub(super) fn check_topics(
    state: &Node,
    principal: &Principal,
    request: &Request,
) -> Result<Vec<Wanted>, Refused> {
    let max = state.config.limits.max_subscriptions;
    if request.topics.len() > max {
        let m = format!("{} topics; at most {max} per stream", request.topics.len());
        return Err(("limit", Refusal::new(StatusCode::TOO_MANY_REQUESTS, "limit", m)));
    }
    let from = match request.from.as_deref() {
        None => Value::String("latest".into()),
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
    };
    let filter = match request.filter.as_deref() {
        None => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| bad(format!("`filter` must be JSON, as in a subscribe frame: {e}")))?,
    };
    let throttle_ms = match request.throttle_ms.as_deref() {
        None => Value::Null,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) => json!(ms),
            Err(_) => return Err(bad("`throttle_ms` must be a number of milliseconds")),
        },
    };
    let mut wanted = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut frame = json!({"type": "subscribe", "id": "sse", "topic": topic, "from": from});
        if !filter.is_null() {
            frame["filter"] = filter.clone();
        }
        if !throttle_ms.is_null() {
            frame["throttle_ms"] = throttle_ms.clone();
        }
        let subscribe = match decode_client_frame(&frame.to_string()) {
            Ok(ClientFrame::Subscribe(s)) => s,
            Ok(_) => return Err(bad("not a subscription")),
            Err(e) => return Err(bad(e.message)),
        };
        let filter = state
            .subscription_filter(Some(principal), topic, subscribe.filter.as_ref())
            .map_err(|e| refusal_of(&e))?;
        let throttle = state.subscription_throttle(Some(principal), subscribe.throttle_ms, false);
        wanted.push(Wanted { topic: subscribe.topic, from: subscribe.from, filter, throttle });
    }
    Ok(wanted)
}

/// A request error as the SSE door answers it, with the reason label of
/// `ferry_sse_rejected_total`.
pub(super) fn refusal_of(e: &GatewayError) -> Refused {
    let refusal = Refusal::of(e);
    let reason = match refusal.status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => {
            "bad_request"
        }
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::TOO_MANY_REQUESTS => "limit",
        StatusCode::FORBIDDEN => "forbidden",
        _ => "unavailable",
    };
    (reason, refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_topics_once_and_refuses_unknown_parameters() {
        let r = parse_query("topic=a&topic=b%2Ec&from=earliest&access_token=x").unwrap();
        assert_eq!(r.topics, ["a", "b.c"]);
        assert_eq!(r.from.as_deref(), Some("earliest"));
        assert_eq!(r.query.get("access_token").map(String::as_str), Some("x"));
        let msg = |q: &str| parse_query(q).unwrap_err().1.message;
        assert!(msg("").contains("at least one"));
        assert!(msg("topic=a&topic=a").contains("twice"));
        assert!(msg("topic=a&from=latest&from=earliest").contains("twice"));
        assert!(msg("topic=a&token=x").contains("unknown query parameter `token`"));
    }
}
