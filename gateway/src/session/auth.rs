//! Who the socket is: the welcome, first authentication and in-band
//! refresh, token expiry, and the ACL checks every command asks.

use std::time::Duration;

use ferry_protocol::{CloseCode, Limits, ServerFrame};
use tokio::time::Instant;

use super::{End, Session};
use crate::acl::{Action, SubscribeGrantResult};
use crate::auth::AuthMode;
use crate::error::GatewayError;
use crate::metrics;

impl Session {
    pub(super) fn expires_at(&self) -> Option<i64> {
        self.principal.as_ref().and_then(|p| p.expires_at)
    }

    /// When the socket's token runs out (plus leeway); far away without one.
    pub(super) fn expiry(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let Some(expires_at) = self.expires_at() else {
            return far;
        };
        let leeway_ms = self.context.auth_leeway().as_millis() as i64;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let left = (expires_at + leeway_ms - now_ms).max(0) as u64;
        Instant::now() + Duration::from_millis(left)
    }

    pub(super) async fn welcome(&mut self) -> Result<(), End> {
        let limits = &self.context.config.limits;
        let jwt = self.context.auth.mode() == AuthMode::Jwt;
        let principal = self.principal.as_ref();
        let welcome = ServerFrame::Welcome {
            protocol: ferry_protocol::PROTOCOL_VERSION,
            session: self.context.registry.session_name(self.id),
            node: self.context.node_id.clone(),
            limits: Limits {
                max_frame_bytes: limits.max_frame_bytes,
                max_inflight_publishes: limits.max_inflight_publishes,
                max_subscriptions: limits.max_subscriptions,
                publish_rate: Some(limits.publish_rate),
                publish_burst: Some(limits.publish_burst),
                max_connections_per_subject: jwt.then_some(limits.max_connections_per_subject),
            },
            subject: principal.filter(|_| jwt).map(|p| p.subject.clone()),
            expires_at: principal.and_then(|p| p.expires_at),
            capabilities: ferry_protocol::capabilities(),
        };
        self.send(welcome).await
    }

    /// First authentication or in-band refresh.
    pub(super) async fn authenticate(
        &mut self,
        id: Option<String>,
        token: &str,
    ) -> Result<(), End> {
        if self.context.auth.mode() == AuthMode::None {
            let err = GatewayError::BadRequest(
                "authentication is disabled (auth.mode = \"none\")".into(),
            );
            return self.send(err.to_frame(id.as_deref())).await;
        }
        let principal = match self.context.authenticate(token).await {
            Ok(principal) => principal,
            Err(e) => {
                let err = GatewayError::Unauthorized(e.to_string());
                return self.send(err.to_frame(id.as_deref())).await;
            }
        };
        self.context.registry.identify(self.id, &principal);
        match &self.principal {
            None => {
                let Ok(guard) = self.context.count_connection(&principal) else {
                    return Err(End::Close(CloseCode::TOO_MANY_CONNECTIONS));
                };
                self.subject_guard = guard;
                self.principal = Some(principal);
                self.welcome().await
            }
            Some(current) if current.subject == principal.subject => {
                let expires_at = principal.expires_at;
                self.principal = Some(principal);
                self.send(ServerFrame::Authed { id, expires_at }).await?;
                self.drop_forbidden_subscriptions().await
            }
            Some(_) => Err(End::Close(CloseCode::SUBJECT_CHANGED)),
        }
    }

    /// After a refresh: subscriptions the new claims no longer allow end.
    pub(super) async fn drop_forbidden_subscriptions(&mut self) -> Result<(), End> {
        let forbidden: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(topic, sub)| {
                !self.allowed(Action::Subscribe, topic)
                    || self.imposed_canonical(topic) != sub.imposed
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in forbidden {
            self.unsubscribe(&topic);
            let reason = Some("forbidden".to_owned());
            self.send(ServerFrame::Unsubscribed { id: None, topic, reason }).await?;
        }
        Ok(())
    }

    pub(super) fn subscribe_grant(&self, topic: &str) -> SubscribeGrantResult {
        let grant = match &self.principal {
            Some(p) => self.context.policy.get().subscribe_grant(p, topic),
            None => SubscribeGrantResult::Denied,
        };
        if grant == SubscribeGrantResult::Denied {
            metrics::forbidden(Action::Subscribe.as_str());
        }
        grant
    }

    /// The canonical form of the filter the ACL imposes on `topic` now.
    pub(super) fn imposed_canonical(&self, topic: &str) -> Option<String> {
        match self.subscribe_grant(topic) {
            SubscribeGrantResult::Allowed { imposed: Some(f) } => Some(f.canonical()),
            _ => None,
        }
    }

    pub(super) fn allowed(&self, action: Action, topic: &str) -> bool {
        let allowed =
            self.principal.as_ref().is_some_and(|p| self.context.policy.allows(p, action, topic));
        if !allowed {
            metrics::forbidden(action.as_str());
        }
        allowed
    }
}
