//! The decisions every door takes the same way: may this caller read a
//! topic and through which filter, and may it open one more connection.
//! A door only translates the answer to its wire.

use std::sync::Arc;

use serde_json::Value;

use super::limits::SubjectGuard;
use super::Node;
use crate::acl::{Action, SubscribeGrantResult};
use crate::auth::{AuthMode, Principal};
use crate::error::GatewayError;
use crate::filter::Filter;
use crate::metrics;

impl Node {
    /// May `principal` (`None`: not authenticated yet) subscribe to
    /// `topic`? If so, the filter its records go through: the one `asked`
    /// (wire form) and the one the ACL imposes, both. A refusal is counted.
    pub fn subscription_filter(
        &self,
        principal: Option<&Principal>,
        topic: &str,
        asked: Option<&Value>,
    ) -> Result<Option<Arc<Filter>>, GatewayError> {
        let grant = match principal {
            Some(p) => self.policy.get().subscribe_grant(p, topic),
            None => SubscribeGrantResult::Denied,
        };
        let imposed = match grant {
            SubscribeGrantResult::Denied => {
                metrics::forbidden(Action::Subscribe.as_str());
                let m = format!("not allowed to subscribe to {topic:?}");
                return Err(GatewayError::Forbidden(m));
            }
            SubscribeGrantResult::Allowed { imposed } => imposed,
        };
        let asked = match asked {
            None => None,
            Some(wire) => Some(
                Filter::parse(wire)
                    .map_err(|e| GatewayError::BadRequest(format!("bad filter: {e}")))?,
            ),
        };
        Ok(match (asked, imposed) {
            (None, None) => None,
            (Some(f), None) | (None, Some(f)) => Some(Arc::new(f)),
            (Some(asked), Some(imposed)) => Some(Arc::new(asked.and(imposed))),
        })
    }

    /// Counts one more connection of `principal`'s subject, refused past
    /// `limits.max_connections_per_subject` (JWT mode only: without
    /// authentication every caller is the same anonymous subject).
    pub fn count_connection(
        &self,
        principal: &Principal,
    ) -> Result<Option<SubjectGuard>, GatewayError> {
        if self.auth.mode() == AuthMode::None {
            return Ok(None);
        }
        let max = self.config.limits.max_connections_per_subject;
        match self.subjects.acquire(&principal.subject, max) {
            Some(guard) => Ok(Some(guard)),
            None => Err(GatewayError::Limit(format!("subject already has {max} connections"))),
        }
    }
}
