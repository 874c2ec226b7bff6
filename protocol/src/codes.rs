//! The two code spaces of the protocol.
//!
//! - [`ErrorCode`]: the `code` of an `error` frame. A request failed; the
//!   socket stays open and the client may go on.
//! - [`CloseCode`]: the WebSocket close code of a fatal condition. Codes are
//!   split in two ranges so a client knows without a table whether to come
//!   back: 4000–4499 (and 1001, 1011, 1012, 1013) mean "reconnect, with
//!   backoff"; 4500–4999 (and 1002, 1003, 1007, 1008, 1009) mean "do not
//!   reconnect until the client is fixed".

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
}

impl ErrorCode {
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
    /// A refresh token named another subject than the socket's. Terminal.
    pub const SUBJECT_CHANGED: CloseCode = CloseCode(4501);

    /// Whether a well-behaved client should reconnect after this code.
    pub fn may_reconnect(self) -> bool {
        matches!(self.0, 1001 | 1006 | 1011 | 1012 | 1013 | 4000..=4499)
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
            4501 => "subject_changed",
            _ => "closed",
        }
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
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::InvalidTopic,
            ErrorCode::UnknownTopic,
            ErrorCode::TooLarge,
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
            ErrorCode::Limit,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
