//! Payload validation: a JSON Schema per topic pattern, checked before a
//! record is produced.
//!
//! The configuration lists `[[schemas]]` entries, each a topic pattern (the
//! ACL's syntax: dot-separated segments, `*` one segment, `**` last, one or
//! more; no `{sub}`/`{claims.*}` placeholders: a schema is the same for
//! everyone) and a schema, inline (`schema = '{...}'`) or in a file
//! (`schema_file`). **The first entry whose pattern matches the topic
//! applies** (write specific patterns before general ones); a topic that no
//! entry matches is not validated.
//!
//! Every schema is compiled once, when the gateway starts (a bad schema, an
//! unreadable file or a `$ref` to anything outside the schema itself is a
//! configuration error, exit 64). The ACL's reload (SIGHUP, file change)
//! does not reload schemas: changing them needs a restart.
//!
//! A publish to a topic with a schema must carry a JSON `value`: its text is
//! parsed once and validated once, before the producer sees it; a value
//! that does not validate is refused with `invalid_value` naming the first
//! violation (its JSON pointer and what is wrong, without echoing the value).
//! A `value_b64` (bytes) on such a topic is refused the same way: bytes
//! cannot be checked against a JSON Schema. Each refusal is counted in
//! `ferry_schema_rejections_total{reason}`.
//!
//! [`Schemas::validate`] is the one entry point, for every publish path.

use std::path::PathBuf;

use ferry_protocol::Payload;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::acl::Pattern;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::metrics;

/// One `[[schemas]]` entry of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Topic pattern (`telemetry.**`, `orders.*.created`, `chat`).
    pub topics: String,
    /// A file holding the JSON Schema (read once, at start).
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
    /// The JSON Schema itself, as JSON text. Exactly one of `schema` and
    /// `schema_file`.
    #[serde(default)]
    pub schema: Option<String>,
}

/// The compiled schemas, in configuration order.
#[derive(Debug, Default)]
pub struct Schemas {
    entries: Vec<Entry>,
    /// Patterns are matched without claims (placeholders are refused).
    nobody: Option<Principal>,
}

struct Entry {
    pattern: Pattern,
    /// The pattern as written, for messages.
    topics: String,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("topics", &self.topics).finish_non_exhaustive()
    }
}

/// Messages stay short whatever the schema says (a `pattern` or `enum` can
/// be long).
const MAX_MESSAGE_CHARS: usize = 512;

impl Schemas {
    /// Compiles every entry; returns every problem found, each naming its
    /// entry (`schemas[1]`).
    pub fn compile(configs: &[SchemaConfig]) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            match compile_one(config) {
                Ok(entry) => entries.push(entry),
                Err(e) => errors.push(format!("schemas[{i}] ({:?}): {e}", config.topics)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self { entries, nobody: Some(Principal::anonymous()) })
    }

    /// No schema at all: nothing is validated.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pattern of the entry that applies to `topic` (the first that
    /// matches), if any.
    pub fn pattern_for(&self, topic: &str) -> Option<&str> {
        self.entry(topic).map(|e| e.topics.as_str())
    }

    fn entry(&self, topic: &str) -> Option<&Entry> {
        let nobody = self.nobody.as_ref()?;
        self.entries.iter().find(|e| e.pattern.matches(topic, nobody))
    }

    /// Checks a record value bound for `topic`: `Ok` when the topic has no
    /// schema or the value validates; otherwise
    /// [`GatewayError::InvalidValue`] with the first violation, counted in
    /// the metrics. Call it once per record, before producing it.
    pub fn validate(&self, topic: &str, value: &Payload<'_>) -> Result<(), GatewayError> {
        let Some(entry) = self.entry(topic) else { return Ok(()) };
        let text = match value {
            Payload::Json(raw) => raw.get(),
            Payload::Bytes(_) => {
                metrics::schema_rejected("not_json");
                return Err(GatewayError::InvalidValue(format!(
                    "topic {topic:?} has a JSON Schema ({:?}): send the value as JSON in `value`, not as bytes in `value_b64`",
                    entry.topics
                )));
            }
        };
        // The protocol decoder already checked the JSON; this cannot fail
        // for a decoded frame, but a caller may hand any text.
        let parsed: Value = serde_json::from_str(text).map_err(|e| {
            metrics::schema_rejected("not_json");
            GatewayError::InvalidValue(format!("the value is not JSON: {e}"))
        })?;
        match entry.validator.validate(&parsed) {
            Ok(()) => Ok(()),
            Err(violation) => {
                metrics::schema_rejected("invalid");
                let path = violation.instance_path().to_string();
                let at = if path.is_empty() { "the value's root".to_owned() } else { path };
                let mut message = format!(
                    "the value does not match the schema of {:?} at {at}: {}",
                    entry.topics,
                    violation.masked()
                );
                if message.chars().count() > MAX_MESSAGE_CHARS {
                    message = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
                    message.push('…');
                }
                Err(GatewayError::InvalidValue(message))
            }
        }
    }
}

fn compile_one(config: &SchemaConfig) -> Result<Entry, String> {
    if config.topics.contains('{') {
        return Err("placeholders such as {sub} are not allowed in schema patterns".into());
    }
    let pattern = Pattern::parse(&config.topics)?;
    let text = match (&config.schema, &config.schema_file) {
        (Some(text), None) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("schema_file {}: {e}", path.display()))?,
        _ => return Err("set exactly one of `schema` and `schema_file`".into()),
    };
    let schema: Value =
        serde_json::from_str(&text).map_err(|e| format!("the schema is not JSON: {e}"))?;
    // Without the crate's `resolve-http`/`resolve-file` features a `$ref`
    // to another document fails here: schemas never reach the network.
    let validator = jsonschema::options()
        .build(&schema)
        .map_err(|e| format!("not a usable JSON Schema: {e}"))?;
    Ok(Entry { pattern, topics: config.topics.clone(), validator })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn schemas(toml_text: &str) -> Result<Schemas, Vec<String>> {
        #[derive(Deserialize)]
        struct File {
            schemas: Vec<SchemaConfig>,
        }
        let file: File = toml::from_str(toml_text).unwrap();
        Schemas::compile(&file.schemas)
    }

    fn json(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn check(s: &Schemas, topic: &str, value: &str) -> Result<(), GatewayError> {
        s.validate(topic, &Payload::Json(&json(value)))
    }

    const TELEMETRY: &str = r#"
        [[schemas]]
        topics = "telemetry.**"
        schema = '''{"type":"object","required":["temp"],"properties":{"temp":{"type":"number"},"tags":{"type":"array","items":{"type":"string"}}}}'''
        [[schemas]]
        topics = "**"
        schema = '{"type":"string"}'
    "#;

    #[test]
    fn valid_values_pass_and_the_first_violation_is_named_by_its_pointer() {
        let s = schemas(TELEMETRY).unwrap();
        assert_eq!(check(&s, "telemetry.dev1", r#"{"temp": 21.5}"#), Ok(()));
        let Err(GatewayError::InvalidValue(msg)) =
            check(&s, "telemetry.dev1", r#"{"temp": 21, "tags": ["a", 7]}"#)
        else {
            panic!("a number among the tags is refused");
        };
        assert!(msg.contains("at /tags/1:"), "{msg}");
        assert!(msg.contains("\"telemetry.**\""), "{msg}");
        assert!(msg.contains("string"), "{msg}");
        let Err(GatewayError::InvalidValue(msg)) = check(&s, "telemetry.dev1", r#"{"t": 1}"#)
        else {
            panic!("a missing property is refused");
        };
        assert!(msg.contains("at the value's root") && msg.contains("temp"), "{msg}");
        assert_eq!(GatewayError::InvalidValue(msg).code().as_str(), "invalid_value");
    }

    #[test]
    fn the_first_matching_entry_applies() {
        let s = schemas(TELEMETRY).unwrap();
        assert_eq!(s.pattern_for("telemetry.a.b"), Some("telemetry.**"));
        assert_eq!(s.pattern_for("chat"), Some("**"));
        // `telemetry` alone is not under `telemetry.**`: the catch-all applies.
        assert_eq!(check(&s, "telemetry", r#""just text""#), Ok(()));
        assert!(check(&s, "telemetry.x", r#""just text""#).is_err());
        assert!(check(&s, "chat", r#"{"temp": 1}"#).is_err());
    }

    #[test]
    fn topics_without_a_schema_are_not_validated() {
        let s = schemas(
            r#"
            [[schemas]]
            topics = "orders.*"
            schema = '{"type":"object"}'
        "#,
        )
        .unwrap();
        assert_eq!(s.pattern_for("orders"), None);
        assert_eq!(check(&s, "orders", "42"), Ok(()));
        assert_eq!(check(&s, "orders.eu.x", "42"), Ok(()));
        assert!(check(&s, "orders.eu", "42").is_err());
        assert_eq!(s.validate("other", &Payload::Bytes(vec![0xff])), Ok(()));
        assert!(Schemas::default().is_empty());
        assert_eq!(Schemas::default().validate("orders.eu", &Payload::Bytes(vec![1])), Ok(()));
    }

    #[test]
    fn bytes_on_a_schema_topic_are_refused_with_a_clear_message() {
        let s = schemas(TELEMETRY).unwrap();
        let Err(GatewayError::InvalidValue(msg)) =
            s.validate("telemetry.x", &Payload::Bytes(br#"{"temp":1}"#.to_vec()))
        else {
            panic!("bytes are refused");
        };
        assert!(msg.contains("value_b64"), "{msg}");
    }

    #[test]
    fn messages_do_not_echo_the_value_and_stay_short() {
        let s = schemas(
            r#"
            [[schemas]]
            topics = "t"
            schema = '{"type":"object","properties":{"secret":{"type":"integer"}}}'
        "#,
        )
        .unwrap();
        let long = "x".repeat(10_000);
        let Err(GatewayError::InvalidValue(msg)) =
            check(&s, "t", &format!(r#"{{"secret":"{long}"}}"#))
        else {
            panic!("a string is not an integer");
        };
        assert!(!msg.contains("xxxx"), "{msg}");
        assert!(msg.chars().count() <= MAX_MESSAGE_CHARS, "{msg}");
        assert!(msg.contains("/secret"), "{msg}");
    }

    #[test]
    fn schemas_are_read_from_files() {
        let dir = std::env::temp_dir().join(format!("ferry-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.json");
        std::fs::write(&file, r#"{"type":"integer","minimum":0}"#).unwrap();
        let s = schemas(&format!(
            "[[schemas]]\ntopics = \"counts\"\nschema_file = {:?}\n",
            file.display().to_string()
        ))
        .unwrap();
        assert_eq!(check(&s, "counts", "3"), Ok(()));
        assert!(check(&s, "counts", "-3").is_err());
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let errors = schemas(
            r#"
            [[schemas]]
            topics = "a.**.b"
            schema = '{}'
            [[schemas]]
            topics = "t.{sub}"
            schema = '{}'
            [[schemas]]
            topics = "t"
            schema = 'not json'
            [[schemas]]
            topics = "t"
            schema = '{"type": 12}'
            [[schemas]]
            topics = "t"
            [[schemas]]
            topics = "t"
            schema_file = "/nonexistent/schema.json"
            [[schemas]]
            topics = "t"
            schema = '{"$ref": "https://example.com/remote.json"}'
        "#,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 7, "{errors:#?}");
        for (i, error) in errors.iter().enumerate() {
            assert!(error.starts_with(&format!("schemas[{i}]")), "{error}");
        }
        assert!(errors[4].contains("exactly one"), "{}", errors[4]);
    }
}
