//! Per-topic authorization: a deny-by-default policy of claim-matched rules
//! granting topic patterns.
//!
//! A rule matches a principal when every `match` entry holds (the claim
//! equals the value, or is an array containing it) and grants `publish`,
//! `subscribe` and `group` patterns. Patterns are dot-separated segments:
//! `*` matches one segment, `**` (last only) one or more, and `{sub}` /
//! `{claims.NAME}` substitute claim values. A substituted value must be a
//! plain segment (`[A-Za-z0-9_-]+`), otherwise the pattern does not match:
//! a claim such as `"a.*"` or `"**"` can never widen access.
//!
//! A `subscribe` grant may also impose a filter built from the principal's
//! claims (`{ topic = "telemetry", filter = { key = { prefix =
//! "{claims.tenant}." } } }`): the subscription then only ever receives
//! records matching it, AND-ed with whatever filter the client asks for.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Principal;
use crate::filter::{Filter, FilterError};
use crate::template::{self, Part};

/// What a principal wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
    /// Join a shared (consumer-group) subscription.
    Group,
}

impl Action {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Group => "group",
        }
    }
}

/// The `[acl]` section of the configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// The rules; a principal gets the union of what its matching rules grant.
    pub rules: Vec<RuleConfig>,
    /// Honour patterns carried in the token under this claim (e.g.
    /// `ferry = {"pub": [...], "sub": [...], "group": [...]}`), but only
    /// inside what the rules allow. Empty: tokens carry no grants.
    pub token_grants_claim: Option<String>,
}

/// One rule of the policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Claim → required value. Empty: every authenticated principal.
    #[serde(rename = "match")]
    pub when: BTreeMap<String, Value>,
    pub publish: Vec<String>,
    /// Topic patterns, or `{ topic = PATTERN, filter = TEMPLATE }` to allow
    /// the subscription only with that filter.
    pub subscribe: Vec<SubscribeGrant>,
    pub group: Vec<String>,
    /// Every subscription of a principal this rule matches is throttled to
    /// at least this many ms per key (`subscribe.throttle_ms` floor;
    /// groups excepted). The largest of the matching rules applies.
    pub min_throttle_ms: Option<u64>,
}

/// One `subscribe` grant of a rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SubscribeGrant {
    Topic(String),
    Filtered {
        topic: String,
        /// A filter template (see [`crate::filter`]), with `{sub}` and
        /// `{claims.NAME}` placeholders.
        filter: Value,
    },
}

/// A compiled, checked policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    grants_claim: Option<String>,
}

/// The policy in force: swapped whole on reload, read under a short lock
/// (never held across an await).
#[derive(Debug)]
pub struct CurrentPolicy(RwLock<Arc<Policy>>);

impl CurrentPolicy {
    pub fn new(policy: Policy) -> Self {
        Self(RwLock::new(Arc::new(policy)))
    }

    pub fn get(&self) -> Arc<Policy> {
        self.0.read().expect("policy lock").clone()
    }

    /// Whether the current policy lets `principal` do `action` on `topic`.
    pub fn allows(&self, principal: &Principal, action: Action, topic: &str) -> bool {
        self.0.read().expect("policy lock").allows(principal, action, topic)
    }

    pub fn replace(&self, policy: Policy) {
        *self.0.write().expect("policy lock") = Arc::new(policy);
    }
}

#[derive(Debug, Clone)]
struct Rule {
    when: Vec<(String, Value)>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    /// The filter template of each `subscribe` pattern, if it has one.
    subscribe_filters: Vec<Option<Value>>,
    group: Vec<Pattern>,
    min_throttle_ms: u64,
}

/// What the policy says about a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeGrantResult {
    Denied,
    /// Allowed; records must also match `imposed` when there is one.
    Allowed {
        imposed: Option<Filter>,
    },
}

impl Policy {
    /// Compiles `config`; returns every problem found.
    pub fn compile(config: &AclConfig) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let mut compile_all = |kind: &str, patterns: &[String]| {
                patterns
                    .iter()
                    .filter_map(|p| {
                        Pattern::parse(p)
                            .map_err(|e| errors.push(format!("acl.rules[{i}].{kind}: {p:?}: {e}")))
                            .ok()
                    })
                    .collect()
            };
            let publish = compile_all("publish", &rule.publish);
            let (topics, templates): (Vec<String>, Vec<Option<Value>>) = rule
                .subscribe
                .iter()
                .map(|grant| match grant {
                    SubscribeGrant::Topic(topic) => (topic.clone(), None),
                    SubscribeGrant::Filtered { topic, filter } => {
                        (topic.clone(), Some(filter.clone()))
                    }
                })
                .unzip();
            let subscribe = compile_all("subscribe", &topics);
            let group = compile_all("group", &rule.group);
            for template in templates.iter().flatten() {
                if let Err(FilterError(e)) = Filter::check_template(template) {
                    errors.push(format!("acl.rules[{i}].subscribe filter: {e}"));
                }
            }
            let when = rule.when.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let min_throttle_ms = rule.min_throttle_ms.unwrap_or(0);
            if min_throttle_ms > ferry_protocol::MAX_THROTTLE_MS {
                let max = ferry_protocol::MAX_THROTTLE_MS;
                errors.push(format!("acl.rules[{i}].min_throttle_ms must be at most {max}"));
            }
            rules.push(Rule {
                when,
                publish,
                subscribe,
                subscribe_filters: templates,
                group,
                min_throttle_ms,
            });
        }
        if errors.is_empty() {
            Ok(Self { rules, grants_claim: config.token_grants_claim.clone() })
        } else {
            Err(errors)
        }
    }

    /// A policy that grants everything (used with `auth.mode = "none"` when
    /// no rules are configured).
    pub fn allow_all() -> Self {
        let all = || vec![Pattern::parse("**").expect("valid")];
        Self {
            rules: vec![Rule {
                when: vec![],
                publish: all(),
                subscribe: all(),
                subscribe_filters: vec![None],
                group: all(),
                min_throttle_ms: 0,
            }],
            grants_claim: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The throttle floor (ms) the rules matching `principal` impose on its
    /// subscriptions: the largest, or 0.
    pub fn min_throttle_ms(&self, principal: &Principal) -> u64 {
        let matching = self.rules.iter().filter(|rule| rule.matches(principal));
        matching.map(|rule| rule.min_throttle_ms).max().unwrap_or(0)
    }

    /// Whether `principal` may do `action` on `topic`.
    pub fn allows(&self, principal: &Principal, action: Action, topic: &str) -> bool {
        let granted = self
            .rules
            .iter()
            .filter(|rule| rule.matches(principal))
            .any(|rule| rule.patterns(action).iter().any(|p| p.matches(topic, principal)));
        if !granted {
            return false;
        }
        match self.grants_claim.as_ref().and_then(|c| principal.claims.get(c)) {
            None => true,
            Some(grants) => token_grants_allow(grants, action, topic, principal),
        }
    }
}

impl Policy {
    /// Whether `principal` may subscribe to `topic`, and with which imposed
    /// filter. A grant without a filter wins over filtered ones; among
    /// filtered grants the first matching one applies (each is a
    /// permission the policy gives, so none widens access).
    pub fn subscribe_grant(&self, principal: &Principal, topic: &str) -> SubscribeGrantResult {
        if !self.allows(principal, Action::Subscribe, topic) {
            return SubscribeGrantResult::Denied;
        }
        let mut first_filtered = None;
        for rule in self.rules.iter().filter(|r| r.matches(principal)) {
            for (pattern, template) in rule.subscribe.iter().zip(&rule.subscribe_filters) {
                if !pattern.matches(topic, principal) {
                    continue;
                }
                match template {
                    None => return SubscribeGrantResult::Allowed { imposed: None },
                    Some(t) if first_filtered.is_none() => first_filtered = Some(t),
                    Some(_) => {}
                }
            }
        }
        let imposed = first_filtered.map(|template| {
            Filter::from_template(template, &principal.subject, &principal.claims)
                .unwrap_or_else(|_| Filter::nothing())
        });
        SubscribeGrantResult::Allowed { imposed }
    }
}

/// Patterns in the token narrow what the policy allows; malformed ones
/// grant nothing.
fn token_grants_allow(grants: &Value, action: Action, topic: &str, principal: &Principal) -> bool {
    let key = match action {
        Action::Publish => "pub",
        Action::Subscribe => "sub",
        Action::Group => "group",
    };
    let Some(patterns) = grants.get(key).and_then(Value::as_array) else { return false };
    patterns
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|p| Pattern::parse(p).ok())
        .any(|p| p.matches(topic, principal))
}

impl Rule {
    fn matches(&self, principal: &Principal) -> bool {
        self.when.iter().all(|(claim, want)| {
            let have = match claim.as_str() {
                "sub" => Some(Value::String(principal.subject.clone())),
                _ => principal.claims.get(claim).cloned(),
            };
            match have {
                Some(Value::Array(items)) => items.contains(want),
                Some(value) => &value == want,
                None => false,
            }
        })
    }

    fn patterns(&self, action: Action) -> &[Pattern] {
        match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
            Action::Group => &self.group,
        }
    }
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// `*`
    One,
    /// `**`, always last
    Rest,
    /// Literal text with claim substitutions.
    Literal(Vec<Part>),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        let raw = split_segments(text)?;
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            segments.push(match *seg {
                "**" if i + 1 == raw.len() => Segment::Rest,
                "**" => return Err("`**` may only be the last segment".into()),
                "*" => Segment::One,
                _ => Segment::Literal(parse_literal(seg)?),
            });
        }
        Ok(Self { segments })
    }

    /// Whether `topic` matches for `principal`.
    pub fn matches(&self, topic: &str, principal: &Principal) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some_and(|s| !s.is_empty()),
                Segment::One => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Segment::Literal(pieces) => {
                    let Some(actual) = parts.next() else { return false };
                    if !literal_matches(pieces, actual, principal) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Splits on the dots that are not inside `{...}` (as in `{claims.tenant}`).
fn split_segments(text: &str) -> Result<Vec<&str>, String> {
    Ok(template::split_dots(text))
}

/// A literal segment: text of segment characters and placeholders.
fn parse_literal(segment: &str) -> Result<Vec<Part>, String> {
    let parts = template::parse(segment)?;
    for part in &parts {
        if let Part::Text(text) = part {
            if let Some(bad) = text.chars().find(|c| !is_segment_char(*c)) {
                return Err(format!("{bad:?} is not allowed in a topic pattern"));
            }
        }
    }
    if parts.is_empty() {
        return Err("empty segment".into());
    }
    Ok(parts)
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// What `part` expands to inside a topic segment: plain characters only,
/// so that a hostile claim (`a.*`, `**`, `../x`) matches nothing.
fn segment_value(part: &Part, principal: &Principal) -> Option<String> {
    let text = part.value(&principal.subject, &principal.claims)?;
    (!text.is_empty() && text.chars().all(is_segment_char)).then_some(text)
}

fn literal_matches(pieces: &[Part], actual: &str, principal: &Principal) -> bool {
    let mut expected = String::new();
    for piece in pieces {
        match segment_value(piece, principal) {
            Some(text) => expected.push_str(&text),
            None => return false,
        }
    }
    expected == actual
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(sub: &str, claims: Value) -> Principal {
        Principal {
            subject: sub.into(),
            claims: claims.as_object().cloned().unwrap_or_default().into(),
            expires_at: None,
        }
    }

    fn policy(toml_text: &str) -> Policy {
        let config: AclConfig = toml::from_str(toml_text).unwrap();
        Policy::compile(&config).unwrap()
    }

    #[test]
    fn the_largest_throttle_floor_of_the_matching_rules_applies() {
        let p = policy(
            r#"
            [[rules]]
            subscribe = ["**"]
            [[rules]]
            match = { device = "phone" }
            min_throttle_ms = 200
            [[rules]]
            match = { network = "cellular" }
            min_throttle_ms = 500
        "#,
        );
        assert_eq!(p.min_throttle_ms(&principal("desk", json!({}))), 0);
        assert_eq!(p.min_throttle_ms(&principal("a", json!({"device": "phone"}))), 200);
        let both = principal("b", json!({"device": "phone", "network": "cellular"}));
        assert_eq!(p.min_throttle_ms(&both), 500);
        let too_long: AclConfig = toml::from_str("[[rules]]\nmin_throttle_ms = 60001\n").unwrap();
        assert!(Policy::compile(&too_long).is_err(), "past the protocol's maximum");
    }

    const EXAMPLE: &str = r#"
        [[rules]]
        publish = ["telemetry.{sub}"]
        subscribe = ["tenant.{claims.tenant}.**"]
        [[rules]]
        match = { roles = "admin" }
        publish = ["**"]
        subscribe = ["**"]
    "#;

    #[test]
    fn templated_rules_grant_own_topics_only() {
        let p = policy(EXAMPLE);
        let dev = principal("dev-42", json!({"tenant": "acme"}));
        assert!(p.allows(&dev, Action::Publish, "telemetry.dev-42"));
        assert!(!p.allows(&dev, Action::Publish, "telemetry.dev-43"));
        assert!(!p.allows(&dev, Action::Publish, "telemetry"));
        assert!(p.allows(&dev, Action::Subscribe, "tenant.acme.dash"));
        assert!(p.allows(&dev, Action::Subscribe, "tenant.acme.a.b"));
        assert!(!p.allows(&dev, Action::Subscribe, "tenant.acme"));
        assert!(!p.allows(&dev, Action::Subscribe, "tenant.other.dash"));
        assert!(!p.allows(&dev, Action::Group, "tenant.acme.dash"));
    }

    #[test]
    fn hostile_claims_grant_nothing_extra() {
        let p = policy(EXAMPLE);
        for tenant in ["a.*", "**", "*", "../x", "a.b", "", "acme}"] {
            let who = principal("x", json!({"tenant": tenant}));
            for topic in ["tenant.a.b.c", "tenant.a.x", "tenant.acme.x", "tenant.x.y", "tenant..x"]
            {
                assert!(!p.allows(&who, Action::Subscribe, topic), "{tenant:?} -> {topic}");
            }
        }
        let sneaky = principal("a.*", json!({}));
        assert!(!p.allows(&sneaky, Action::Publish, "telemetry.a.b"));
        assert!(!p.allows(&sneaky, Action::Publish, "telemetry.a.*"));
    }

    #[test]
    fn array_claims_match_by_membership() {
        let p = policy(EXAMPLE);
        let admin = principal("root", json!({"roles": ["ops", "admin"]}));
        assert!(p.allows(&admin, Action::Publish, "anything.at.all"));
        let ops = principal("o", json!({"roles": ["ops"]}));
        assert!(!p.allows(&ops, Action::Publish, "anything"));
    }

    #[test]
    fn deny_by_default() {
        let p = policy("");
        assert!(!p.allows(&principal("a", json!({})), Action::Subscribe, "t"));
    }

    #[test]
    fn token_grants_narrow_the_policy() {
        let p = policy(
            r#"
            token_grants_claim = "ferry"
            [[rules]]
            publish = ["app.**"]
            subscribe = ["app.**"]
        "#,
        );
        let narrowed = principal("u", json!({"ferry": {"pub": ["app.chat.*"], "sub": ["**"]}}));
        assert!(p.allows(&narrowed, Action::Publish, "app.chat.room1"));
        assert!(!p.allows(&narrowed, Action::Publish, "app.admin.x"));
        assert!(p.allows(&narrowed, Action::Subscribe, "app.x"));
        assert!(!p.allows(&narrowed, Action::Subscribe, "other.x"), "never beyond the policy");
        let plain = principal("u", json!({}));
        assert!(p.allows(&plain, Action::Publish, "app.admin.x"));
    }

    #[test]
    fn imposed_filters_follow_the_claims_and_unfiltered_grants_win() {
        let p = policy(
            r#"
            [[rules]]
            subscribe = [{ topic = "telemetry", filter = { key = { prefix = "{claims.tenant}." } } }]
            [[rules]]
            match = { roles = "admin" }
            subscribe = ["**"]
        "#,
        );
        let tenant = principal("t", json!({"tenant": "acme"}));
        let SubscribeGrantResult::Allowed { imposed: Some(filter) } =
            p.subscribe_grant(&tenant, "telemetry")
        else {
            panic!("tenant gets a filtered grant");
        };
        assert_eq!(filter.canonical(), r#"{"key":{"prefix":"acme."}}"#);
        assert_eq!(p.subscribe_grant(&tenant, "other"), SubscribeGrantResult::Denied);
        let admin = principal("a", json!({"roles": ["admin"], "tenant": "acme"}));
        assert_eq!(
            p.subscribe_grant(&admin, "telemetry"),
            SubscribeGrantResult::Allowed { imposed: None }
        );
        let no_tenant = principal("n", json!({}));
        let SubscribeGrantResult::Allowed { imposed: Some(nothing) } =
            p.subscribe_grant(&no_tenant, "telemetry")
        else {
            panic!();
        };
        assert_eq!(nothing, Filter::nothing(), "a missing claim matches nothing");
    }

    #[test]
    fn bad_patterns_are_reported() {
        let config: AclConfig = toml::from_str(
            r#"
            [[rules]]
            publish = ["a.**.b", "x/y", "{nope}", "t.{claims.}"]
        "#,
        )
        .unwrap();
        let errors = Policy::compile(&config).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
    }
}
