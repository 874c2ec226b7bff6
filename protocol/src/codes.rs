//! The two code spaces of the protocol.
//!
//! - [`ErrorCode`]: the `code` of an `error` frame. A request failed; the
//!   socket stays open and the client may go on.
//! - [`CloseCode`]: the WebSocket close code of a fatal condition. Codes are
//!   split in two ranges so a client knows without a table whether to come
//!   back: 4000–4499 (and 1001, 1005, 1006, 1011, 1012, 1013, 1014) mean
//!   "reconnect, with backoff"; 4500–4999 (and 1000, 1002, 1003, 1007, 1008,
//!   1009) mean "do not reconnect until the client is fixed".
//! - [`UpgradeRefusal`]: the HTTP status of a refused WebSocket upgrade.
//!
//! `protocol/vectors/codes.json` states all three tables; the Rust and the
//! TypeScript tests check their code against it.

use serde::{Deserialize, Serialize};

/// Why a single request failed. Serialized in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown `type`, missing or misplaced fields.
    BadRequest,
    /// The topic name breaks Kafka's naming rules or is internal (`__*`).
    InvalidTopic,
    /// The topic does not exist and the gateway does not create topics.
    UnknownTopic,
    /// The record is larger than Kafka accepts.
    TooLarge,
    /// Kafka is unreachable or the producer queue is full; retry later.
    Unavailable,
    /// Delivery outcome unknown: Kafka did not confirm within
    /// `message.timeout.ms`. The record may or may not be stored.
    Timeout,
    /// A per-connection limit (subscriptions, in-flight publishes) is reached.
    Limit,
    /// The socket is not authenticated yet (send `auth` first), or the token
    /// in an `auth` frame was refused.
    Unauthorized,
    /// The ACL does not allow this principal this action on this topic.
    Forbidden,
    /// Publishing faster than the connection's rate limit; slow down.
    RateLimited,
    /// Something unexpected failed in the gateway; details are in its log.
    Internal,
    /// The record value does not validate against the JSON Schema the
    /// gateway holds for its topic (the message names the first violation),
    /// or is bytes (`value_b64`) on such a topic. Nothing was produced.
    InvalidValue,
}

impl ErrorCode {
    /// Every code of protocol v1.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadRequest,
        Self::InvalidTopic,
        Self::UnknownTopic,
        Self::TooLarge,
        Self::Unavailable,
        Self::Timeout,
        Self::Limit,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::Internal,
        Self::InvalidValue,
    ];

    /// The wire name, as in the `code` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidTopic => "invalid_topic",
            Self::UnknownTopic => "unknown_topic",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Limit => "limit",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::InvalidValue => "invalid_value",
        }
    }
}

/// A WebSocket close code used by the gateway, with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// The gateway is shutting down; reconnect (to another node).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// The client broke the WebSocket protocol (bad framing, etc.). Terminal.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// The client sent a binary frame; protocol v1 is JSON text only. Terminal.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// A text frame was not valid UTF-8. Terminal.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// A frame was larger than `limits.max_frame_bytes`. Terminal.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// An unexpected internal failure; reconnect with backoff.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// The gateway is restarting; reconnect with backoff.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// The socket's outbound queue passed its bound: the client did not read
    /// fast enough. Reconnect and resume.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4000);
    /// Nothing was heard from the client within the idle timeout. Reconnect.
    pub const IDLE_TIMEOUT: CloseCode = CloseCode(4001);
    /// The token expired and was not refreshed in-band. Reconnect with a
    /// fresh token.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4002);
    /// No valid `auth` frame within the auth timeout. Reconnect with a token.
    pub const AUTH_TIMEOUT: CloseCode = CloseCode(4003);
    /// The client kept publishing past its rate limit after `rate_limited`
    /// errors. Reconnect later, slower.
    pub const RATE_LIMITED: CloseCode = CloseCode(4004);
    /// The subject already has the most connections allowed per node.
    /// Reconnect later.
    pub const TOO_MANY_CONNECTIONS: CloseCode = CloseCode(4005);
    /// An operator disconnected this connection (admin API, by subject or
    /// by session). The client may reconnect; its token still holds.
    pub const DISCONNECTED: CloseCode = CloseCode(4006);
    /// A refresh token named another subject than the socket's. Terminal.
    pub const SUBJECT_CHANGED: CloseCode = CloseCode(4501);
    /// An operator revoked the connection's token (by subject or by token
    /// id): every node refuses it from now on. Terminal: stop and report;
    /// only a token issued after the revocation is accepted again.
    pub const REVOKED: CloseCode = CloseCode(4502);
    /// Sent by a *client*, never by the gateway: the client closed a socket
    /// it gave up on (no `welcome` or no `pong` in time) and will reconnect.
    pub const CLIENT_GAVE_UP: CloseCode = CloseCode(4100);

    /// Every close code the gateway sends.
    pub const SENT: &'static [CloseCode] = &[
        Self::GOING_AWAY,
        Self::PROTOCOL_ERROR,
        Self::UNSUPPORTED_DATA,
        Self::INVALID_PAYLOAD,
        Self::MESSAGE_TOO_BIG,
        Self::INTERNAL_ERROR,
        Self::SERVICE_RESTART,
        Self::SLOW_CONSUMER,
        Self::IDLE_TIMEOUT,
        Self::TOKEN_EXPIRED,
        Self::AUTH_TIMEOUT,
        Self::RATE_LIMITED,
        Self::TOO_MANY_CONNECTIONS,
        Self::DISCONNECTED,
        Self::SUBJECT_CHANGED,
        Self::REVOKED,
    ];

    /// Whether a well-behaved client should reconnect after this code.
    ///
    /// Besides the gateway's own codes this classifies codes a client sees
    /// from the network path: 1005 (closed without a status, e.g. by a
    /// proxy), 1006 (no close frame: the connection was lost), 1013 (try
    /// again later) and 1014 (bad gateway, from a proxy in front) are all
    /// transient. 1000 (a normal close the gateway never sends unasked)
    /// and 1008 (policy violation) are terminal.
    pub fn may_reconnect(self) -> bool {
        matches!(self.0, 1001 | 1005 | 1006 | 1011..=1014 | 4000..=4499)
    }

    /// A short machine-readable reason sent as the close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self.0 {
            1001 => "going_away",
            1002 => "protocol_error",
            1003 => "unsupported_data",
            1007 => "invalid_payload",
            1009 => "message_too_big",
            1011 => "internal_error",
            1012 => "service_restart",
            4000 => "slow_consumer",
            4001 => "idle_timeout",
            4002 => "token_expired",
            4003 => "auth_timeout",
            4004 => "rate_limited",
            4005 => "too_many_connections",
            4006 => "disconnected",
            4100 => "client_gave_up",
            4501 => "subject_changed",
            4502 => "revoked",
            _ => "closed",
        }
    }
}

/// Why the gateway refused a WebSocket upgrade, as an HTTP status (the
/// response body says it in words). Browsers hide the status from scripts
/// and report a close with 1006; other clients can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeRefusal {
    /// The request offered subprotocols and none of them is
    /// [`crate::SUBPROTOCOL`]. (Offering none at all is accepted.)
    UnsupportedSubprotocol,
    /// The token in the `Authorization` header (or `?token=`) was refused.
    Unauthorized,
    /// The `Origin` is not allowed.
    OriginForbidden,
    /// The subject already holds `max_connections_per_subject` connections.
    TooManyForSubject,
    /// The request's headers are more than the gateway reads (100 headers,
    /// or about 400 KiB). Answered by the HTTP layer before any check above.
    HeadersTooLarge,
    /// The node is at `limits.max_connections`, or shutting down.
    Unavailable,
}

impl UpgradeRefusal {
    /// Every refusal, in status order.
    pub const ALL: &'static [UpgradeRefusal] = &[
        Self::UnsupportedSubprotocol,
        Self::Unauthorized,
        Self::OriginForbidden,
        Self::TooManyForSubject,
        Self::HeadersTooLarge,
        Self::Unavailable,
    ];

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::UnsupportedSubprotocol => 400,
            Self::Unauthorized => 401,
            Self::OriginForbidden => 403,
            Self::TooManyForSubject => 429,
            Self::HeadersTooLarge => 431,
            Self::Unavailable => 503,
        }
    }

    /// Whether trying again later (with backoff; for 401 with a fresh
    /// token) can succeed without changing the client.
    pub fn may_retry(self) -> bool {
        matches!(self, Self::Unauthorized | Self::TooManyForSubject | Self::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_reconnect_from_terminal() {
        for c in [CloseCode::GOING_AWAY, CloseCode::SLOW_CONSUMER, CloseCode::IDLE_TIMEOUT] {
            assert!(c.may_reconnect(), "{c:?}");
        }
        for c in [
            CloseCode::PROTOCOL_ERROR,
            CloseCode::UNSUPPORTED_DATA,
            CloseCode::MESSAGE_TOO_BIG,
            CloseCode::SUBJECT_CHANGED,
        ] {
            assert!(!c.may_reconnect(), "{c:?}");
        }
    }

    #[test]
    fn error_code_wire_names_match_serde() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
