//! Every open connection of this node (WebSocket sessions and SSE
//! streams): who it is, what it reads, since when; and the one way to close
//! a connection from outside it, with a close code. The admin API lists
//! and closes connections through it, and a drain closes them all.
//!
//! Not on the hot path: a connection is written here when it opens,
//! authenticates, subscribes, unsubscribes and closes. One short std
//! `Mutex` critical section each, never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use ferry_protocol::CloseCode;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

/// Closes one connection from outside it: cancels the connection's stop
/// token and leaves the close code for it to read. The first code wins.
#[derive(Debug, Clone)]
pub struct Closer {
    stop: CancellationToken,
    code: Arc<AtomicU16>,
}

impl Closer {
    /// A closer over the connection's `stop` token (its outlet's).
    pub fn new(stop: CancellationToken) -> Self {
        Self { stop, code: Arc::new(AtomicU16::new(0)) }
    }

    /// Asks the connection to close with `code`.
    pub fn close(&self, code: CloseCode) {
        let _ = self.code.compare_exchange(0, code.0, Ordering::AcqRel, Ordering::Acquire);
        self.stop.cancel();
    }

    /// The code it was asked to close with, if it was.
    pub fn code(&self) -> Option<CloseCode> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(CloseCode(code)),
        }
    }
}

/// How a connection reaches the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Websocket,
    Sse,
}

/// One connection as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub node: String,
    /// The session id its `welcome` gave (a UUID).
    pub session: String,
    /// `None` until the socket authenticates.
    pub subject: Option<String>,
    pub transport: Transport,
    pub topics: Vec<String>,
    /// Unix milliseconds.
    pub connected_since_ms: i64,
}

/// Which connections an operator's request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of a subject.
    Subject(String),
    /// One connection, by the session id its `welcome` gave.
    Session(String),
    /// A subject's connections whose token was issued at or before `before`
    /// (unix seconds), or has no `iat`: a revocation by subject.
    IssuedBefore { subject: String, before: i64 },
    /// The connections holding the token with this `jti`.
    TokenId(String),
}

struct Entry {
    /// The session id (a UUID), as `welcome` tells the client.
    name: Box<str>,
    subject: Option<Box<str>>,
    /// The token's `iat` (unix s) and `jti`, for revocations.
    issued_at: Option<i64>,
    token_id: Option<Box<str>>,
    transport: Transport,
    since_ms: i64,
    topics: Vec<Box<str>>,
    closer: Closer,
}

/// This node's open connections, by session number.
#[derive(Debug)]
pub struct Registry {
    node: String,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Entry {
    fn matches(&self, target: &Target) -> bool {
        let subject = self.subject.as_deref();
        match target {
            Target::Subject(s) => subject == Some(s.as_str()),
            Target::Session(name) => *name == *self.name,
            Target::IssuedBefore { subject: s, before } => {
                subject == Some(s.as_str()) && self.issued_at.is_none_or(|iat| iat <= *before)
            }
            Target::TokenId(jti) => self.token_id.as_deref() == Some(jti.as_str()),
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("transport", &self.transport).finish_non_exhaustive()
    }
}

/// Takes a connection off the registry when dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
    name: Box<str>,
}

impl Registered {
    /// The connection's session id (a UUID), for its `welcome`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    pub fn new(node: String) -> Self {
        Self { node, entries: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic elsewhere while holding it leaves a usable map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds connection `id`; it leaves when the returned guard is dropped.
    pub fn register(self: &Arc<Self>, id: u64, transport: Transport, closer: Closer) -> Registered {
        let name: Box<str> = uuid::Uuid::new_v4().to_string().into();
        let entry = Entry {
            name: name.clone(),
            subject: None,
            issued_at: None,
            token_id: None,
            transport,
            since_ms: now_ms(),
            topics: Vec::new(),
            closer,
        };
        self.lock().insert(id, entry);
        Registered { registry: self.clone(), id, name }
    }

    /// Connection `id` authenticated (or refreshed its token) as `principal`.
    pub fn identify(&self, id: u64, principal: &Principal) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.subject = Some(principal.subject.as_str().into());
            entry.issued_at = principal.claims.get("iat").and_then(serde_json::Value::as_i64);
            entry.token_id = principal.claims.get("jti").and_then(|v| v.as_str()).map(Into::into);
        }
    }

    /// Connection `id` now reads `topic`.
    pub fn subscribed(&self, id: u64, topic: &str) {
        if let Some(entry) = self.lock().get_mut(&id) {
            if !entry.topics.iter().any(|t| &**t == topic) {
                entry.topics.push(topic.into());
            }
        }
    }

    /// Connection `id` no longer reads `topic`.
    pub fn unsubscribed(&self, id: u64, topic: &str) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.topics.retain(|t| &**t != topic);
        }
    }

    /// Closes every connection `target` names with `code`; returns how many.
    pub fn close(&self, target: &Target, code: CloseCode) -> usize {
        let closers: Vec<Closer> = {
            let entries = self.lock();
            entries
                .iter()
                .filter(|(_, entry)| entry.matches(target))
                .map(|(_, entry)| entry.closer.clone())
                .collect()
        };
        for closer in &closers {
            closer.close(code);
        }
        closers.len()
    }

    /// Every connection of `subject` on this node.
    pub fn of_subject(&self, subject: &str) -> Vec<ConnectionInfo> {
        let entries = self.lock();
        let mut found: Vec<ConnectionInfo> = entries
            .iter()
            .filter(|(_, e)| e.subject.as_deref() == Some(subject))
            .map(|(_, e)| ConnectionInfo {
                node: self.node.clone(),
                session: e.name.to_string(),
                subject: e.subject.as_deref().map(str::to_owned),
                transport: e.transport,
                topics: e.topics.iter().map(|t| t.to_string()).collect(),
                connected_since_ms: e.since_ms,
            })
            .collect();
        found.sort_by(|a, b| a.session.cmp(&b.session));
        found
    }

    /// How many connections read `topic` on this node.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().values().filter(|e| e.topics.iter().any(|t| &**t == topic)).count()
    }

    /// Open connections and subscriptions on this node.
    pub fn counts(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.len(), entries.values().map(|e| e.topics.len()).sum())
    }

    /// The closers of every open connection (a drain closes them in turn).
    pub fn closers(&self) -> Vec<Closer> {
        self.lock().values().map(|e| e.closer.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;

    fn principal(subject: &str, iat: i64, jti: &str) -> Principal {
        let claims = serde_json::json!({"iat": iat, "jti": jti});
        let claims = Claims::from(claims.as_object().unwrap().clone());
        Principal { subject: subject.into(), claims, expires_at: None }
    }

    #[test]
    fn targets_close_the_connections_they_name_and_no_other() {
        let registry = Arc::new(Registry::new("a".into()));
        let stops: Vec<CancellationToken> = (0..4).map(|_| CancellationToken::new()).collect();
        let closers: Vec<Closer> = stops.iter().map(|s| Closer::new(s.clone())).collect();
        let _held: Vec<Registered> = closers
            .iter()
            .enumerate()
            .map(|(i, c)| registry.register(i as u64, Transport::Websocket, c.clone()))
            .collect();
        registry.identify(0, &principal("alice", 100, "t0"));
        registry.identify(1, &principal("alice", 200, "t1"));
        registry.identify(2, &principal("bob", 100, "t2"));
        registry.subscribed(2, "news");

        let before = Target::IssuedBefore { subject: "alice".into(), before: 150 };
        assert_eq!(registry.close(&before, CloseCode::REVOKED), 1);
        assert_eq!(closers[0].code(), Some(CloseCode::REVOKED));
        assert!(stops[0].is_cancelled() && !stops[1].is_cancelled());

        assert_eq!(registry.close(&Target::TokenId("t2".into()), CloseCode::REVOKED), 1);
        let third = Target::Session(_held[3].name().to_owned());
        assert_eq!(registry.close(&third, CloseCode::DISCONNECTED), 1);
        assert!(closers[3].code() == Some(CloseCode::DISCONNECTED), "unauthenticated, by session");
        assert_eq!(closers[1].code(), None, "alice's newer token is untouched");
        assert_eq!(registry.subscribers("news"), 1);
        assert_eq!(registry.of_subject("bob")[0].session, _held[2].name());
        assert_eq!(registry.counts(), (4, 1));
        drop(_held);
        assert!(registry.is_empty(), "dropping the guards takes connections off");
    }
}
