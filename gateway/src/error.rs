//! The gateway's request errors and their one mapping to the wire.
//!
//! Every module returns [`GatewayError`]; only [`GatewayError::to_frame`]
//! decides what a client sees. Internal details are logged, never sent.

use ferry_protocol::{ErrorCode, RequestError, ServerFrame};

/// How long a client should wait before retrying after `unavailable`, or
/// after `limit` when the node itself is overloaded.
pub const RETRY_AFTER_MS: u64 = 1_000;

/// Why a request could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("Kafka is unavailable: {0}")]
    Unavailable(String),
    #[error("Kafka did not confirm the record in time; it may or may not be stored")]
    Timeout,
    /// A request (subscribe, or the topic look-up of a publish) that Kafka
    /// did not answer within `limits.request_timeout_ms`: nothing was done.
    #[error("Kafka did not answer within {0} ms; the request was not carried out")]
    NoAnswer(u64),
    #[error("the record is larger than Kafka accepts")]
    TooLarge,
    #[error("{0}")]
    Limit(String),
    /// The node is at a bound of its own (memory, Kafka consumers), not the
    /// client's: `limit` with `retry_after_ms`, and a retry soon succeeds.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("publishing faster than {0} per second; slow down")]
    RateLimited(u32),
    /// The value does not validate against its topic's JSON Schema (the
    /// message names the first violation), or is bytes on such a topic.
    #[error("{0}")]
    InvalidValue(String),
    /// Unexpected; the text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Timeout | Self::NoAnswer(_) => ErrorCode::Timeout,
            Self::TooLarge => ErrorCode::TooLarge,
            Self::Limit(_) | Self::Overloaded(_) => ErrorCode::Limit,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::RateLimited(_) => ErrorCode::RateLimited,
            Self::InvalidValue(_) => ErrorCode::InvalidValue,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What a client is told, on any wire: the error's text, except for an
    /// internal error, whose detail goes to the log only.
    pub fn client_message(&self, request: Option<&str>) -> String {
        match self {
            Self::Internal(detail) => {
                tracing::error!(request, %detail, "internal error answering a request");
                "internal error; see the gateway log".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// Whether a client should retry after [`RETRY_AFTER_MS`]: the node or
    /// Kafka is busy or away, not the request wrong.
    pub fn retry_soon(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Overloaded(_))
    }

    /// The `error` frame a client gets for this error about request `id`.
    pub fn to_frame(&self, id: Option<&str>) -> ServerFrame {
        ServerFrame::Error {
            id: id.map(str::to_owned),
            code: self.code(),
            message: self.client_message(id),
            retry_after_ms: self.retry_soon().then_some(RETRY_AFTER_MS),
        }
    }
}

/// A request error from the protocol decoder, as a frame.
pub fn request_error_frame(err: RequestError) -> ServerFrame {
    ServerFrame::Error { id: err.id, code: err.code, message: err.message, retry_after_ms: None }
}
