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
    decode_client_frame, AckMode, ClientFrame, Overflow, Payload, Publish, RequestError, StartFrom,
    Subscribe,
};
pub use codes::{CloseCode, ErrorCode};
pub use server::{Limits, MessageFrame, ServerFrame};

/// The protocol version carried in `welcome.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol the gateway selects when a client offers it.
pub const SUBPROTOCOL: &str = "ferry.v1";

/// Longest request `id` a client may choose, in characters.
pub const MAX_ID_CHARS: usize = 64;
