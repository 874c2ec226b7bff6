//! Evaluating a compiled filter, and its canonical form.

use super::*;

impl Term {
    /// Evaluation (and canonical) order: cheap byte comparisons first, so that
    /// a failing key or header test spares parsing the value.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Term::KeyEq(_) | Term::KeyPrefix(_) => 0,
            Term::Header { .. } => 1,
            Term::ValueEq { .. } | Term::ValueIn { .. } | Term::ValueRange { .. } => 2,
        }
    }

    pub(super) fn needs_value(&self) -> bool {
        self.rank() == 2
    }

    pub(super) fn matches(&self, record: &RecordView<'_>) -> bool {
        match self {
            Term::KeyEq(eq) => record.key == Some(eq.as_bytes()),
            Term::KeyPrefix(prefix) => record.key.is_some_and(|k| k.starts_with(prefix.as_bytes())),
            Term::Header { name, eq } => {
                record.headers.iter().any(|(n, v)| n == name && *v == Some(eq.as_bytes()))
            }
            Term::ValueEq { path, value } => path.lookup(record).is_some_and(|v| value.equals(v)),
            Term::ValueIn { path, values } => {
                path.lookup(record).is_some_and(|v| values.iter().any(|s| s.equals(v)))
            }
            Term::ValueRange { path, lower, upper } => {
                let Some(n) = path.lookup(record).and_then(Value::as_number).and_then(Num::new)
                else {
                    return false;
                };
                let above = lower.is_none_or(|b| match n.compare(b.value) {
                    Ordering::Greater => true,
                    Ordering::Equal => b.inclusive,
                    Ordering::Less => false,
                });
                let below = upper.is_none_or(|b| match n.compare(b.value) {
                    Ordering::Less => true,
                    Ordering::Equal => b.inclusive,
                    Ordering::Greater => false,
                });
                above && below
            }
        }
    }

    pub(super) fn to_json(&self) -> Value {
        let string = |s: &str| Value::String(s.to_owned());
        match self {
            Term::KeyEq(s) => object([("key", object([("eq", string(s))]))]),
            Term::KeyPrefix(s) => object([("key", object([("prefix", string(s))]))]),
            Term::Header { name, eq } => {
                object([("header", object([("eq", string(eq)), ("name", string(name))]))])
            }
            Term::ValueEq { path, value } => {
                object([("value", object([("eq", value.to_json()), ("path", path.to_json())]))])
            }
            Term::ValueIn { path, values } => {
                let values = values.iter().map(Scalar::to_json).collect();
                object([("value", object([("in", values), ("path", path.to_json())]))])
            }
            Term::ValueRange { path, lower, upper } => {
                let mut fields = Map::new();
                // Inserted in sorted order, so the output is sorted whether or
                // not serde_json preserves insertion order.
                if let Some(b) = lower {
                    fields.insert(if b.inclusive { "gte" } else { "gt" }.into(), b.value.to_json());
                }
                if let Some(b) = upper {
                    fields.insert(if b.inclusive { "lte" } else { "lt" }.into(), b.value.to_json());
                }
                fields.insert("path".into(), path.to_json());
                object([("value", Value::Object(fields))])
            }
        }
    }
}

/// Merges, sorts and de-duplicates a conjunction so that equal conditions
/// give equal term lists.
pub(super) fn normalize(terms: Vec<Term>) -> Vec<Term> {
    let mut merged: Vec<Term> = Vec::with_capacity(terms.len());
    for term in terms {
        let term = match term {
            Term::ValueIn { path, mut values } => {
                sort_dedup_by_text(&mut values, Scalar::to_json);
                match <[Scalar; 1]>::try_from(values) {
                    Ok([value]) => Term::ValueEq { path, value },
                    Err(values) => Term::ValueIn { path, values },
                }
            }
            Term::ValueRange { path, lower, upper } => {
                // Bounds on the same path intersect: keep the tighter ones.
                let existing = merged.iter_mut().find_map(|t| match t {
                    Term::ValueRange { path: p, lower, upper } if *p == path => {
                        Some((lower, upper))
                    }
                    _ => None,
                });
                if let Some((l, u)) = existing {
                    *l = tighter(*l, lower, Ordering::Greater);
                    *u = tighter(*u, upper, Ordering::Less);
                    continue;
                }
                Term::ValueRange { path, lower, upper }
            }
            term => term,
        };
        merged.push(term);
    }
    let mut keyed: Vec<((u8, String), Term)> =
        merged.into_iter().map(|t| ((t.rank(), t.to_json().to_string()), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    keyed.into_iter().map(|(_, t)| t).collect()
}

pub(super) fn sort_dedup_by_text<T>(items: &mut Vec<T>, to_json: impl Fn(&T) -> Value) {
    let mut keyed: Vec<(String, T)> =
        items.drain(..).map(|t| (to_json(&t).to_string(), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    items.extend(keyed.into_iter().map(|(_, t)| t));
}

/// The tighter of two bounds: `wins` is the ordering of the value that is
/// tighter (`Greater` for lower bounds, `Less` for upper bounds); at equal
/// values an exclusive bound is tighter.
pub(super) fn tighter(a: Option<Bound>, b: Option<Bound>, wins: Ordering) -> Option<Bound> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => {
            let ord = a.value.compare(b.value);
            let a_wins = if ord == Ordering::Equal { !a.inclusive } else { ord == wins };
            Some(if a_wins { a } else { b })
        }
    }
}

impl Path {
    pub(super) fn lookup<'v>(&self, record: &'v RecordView<'_>) -> Option<&'v Value> {
        let mut current = record.json()?;
        for segment in &self.0 {
            current = match current {
                Value::Object(map) => map.get(&segment.name)?,
                Value::Array(items) => items.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(current)
    }

    pub(super) fn to_json(&self) -> Value {
        let names: Vec<&str> = self.0.iter().map(|s| s.name.as_str()).collect();
        Value::String(names.join("."))
    }
}

impl Segment {
    pub(super) fn new(name: String) -> Self {
        let canonical_decimal =
            name.bytes().all(|b| b.is_ascii_digit()) && (name == "0" || !name.starts_with('0'));
        let index = if canonical_decimal { name.parse().ok() } else { None };
        Self { name, index }
    }
}

impl Scalar {
    pub(super) fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (Scalar::Null, Value::Null) => true,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => Num::new(b) == Some(*a),
            (Scalar::Str(a), Value::String(b)) => a == b,
            _ => false,
        }
    }

    pub(super) fn to_json(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Num(n) => n.to_json(),
            Scalar::Str(s) => Value::String(s.clone()),
        }
    }
}

impl Num {
    /// `None` for a number that is not finite (not produced by serde_json's
    /// parser, but not ruled out by `Number` in general).
    pub(super) fn new(n: &Number) -> Option<Num> {
        if let Some(u) = n.as_u64() {
            return Some(Num::Int(i128::from(u)));
        }
        if let Some(i) = n.as_i64() {
            return Some(Num::Int(i128::from(i)));
        }
        let f = n.as_f64().filter(|f| f.is_finite())?;
        // -2^63 <= f < 2^64: integral values here fit i64 or u64 exactly.
        let in_range = (-9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0).contains(&f);
        Some(if f.fract() == 0.0 && in_range { Num::Int(f as i128) } else { Num::Float(f) })
    }

    /// Exact numeric order.
    pub(super) fn compare(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Float(a), Num::Float(b)) => a.total_cmp(&b),
            (Num::Int(i), Num::Float(f)) => int_vs_float(i, f),
            (Num::Float(f), Num::Int(i)) => int_vs_float(i, f).reverse(),
        }
    }

    pub(super) fn to_json(self) -> Value {
        Value::Number(match self {
            Num::Int(i) => match u64::try_from(i) {
                Ok(u) => Number::from(u),
                // Ints are built from i64/u64 values only.
                Err(_) => Number::from(i64::try_from(i).unwrap_or(i64::MIN)),
            },
            Num::Float(f) => Number::from_f64(f).unwrap_or_else(|| Number::from(0)),
        })
    }
}

/// Orders an `Int` against a `Float`, which by construction is either
/// integral but outside the i64/u64 range, or has a fractional part (and then
/// is below 2^52 in magnitude, so its floor converts exactly).
pub(super) fn int_vs_float(i: i128, f: f64) -> Ordering {
    if f.fract() == 0.0 {
        if f > 0.0 {
            Ordering::Less
        } else {
            Ordering::Greater
        }
    } else if i <= f.floor() as i128 {
        Ordering::Less
    } else {
        Ordering::Greater
    }
}

pub(super) fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub(super) fn error(location: &str, message: impl std::fmt::Display) -> FilterError {
    FilterError(format!("{location}: {message}"))
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
