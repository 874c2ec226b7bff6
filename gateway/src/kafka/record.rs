//! A Kafka record as Ferry sends it: its `message` frame, encoded once per
//! record; the bytes are then shared by every socket that gets it. The live
//! fan-out, the shared catch-up and the groups all encode here.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::MessageFrame;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::recent::Record;

/// A record's headers as `(name, value)` pairs, borrowed.
pub fn record_headers<'a>(record: &'a BorrowedMessage<'_>) -> Vec<(&'a str, Option<&'a [u8]>)> {
    record.headers().map(|hs| hs.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default()
}

/// Turns a Kafka record into its `message` frame, once; the bytes are then
/// shared by every socket that gets the record.
pub fn encode_record(record: &BorrowedMessage<'_>, headers: &[(&str, Option<&[u8]>)]) -> Utf8Bytes {
    let frame = MessageFrame {
        topic: record.topic(),
        partition: record.partition(),
        offset: record.offset(),
        timestamp: record.timestamp().to_millis(),
        key: record.key(),
        headers,
        value: record.payload(),
    };
    Utf8Bytes::from(frame.encode())
}

/// A record as the live path and the catch-up keep it: its frame, encoded
/// once, and what filters look at.
pub fn recent_record(record: &BorrowedMessage<'_>) -> Arc<Record> {
    let headers = record_headers(record);
    let frame = encode_record(record, &headers);
    Arc::new(Record::new(
        record.partition(),
        record.offset(),
        record.timestamp().to_millis(),
        frame,
        record.key(),
        &headers,
        record.payload(),
    ))
}
