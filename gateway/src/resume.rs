//! The SSE resume token: where a stream stands in every partition of every
//! topic it reads, carried as the `id:` of each event so that a browser's
//! `EventSource` sends it back as `Last-Event-ID` when it reconnects.
//!
//! Clients treat the token as opaque. Today it is base64url (no padding) of
//! the compact JSON `{"v":1,"p":{"TOPIC":{"PARTITION":NEXT_OFFSET,...},...}}`:
//! for each partition, the offset of the next record to deliver. It holds no
//! node state, so any node resumes it: the stream reads each topic from these
//! offsets (a replay), with no gap and no duplicate.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Longest token accepted (a token grows with the partitions it covers).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Topic → partition → next offset to deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    #[serde(rename = "v")]
    version: u32,
    #[serde(rename = "p")]
    topics: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("resume token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("resume token is not base64url")]
    NotBase64,
    #[error("resume token is malformed: {0}")]
    Malformed(String),
    #[error("resume token version {0} is not supported")]
    Version(u32),
}

impl Positions {
    pub fn new() -> Self {
        Self { version: 1, topics: BTreeMap::new() }
    }

    /// The topics in this token.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Where `topic` starts in this token, if it is in it.
    pub fn topic(&self, topic: &str) -> Option<&BTreeMap<i32, i64>> {
        self.topics.get(topic)
    }

    /// Sets the start of each partition of `topic` (a subscription opened).
    pub fn start(&mut self, topic: &str, starts: &BTreeMap<i32, i64>) {
        self.topics.insert(topic.to_owned(), starts.clone());
    }

    /// Notes that the record at `offset` was delivered.
    pub fn delivered(&mut self, topic: &str, partition: i32, offset: i64) {
        let next = offset.saturating_add(1);
        let partitions = match self.topics.get_mut(topic) {
            Some(p) => p,
            None => self.topics.entry(topic.to_owned()).or_default(),
        };
        let at = partitions.entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    /// The token text.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("positions serialize");
        URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let json = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::NotBase64)?;
        let positions: Self =
            serde_json::from_slice(&json).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if positions.version != 1 {
            return Err(TokenError::Version(positions.version));
        }
        let bad = positions.topics.values().flatten().find(|(p, o)| **p < 0 || **o < 0);
        if let Some((p, o)) = bad {
            return Err(TokenError::Malformed(format!("partition {p} at offset {o}")));
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_delivered_moves_forward_only() {
        let mut p = Positions::new();
        p.start("a", &BTreeMap::from([(0, 5), (1, 7)]));
        p.delivered("a", 0, 5);
        p.delivered("a", 0, 3);
        p.delivered("b", 2, 10);
        let back = Positions::decode(&p.encode()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.topic("a"), Some(&BTreeMap::from([(0, 6), (1, 7)])));
        assert_eq!(back.topic("b"), Some(&BTreeMap::from([(2, 11)])));
        assert!(!p.encode().contains(['+', '/', '=']), "base64url without padding");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        assert_eq!(Positions::decode("***"), Err(TokenError::NotBase64));
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        assert!(matches!(Positions::decode(&enc("{}")), Err(TokenError::Malformed(_))));
        assert_eq!(Positions::decode(&enc(r#"{"v":2,"p":{}}"#)), Err(TokenError::Version(2)));
        let negative = enc(r#"{"v":1,"p":{"a":{"0":-1}}}"#);
        assert!(matches!(Positions::decode(&negative), Err(TokenError::Malformed(_))));
        assert_eq!(Positions::decode(&"a".repeat(MAX_TOKEN_BYTES + 1)), Err(TokenError::TooLong));
    }
}
