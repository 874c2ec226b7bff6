//! Every open connection of this node (WebSocket sessions and SSE
//! streams): who it is, what it reads, since when; and the one way to close
//! a connection from outside it, with a close code. The admin API lists
//! and closes connections through it, and a drain closes them all.
//!
//! Kept only with the admin API on (`admin.enabled`): otherwise nothing is
//! written here and a connection pays nothing for it. Not on the hot path:
//! a connection is written here when it opens, authenticates, subscribes,
//! unsubscribes and closes. One short std `Mutex` critical section each,
//! never held across an `.await`. A connection is closed from outside
//! through its [`Outlet`] ([`Outlet::close_with`]).

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_protocol::CloseCode;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::outlet::Outlet;

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
    name: u128,
    subject: Option<Box<str>>,
    /// The token's `iat` (unix s) and `jti`, for revocations.
    issued_at: Option<i64>,
    token_id: Option<Box<str>>,
    transport: Transport,
    since_ms: i64,
    topics: Vec<Box<str>>,
    outlet: Outlet,
}

/// This node's open connections, by session number.
#[derive(Debug)]
pub struct Registry {
    node: String,
    /// Off without the admin API: nothing is kept.
    enabled: bool,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Entry {
    fn matches(&self, target: &Target) -> bool {
        let subject = self.subject.as_deref();
        match target {
            Target::Subject(s) => subject == Some(s.as_str()),
            Target::Session(name) => {
                uuid::Uuid::parse_str(name).is_ok_and(|n| n.as_u128() == self.name)
            }
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

impl Registry {
    /// A registry of `node`'s connections; `enabled` with the admin API.
    pub fn new(node: String, enabled: bool) -> Self {
        Self { node, enabled, entries: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic elsewhere while holding it leaves a usable map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds connection `id`, closed through `outlet`; the connection calls
    /// [`Registry::remove`] when it ends (from its `Drop`, so that it
    /// holds nothing more for it). Nothing without the admin API.
    pub fn register(&self, id: u64, transport: Transport, outlet: &Outlet) {
        if !self.enabled {
            return;
        }
        let entry = Entry {
            name: uuid::Uuid::new_v4().as_u128(),
            subject: None,
            issued_at: None,
            token_id: None,
            transport,
            since_ms: now_ms(),
            topics: Vec::new(),
            outlet: outlet.clone(),
        };
        self.lock().insert(id, entry);
    }

    /// Connection `id` ended.
    pub fn remove(&self, id: u64) {
        if self.enabled {
            self.lock().remove(&id);
        }
    }

    /// The session id (a UUID) of connection `id` for its `welcome`: the
    /// registry's, or a fresh one without the admin API.
    pub fn session_name(&self, id: u64) -> String {
        let name = self.lock().get(&id).map(|e| e.name);
        uuid::Uuid::from_u128(name.unwrap_or_else(|| uuid::Uuid::new_v4().as_u128())).to_string()
    }

    /// Connection `id` authenticated (or refreshed its token) as `principal`.
    pub fn identify(&self, id: u64, principal: &Principal) {
        if !self.enabled {
            return;
        }
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.subject = Some(principal.subject.as_str().into());
            entry.issued_at = principal.claims.get("iat").and_then(serde_json::Value::as_i64);
            entry.token_id = principal.claims.get("jti").and_then(|v| v.as_str()).map(Into::into);
        }
    }

    /// Connection `id` now reads `topic`.
    pub fn subscribed(&self, id: u64, topic: &str) {
        if !self.enabled {
            return;
        }
        if let Some(entry) = self.lock().get_mut(&id) {
            if !entry.topics.iter().any(|t| &**t == topic) {
                entry.topics.push(topic.into());
            }
        }
    }

    /// Connection `id` no longer reads `topic`.
    pub fn unsubscribed(&self, id: u64, topic: &str) {
        if !self.enabled {
            return;
        }
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.topics.retain(|t| &**t != topic);
        }
    }

    /// Closes every connection `target` names with `code`; returns how many.
    pub fn close(&self, target: &Target, code: CloseCode) -> usize {
        let outlets: Vec<Outlet> = {
            let entries = self.lock();
            entries
                .values()
                .filter(|entry| entry.matches(target))
                .map(|entry| entry.outlet.clone())
                .collect()
        };
        for outlet in &outlets {
            outlet.close_with(code);
        }
        outlets.len()
    }

    /// Every connection of `subject` on this node.
    pub fn of_subject(&self, subject: &str) -> Vec<ConnectionInfo> {
        let entries = self.lock();
        let mut found: Vec<ConnectionInfo> = entries
            .iter()
            .filter(|(_, e)| e.subject.as_deref() == Some(subject))
            .map(|(_, e)| ConnectionInfo {
                node: self.node.clone(),
                session: uuid::Uuid::from_u128(e.name).to_string(),
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

    /// The outlets of every open connection (a drain closes them in turn).
    pub fn outlets(&self) -> Vec<Outlet> {
        self.lock().values().map(|e| e.outlet.clone()).collect()
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
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn principal(subject: &str, iat: i64, jti: &str) -> Principal {
        let claims = serde_json::json!({"iat": iat, "jti": jti});
        let claims = Claims::from(claims.as_object().unwrap().clone());
        Principal { subject: subject.into(), claims, expires_at: None }
    }

    #[test]
    fn targets_close_the_connections_they_name_and_no_other() {
        let registry = Arc::new(Registry::new("a".into(), true));
        // The drains stay: a dropped one stops its outlet.
        let (outlets, _drains): (Vec<Outlet>, Vec<_>) =
            (0..4).map(|_| Outlet::new(1, 1, CancellationToken::new())).unzip();
        for (i, outlet) in outlets.iter().enumerate() {
            registry.register(i as u64, Transport::Websocket, outlet);
        }
        registry.identify(0, &principal("alice", 100, "t0"));
        registry.identify(1, &principal("alice", 200, "t1"));
        registry.identify(2, &principal("bob", 100, "t2"));
        registry.subscribed(2, "news");

        let before = Target::IssuedBefore { subject: "alice".into(), before: 150 };
        assert_eq!(registry.close(&before, CloseCode::REVOKED), 1);
        assert_eq!(outlets[0].closing(), Some(CloseCode::REVOKED));
        assert!(outlets[0].stop().is_cancelled() && !outlets[1].stop().is_cancelled());

        assert_eq!(registry.close(&Target::TokenId("t2".into()), CloseCode::REVOKED), 1);
        let third = Target::Session(registry.session_name(3));
        assert_eq!(registry.close(&third, CloseCode::DISCONNECTED), 1);
        assert_eq!(
            outlets[3].closing(),
            Some(CloseCode::DISCONNECTED),
            "unauthenticated, by session"
        );
        assert_eq!(outlets[1].closing(), None, "alice's newer token is untouched");
        assert_eq!(registry.subscribers("news"), 1);
        assert_eq!(registry.of_subject("bob")[0].session, registry.session_name(2));
        assert_eq!(registry.counts(), (4, 1));
        (0..4).for_each(|id| registry.remove(id));
        assert!(registry.is_empty());
    }

    #[test]
    fn without_the_admin_api_nothing_is_kept() {
        let registry = Arc::new(Registry::new("a".into(), false));
        let (outlet, _drain) = Outlet::new(1, 1, CancellationToken::new());
        registry.register(1, Transport::Sse, &outlet);
        registry.identify(1, &principal("alice", 1, "t"));
        assert!(registry.is_empty());
        assert_ne!(registry.session_name(1), registry.session_name(1), "a fresh id each time");
    }
}
