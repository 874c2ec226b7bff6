//! Ferry wire protocol, version 1.
//!
//! Everything a client and the gateway say to each other, and nothing else: no
//! I/O, no Kafka. The gateway, the integration tests and (through the JSON
//! vectors in `protocol/vectors/`) the TypeScript client all agree on it.
//!
//! - [`client`]: frames a client sends, decoded and validated in one step.
//! - [`server`]: frames the gateway sends, including the fan-out `message`
//!   frame that is serialized once per record.
//! - [`codes`]: request error codes (the `error` frame) and WebSocket close
//!   codes (fatal conditions), each with its documented meaning.
//! - [`topic`]: Kafka topic-name rules, checked before any Kafka call.
//!
//! The human-readable contract is `protocol/README.md`.

pub mod client;
pub mod codes;
pub mod server;
pub mod topic;

pub use client::{
    check_traceparent, decode_client_frame, AckMode, ClientFrame, Overflow, Payload, Publish,
    RequestError, StartFrom, Subscribe, MAX_THROTTLE_MS, TRACEPARENT,
};
pub use codes::{CloseCode, ErrorCode, UpgradeRefusal};
pub use server::{AckFrame, Limits, MessageFrame, ServerFrame};

/// The protocol version carried in `welcome.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol the gateway selects when a client offers it.
pub const SUBPROTOCOL: &str = "ferry.v1";

/// What this build of protocol v1 can do beyond the first v1 release, as
/// announced in `welcome.capabilities`. A client sends a field or frame that
/// belongs to a capability only when the gateway announced it (a gateway
/// refuses fields it does not know with `bad_request`). A `welcome` without
/// `capabilities` comes from a gateway older than the list; it has the
/// first six (all but `traceparent`). New names are only ever added; see the compatibility policy in
/// `protocol/README.md`.
///
/// - `from`: `subscribe.from` (replay, resume from offsets or a timestamp), `gap`.
/// - `filter`: `subscribe.filter`.
/// - `overflow`: `subscribe.overflow` (`drop_oldest`, `conflate`), `lagged`.
/// - `group`: `subscribe.group` and `subscribe.ack` (shared groups).
/// - `commit`: the `commit` frame and its `committed` reply.
/// - `auth`: the `auth` frame (first authentication and in-band refresh), `authed`.
/// - `traceparent`: `publish.traceparent` (W3C trace context, carried to Kafka).
/// - `snapshot`: `subscribe.from: "snapshot"`, `message.snapshot`, `snapshot_end`.
/// - `throttle`: `subscribe.throttle_ms` (at most one record per key per window).
pub const CAPABILITIES: &[&str] = &[
    "auth",
    "commit",
    "filter",
    "from",
    "group",
    "overflow",
    "snapshot",
    "throttle",
    "traceparent",
];

/// [`CAPABILITIES`] as owned strings, for `welcome.capabilities`.
pub fn capabilities() -> Vec<String> {
    CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
}

/// Longest request `id` a client may choose, in characters.
pub const MAX_ID_CHARS: usize = 64;
