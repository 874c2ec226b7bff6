//! Kafka topic-name rules.
//!
//! A name is checked here before the gateway makes any Kafka call, so a bad
//! name costs nothing and always gets the same `invalid_topic` answer.

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Why a topic name was refused; the text is shown to the client.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic must not be empty".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!("topic is longer than {MAX_TOPIC_LEN} characters"));
    }
    if topic == "." || topic == ".." {
        return Err("topic may not be \".\" or \"..\"".into());
    }
    if topic.starts_with("__") {
        return Err("topics starting with \"__\" are internal to Kafka".into());
    }
    if let Some(bad) =
        topic.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic contains {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_legal_names() {
        for ok in ["a", "telemetry", "tenant.a.dash", "A-b_c.9", &"x".repeat(249)] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_illegal_names() {
        for bad in ["", ".", "..", "__consumer_offsets", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
