//! Revoked tokens, as the control topic says: a subject's tokens issued at
//! or before a moment, or one token by its `jti`, each until a time. Every
//! door's authentication asks here after the signature checks out (see
//! [`crate::node::Node::authenticate`]).
//!
//! Whether the list is complete is part of it: a node that has not yet
//! read the control topic to its end, or cannot read it, does not know
//! every revocation, and says so (`/readyz` is 503, new connections are
//! refused with 503) rather than let a revoked token in.

use std::collections::HashMap;
use std::sync::RwLock;

use serde_json::Value;

use crate::auth::Principal;

/// Whether the node knows every revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No control topic (the admin API is off): nothing is revoked.
    Off,
    /// Reading the control topic up to where it was when the node started.
    Loading,
    /// Read to its end, and following it.
    Current,
    /// The control topic cannot be read: why.
    Failed(String),
}

#[derive(Debug, Default)]
struct Lists {
    /// Subject → (tokens issued at or before this unix second are revoked,
    /// until this unix second).
    subjects: HashMap<String, (i64, i64)>,
    /// `jti` → until this unix second.
    tokens: HashMap<String, i64>,
}

/// The revocations this node knows, and whether it knows them all.
#[derive(Debug)]
pub struct Revocations {
    lists: RwLock<Lists>,
    loaded: RwLock<Loaded>,
}

impl Revocations {
    /// With the control topic on, the list starts `Loading`.
    pub fn new(control: bool) -> Self {
        let loaded = if control { Loaded::Loading } else { Loaded::Off };
        Self { lists: RwLock::default(), loaded: RwLock::new(loaded) }
    }

    pub fn loaded(&self) -> Loaded {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_loaded(&self, loaded: Loaded) {
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
    }

    /// Revokes `subject`'s tokens issued at or before `before`, until `until`
    /// (unix seconds). A later revocation of the same subject replaces it.
    pub fn revoke_subject(&self, subject: &str, before: i64, until: i64) {
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        let entry = lists.subjects.entry(subject.to_owned()).or_insert((before, until));
        *entry = (entry.0.max(before), entry.1.max(until));
    }

    /// Revokes the token `jti` until `until` (unix seconds).
    pub fn revoke_token(&self, jti: &str, until: i64) {
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        let entry = lists.tokens.entry(jti.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whether `principal`'s token is revoked at `now` (unix seconds). A
    /// token without `iat` of a revoked subject counts as issued before.
    pub fn is_revoked(&self, principal: &Principal, now: i64) -> bool {
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        if lists.subjects.is_empty() && lists.tokens.is_empty() {
            return false;
        }
        if let Some((before, until)) = lists.subjects.get(&principal.subject) {
            let issued = principal.claims.get("iat").and_then(Value::as_i64);
            if now < *until && issued.is_none_or(|iat| iat <= *before) {
                return true;
            }
        }
        let jti = principal.claims.get("jti").and_then(Value::as_str);
        jti.and_then(|jti| lists.tokens.get(jti)).is_some_and(|until| now < *until)
    }

    /// Drops the revocations whose time is over.
    pub fn expire(&self, now: i64) {
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        lists.subjects.retain(|_, (_, until)| now < *until);
        lists.tokens.retain(|_, until| now < *until);
    }

    /// Revocations in force: (subjects, tokens).
    pub fn counts(&self) -> (usize, usize) {
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        (lists.subjects.len(), lists.tokens.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;

    fn principal(subject: &str, claims: Value) -> Principal {
        let claims = Claims::from(claims.as_object().unwrap().clone());
        Principal { subject: subject.into(), claims, expires_at: None }
    }

    #[test]
    fn a_subject_revocation_refuses_older_tokens_until_its_time() {
        let r = Revocations::new(true);
        r.revoke_subject("alice", 1_000, 2_000);
        let old = principal("alice", serde_json::json!({"iat": 900}));
        let same_second = principal("alice", serde_json::json!({"iat": 1_000}));
        let newer = principal("alice", serde_json::json!({"iat": 1_001}));
        let no_iat = principal("alice", serde_json::json!({}));
        let bob = principal("bob", serde_json::json!({"iat": 900}));
        assert!(r.is_revoked(&old, 1_500));
        assert!(r.is_revoked(&same_second, 1_500));
        assert!(r.is_revoked(&no_iat, 1_500));
        assert!(!r.is_revoked(&newer, 1_500), "a token issued later is accepted");
        assert!(!r.is_revoked(&bob, 1_500), "another subject is unaffected");
        assert!(!r.is_revoked(&old, 2_000), "the revocation ends at its until");
        r.expire(2_000);
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn a_token_revocation_refuses_that_token_only() {
        let r = Revocations::new(true);
        r.revoke_token("t-1", 2_000);
        assert!(r.is_revoked(&principal("x", serde_json::json!({"jti": "t-1"})), 1_000));
        assert!(!r.is_revoked(&principal("x", serde_json::json!({"jti": "t-2"})), 1_000));
    }
}
