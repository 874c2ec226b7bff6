//! Parsing and checking filters and ACL filter templates.

use super::*;

/// Counts serialized bytes and stops past the limit.
pub(super) struct SizeLimit(usize);

impl std::io::Write for SizeLimit {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_sub(buf.len());
        if self.0 == 0 && !buf.is_empty() {
            // Distinguish "exactly at the limit" from "past it" below.
            return Err(std::io::Error::other("too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `value` serializes to more than `limit` bytes of compact JSON.
fn larger_than(value: &Value, limit: usize) -> bool {
    // One spare byte: reaching zero means at least limit + 1 bytes.
    serde_json::to_writer(SizeLimit(limit + 1), value).is_err()
}

pub(super) struct Parser<'a> {
    /// Subject and claims when parsing an ACL template.
    pub(super) template: Option<(&'a str, &'a Claims)>,
    /// A placeholder had no usable value: the result is `nothing`.
    pub(super) unusable: bool,
}

impl Parser<'_> {
    pub(super) fn run(mut self, value: &Value) -> Result<Filter, FilterError> {
        if larger_than(value, MAX_FILTER_BYTES) {
            return Err(FilterError(format!(
                "filter: larger than {MAX_FILTER_BYTES} bytes (as compact JSON)"
            )));
        }
        let mut terms = Vec::new();
        self.filter(value, "filter", 0, &mut terms)?;
        debug_assert!(!terms.is_empty());
        if self.unusable || terms.is_empty() {
            return Ok(Filter::nothing());
        }
        Ok(Filter { repr: Repr::All(normalize(terms)) })
    }

    pub(super) fn filter(
        &mut self,
        value: &Value,
        at: &str,
        depth: usize,
        out: &mut Vec<Term>,
    ) -> Result<(), FilterError> {
        let Value::Object(fields) = value else {
            return Err(error(at, format!("expected an object, got {}", kind(value))));
        };
        let mut entries = fields.iter();
        let (name, body) = match (entries.next(), entries.next()) {
            (Some(entry), None) => entry,
            (None, _) => {
                return Err(error(
                    at,
                    "empty object; expected one of `key`, `header`, `value`, `all`",
                ))
            }
            (Some(_), Some(_)) => {
                let names: Vec<String> = fields.keys().map(|k| format!("{k:?}")).collect();
                return Err(error(
                    at,
                    format!(
                        "has several fields ({}); a filter object has exactly one of `key`, \
                         `header`, `value`, `all` (combine conditions with `all`)",
                        names.join(", ")
                    ),
                ));
            }
        };
        let inner = format!("{at}.{name}");
        match name.as_str() {
            "key" => out.push(self.key(body, &inner)?),
            "header" => out.push(self.header(body, &inner)?),
            "value" => out.push(self.value(body, &inner)?),
            "all" => {
                let Value::Array(items) = body else {
                    return Err(error(&inner, format!("expected an array, got {}", kind(body))));
                };
                if depth >= MAX_ALL_DEPTH {
                    return Err(error(
                        &inner,
                        format!("`all` nested more than {MAX_ALL_DEPTH} deep"),
                    ));
                }
                if items.is_empty() || items.len() > MAX_ALL_ITEMS {
                    return Err(error(
                        &inner,
                        format!("expected 1 to {MAX_ALL_ITEMS} filters, got {}", items.len()),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    self.filter(item, &format!("{inner}[{i}]"), depth + 1, out)?;
                }
            }
            other => {
                return Err(error(
                    at,
                    format!(
                        "unknown filter {other:?}; expected one of `key`, `header`, `value`, `all`"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn key(&mut self, body: &Value, at: &str) -> Result<Term, FilterError> {
        let fields = as_object(body, at)?;
        let mut term = None;
        for (op, arg) in fields {
            let at_op = format!("{at}.{op}");
            let next = match op.as_str() {
                "eq" => Term::KeyEq(self.string(arg, &at_op)?),
                "prefix" => Term::KeyPrefix(self.non_empty_string(arg, &at_op)?),
                other => {
                    return Err(error(
                        at,
                        format!("unknown operator {other:?}; expected `eq` or `prefix`"),
                    ))
                }
            };
            if term.replace(next).is_some() {
                return Err(error(at, "expected exactly one of `eq`, `prefix`; got both"));
            }
        }
        term.ok_or_else(|| error(at, "expected one of `eq`, `prefix`"))
    }

    pub(super) fn header(&mut self, body: &Value, at: &str) -> Result<Term, FilterError> {
        let fields = as_object(body, at)?;
        let (mut name, mut eq) = (None, None);
        for (field, arg) in fields {
            let at_field = format!("{at}.{field}");
            match field.as_str() {
                "name" => name = Some(self.non_empty_string(arg, &at_field)?),
                "eq" => eq = Some(self.string(arg, &at_field)?),
                other => {
                    return Err(error(
                        at,
                        format!("unknown field {other:?}; expected `name` and `eq`"),
                    ))
                }
            }
        }
        let name = name.ok_or_else(|| error(at, "missing `name`"))?;
        let eq = eq.ok_or_else(|| error(at, "missing `eq`"))?;
        Ok(Term::Header { name, eq })
    }

    pub(super) fn value(&mut self, body: &Value, at: &str) -> Result<Term, FilterError> {
        let fields = as_object(body, at)?;
        let mut path = None;
        let mut eq = None;
        let mut one_of = None;
        let (mut lower, mut upper) = (None, None);
        for (op, arg) in fields {
            let at_op = format!("{at}.{op}");
            match op.as_str() {
                "path" => path = Some(self.path(arg, &at_op)?),
                "eq" => eq = Some(self.scalar(arg, &at_op)?),
                "in" => one_of = Some(self.scalars(arg, &at_op)?),
                "gt" | "gte" | "lt" | "lte" => {
                    let bound = Bound { value: number(arg, &at_op)?, inclusive: op.ends_with('e') };
                    let slot = if op.starts_with('g') { &mut lower } else { &mut upper };
                    if slot.replace(bound).is_some() {
                        let pair =
                            if op.starts_with('g') { "`gt` and `gte`" } else { "`lt` and `lte`" };
                        return Err(error(at, format!("{pair} cannot both be given")));
                    }
                }
                other => {
                    return Err(error(
                        at,
                        format!(
                            "unknown operator {other:?}; expected `path` and one of `eq`, `in`, \
                             `gt`, `gte`, `lt`, `lte`"
                        ),
                    ))
                }
            }
        }
        let path = path.ok_or_else(|| error(at, "missing `path`"))?;
        let ranged = lower.is_some() || upper.is_some();
        match (eq, one_of, ranged) {
            (Some(value), None, false) => Ok(Term::ValueEq { path, value }),
            (None, Some(values), false) => Ok(Term::ValueIn { path, values }),
            (None, None, true) => Ok(Term::ValueRange { path, lower, upper }),
            (None, None, false) => Err(error(
                at,
                "missing an operator; expected one of `eq`, `in`, `gt`, `gte`, `lt`, `lte`",
            )),
            _ => Err(error(
                at,
                "`eq`, `in` and bounds (`gt`, `gte`, `lt`, `lte`) cannot be combined in one \
                 object; combine conditions with `all`",
            )),
        }
    }

    pub(super) fn path(&mut self, arg: &Value, at: &str) -> Result<Path, FilterError> {
        let raw = checked_str(arg, at)?;
        if raw.is_empty() {
            return Err(error(at, "must not be empty"));
        }
        let mut segments = Vec::new();
        for raw_segment in split_path(raw, self.template.is_some()) {
            if raw_segment.is_empty() {
                return Err(error(
                    at,
                    format!(
                        "{raw:?} has an empty segment; a path is object keys and array indexes \
                         separated by single dots, e.g. \"readings.0.v\""
                    ),
                ));
            }
            let name = self.substitute(raw_segment, at)?;
            if name.contains('.') {
                // Only a placeholder can bring a dot here: a claim may not
                // change the path's shape.
                self.unusable = true;
            }
            segments.push(Segment::new(name));
        }
        Ok(Path(segments))
    }

    pub(super) fn string(&mut self, arg: &Value, at: &str) -> Result<String, FilterError> {
        let raw = checked_str(arg, at)?;
        self.substitute(raw, at)
    }

    pub(super) fn non_empty_string(
        &mut self,
        arg: &Value,
        at: &str,
    ) -> Result<String, FilterError> {
        if arg.as_str() == Some("") {
            return Err(error(at, "must not be empty"));
        }
        self.string(arg, at)
    }

    pub(super) fn scalar(&mut self, arg: &Value, at: &str) -> Result<Scalar, FilterError> {
        Ok(match arg {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(_) => Scalar::Num(number(arg, at)?),
            Value::String(_) => Scalar::Str(self.string(arg, at)?),
            Value::Array(_) | Value::Object(_) => {
                return Err(error(
                    at,
                    format!(
                        "expected a JSON scalar (string, number, boolean or null), got {}",
                        kind(arg)
                    ),
                ))
            }
        })
    }

    pub(super) fn scalars(&mut self, arg: &Value, at: &str) -> Result<Vec<Scalar>, FilterError> {
        let Value::Array(items) = arg else {
            return Err(error(at, format!("expected an array of scalars, got {}", kind(arg))));
        };
        if items.is_empty() || items.len() > MAX_IN_ITEMS {
            return Err(error(
                at,
                format!("expected 1 to {MAX_IN_ITEMS} values, got {}", items.len()),
            ));
        }
        items.iter().enumerate().map(|(i, item)| self.scalar(item, &format!("{at}[{i}]"))).collect()
    }

    /// Replaces placeholders when parsing a template; a client's text is
    /// returned as is (braces included).
    pub(super) fn substitute(&mut self, raw: &str, at: &str) -> Result<String, FilterError> {
        let Some((subject, claims)) = self.template else {
            return Ok(raw.to_owned());
        };
        let parts = crate::template::parse(raw).map_err(|e| error(at, e))?;
        let mut out = String::with_capacity(raw.len());
        for part in &parts {
            match part.value(subject, claims) {
                Some(text) if !text.is_empty() => out.push_str(&text),
                _ => self.unusable = true,
            }
        }
        Ok(out)
    }
}

pub(super) fn as_object<'v>(
    value: &'v Value,
    at: &str,
) -> Result<&'v Map<String, Value>, FilterError> {
    value.as_object().ok_or_else(|| error(at, format!("expected an object, got {}", kind(value))))
}

pub(super) fn checked_str<'v>(value: &'v Value, at: &str) -> Result<&'v str, FilterError> {
    let text = value
        .as_str()
        .ok_or_else(|| error(at, format!("expected a string, got {}", kind(value))))?;
    if text.len() > MAX_STRING_BYTES {
        return Err(error(at, format!("string longer than {MAX_STRING_BYTES} bytes")));
    }
    Ok(text)
}

pub(super) fn number(value: &Value, at: &str) -> Result<Num, FilterError> {
    let n = value
        .as_number()
        .ok_or_else(|| error(at, format!("expected a number, got {}", kind(value))))?;
    Num::new(n).ok_or_else(|| error(at, "number out of range"))
}

/// Splits a path on dots; in a template, dots inside `{...}` (as in
/// `{claims.tenant}`) do not split.
pub(super) fn split_path(raw: &str, template: bool) -> Vec<&str> {
    if template {
        crate::template::split_dots(raw)
    } else {
        raw.split('.').collect()
    }
}
