//! Claim templates: the one parser for `{sub}` and `{claims.NAME}`
//! placeholders, shared by ACL topic patterns ([`crate::acl`]) and
//! ACL-imposed filters ([`crate::filter`]).
//!
//! A template is text with placeholders; it cannot contain literal braces.
//! What a placeholder may expand to is the caller's rule (a topic segment
//! takes plain characters only; a filter string takes any text), so this
//! module only parses and looks values up.

use serde_json::Value;

use crate::auth::Claims;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `{sub}`: the token's subject.
    Subject,
    /// `{claims.NAME}`: a string or number claim.
    Claim(String),
}

impl Part {
    /// The text a placeholder stands for (literal text as is); `None` when
    /// the claim is missing or neither a string nor a number.
    pub fn value(&self, subject: &str, claims: &Claims) -> Option<String> {
        match self {
            Self::Text(text) => Some(text.clone()),
            Self::Subject => Some(subject.to_owned()),
            Self::Claim(name) => match claims.get(name)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
        }
    }
}

/// Parses `text` into literal text and placeholders.
pub fn parse(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("unmatched `}` (templates cannot contain literal braces)".into());
        }
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after.find(['{', '}']).filter(|&i| after.as_bytes()[i] == b'}');
        let Some(close) = close else {
            return Err("unclosed `{`".into());
        };
        let name = &after[..close];
        parts.push(match name {
            "sub" => Part::Subject,
            _ => match name.strip_prefix("claims.") {
                Some(claim) if !claim.is_empty() => Part::Claim(claim.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}; expected {{sub}} or {{claims.NAME}}"
                    ))
                }
            },
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Splits `text` on the dots that are not inside `{...}` (as in
/// `{claims.tenant}`). Braces are checked by [`parse`], per piece.
pub fn split_dots(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut inside, mut start) = (false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            '.' if !inside => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_placeholders() {
        assert_eq!(
            parse("t.{sub}-{claims.tenant}").unwrap(),
            vec![
                Part::Text("t.".into()),
                Part::Subject,
                Part::Text("-".into()),
                Part::Claim("tenant".into())
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(parse("{nope}").unwrap_err().contains("unknown placeholder {nope}"));
        assert!(parse("{claims.}").unwrap_err().contains("unknown placeholder {claims.}"));
        assert!(parse("{}").unwrap_err().contains("unknown placeholder {}"));
        assert_eq!(parse("{claims.x").unwrap_err(), "unclosed `{`");
        assert_eq!(parse("{a{b}}").unwrap_err(), "unclosed `{`");
        assert!(parse("a}").unwrap_err().starts_with("unmatched `}`"));
    }

    #[test]
    fn values_come_from_subject_and_string_or_number_claims() {
        let claims = json!({"tenant": "acme", "level": 3, "admin": true});
        let claims = Claims::from(claims.as_object().unwrap().clone());
        let value = |p: &str| parse(p).unwrap()[0].value("dev-1", &claims);
        assert_eq!(value("{sub}").as_deref(), Some("dev-1"));
        assert_eq!(value("{claims.tenant}").as_deref(), Some("acme"));
        assert_eq!(value("{claims.level}").as_deref(), Some("3"));
        assert_eq!(value("{claims.admin}"), None);
        assert_eq!(value("{claims.missing}"), None);
    }

    #[test]
    fn dots_inside_braces_do_not_split() {
        assert_eq!(split_dots("a.{claims.t}.b"), vec!["a", "{claims.t}", "b"]);
        assert_eq!(split_dots("a"), vec!["a"]);
        assert_eq!(split_dots("a..b"), vec!["a", "", "b"]);
    }
}
