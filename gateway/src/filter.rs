//! Server-side record filters for subscriptions.
//!
//! A `subscribe` frame may carry a `filter`; records that do not match it
//! never leave the gateway. Subscribers with the same filter (same
//! [`Filter::canonical`] text) are evaluated once per record, and a record's
//! JSON value is parsed at most once however many filters look at it
//! ([`RecordView`]). The ACL may also impose a filter built from the
//! principal's claims ([`Filter::from_template`]); it is AND-ed with the
//! client's ([`Filter::and`]), so a client can only narrow it.
//!
//! # Wire format
//!
//! A filter is a JSON object with exactly one of these fields:
//!
//! | filter | matches when |
//! |---|---|
//! | `{"key": {"eq": "dev-42"}}` | the record key (bytes) equals the UTF-8 string |
//! | `{"key": {"prefix": "acme."}}` | the record key starts with the string (which must not be empty) |
//! | `{"header": {"name": "type", "eq": "alert"}}` | a header with that name has exactly that value; with several headers of that name, any one may match |
//! | `{"value": {"path": "sensor.temp", "eq": 21.5}}` | the value, parsed as JSON, has that scalar at `path` |
//! | `{"value": {"path": "status", "in": ["open", "new"]}}` | the scalar at `path` is one of 1 to 64 listed scalars |
//! | `{"value": {"path": "temp", "gt": 30}}` | the field is a JSON number above 30; likewise `gte`, `lt`, `lte` |
//! | `{"all": [f1, f2]}` | every one of 1 to 16 sub-filters matches |
//!
//! ```json
//! {"type":"subscribe","id":"s1","topic":"telemetry","filter":{"key":{"prefix":"acme."}}}
//! {"type":"subscribe","id":"s2","topic":"telemetry","filter":{"all":[
//!   {"header":{"name":"type","eq":"reading"}},
//!   {"value":{"path":"readings.0.temp","gte":10,"lt":20}}
//! ]}}
//! ```
//!
//! - `path` is dot-separated: object keys, and decimal array indexes
//!   (`readings.0.v`; `0`, `1`, `12` but not `01`). A key that itself
//!   contains a dot cannot be addressed.
//! - `eq` and `in` take JSON scalars: string, number, boolean or `null`
//!   (`null` matches an explicit `null`, not a missing field). Equality is
//!   JSON equality with types respected (`"1"` is not `1`), except that numbers
//!   compare by value (`1` equals `1.0` and `1e0`).
//! - `gt`, `gte`, `lt`, `lte` take numbers and match only fields that are
//!   JSON numbers. One object may combine a lower and an upper bound
//!   (`{"path":"temp","gte":10,"lt":20}`), but not `gt` with `gte` (nor `lt`
//!   with `lte`), and `eq`, `in` and bounds cannot share an object: combine
//!   them with `all`.
//! - A record without a key never matches a `key` filter; a record whose value
//!   is absent or not valid JSON never matches a `value` filter.
//! - Limits: the filter is at most 4096 bytes (as compact JSON), every string
//!   at most 256 bytes, `all` nests at most 4 levels deep. A `path`, a key
//!   `prefix` and a header `name` must not be empty.
//! - Anything else (an unknown field or operator, a wrong type, an empty
//!   `path`, a limit exceeded) is refused with an `error` frame `bad_request`
//!   whose message names the problem and where it is, e.g.
//!   `filter.all[1].value: unknown operator "ne"`.
//!
//! # ACL filter templates
//!
//! A filter imposed by the ACL is written in the same format, and any string
//! in it (including `path` segments and header names) may contain `{sub}`
//! (the token's subject) and `{claims.NAME}` (a string or number claim), e.g.
//! `{"key": {"prefix": "{claims.tenant}."}}`. Substituted text is taken
//! literally: a claim `"acme.*"` yields the prefix `acme.*.`, which matches
//! only keys that literally start with it. If a placeholder has no usable value
//! (the claim is missing, empty, not a string or number, or contains a dot
//! where it would land in a `path`), the imposed filter matches no record at
//! all; it never widens. Templates cannot contain literal `{` or `}`;
//! placeholders always produce strings (`{claims.level}` with a claim `3`
//! gives `"3"`, which does not equal the number `3`).

use std::cell::{Cell, OnceCell};
use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Largest accepted filter, as compact JSON.
const MAX_FILTER_BYTES: usize = 4096;
/// Largest accepted string anywhere in a filter.
const MAX_STRING_BYTES: usize = 256;
/// Most sub-filters in one `all`.
const MAX_ALL_ITEMS: usize = 16;
/// Most scalars in one `in`.
const MAX_IN_ITEMS: usize = 64;
/// Most levels of nested `all`.
const MAX_ALL_DEPTH: usize = 4;

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    repr: Repr,
}

/// Why a filter (or filter template) was refused. The text names the problem
/// and where it is, and is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Repr {
    /// Matches no record.
    Nothing,
    /// Matches when every term does. Never empty; normalised (merged,
    /// sorted cheapest first, de-duplicated).
    All(Vec<Term>),
}

/// One condition. Every filter is a conjunction of these.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    KeyEq(String),
    KeyPrefix(String),
    Header {
        name: String,
        eq: String,
    },
    ValueEq {
        path: Path,
        value: Scalar,
    },
    /// At least two distinct values, sorted by canonical text.
    ValueIn {
        path: Path,
        values: Vec<Scalar>,
    },
    /// At least one bound.
    ValueRange {
        path: Path,
        lower: Option<Bound>,
        upper: Option<Bound>,
    },
}

/// A JSON path: object keys or array indexes.
#[derive(Debug, Clone, PartialEq)]
struct Path(Vec<Segment>);

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    name: String,
    /// The array index this segment denotes, if it is a canonical decimal.
    index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
}

/// A JSON number, normalised so that equal values are equal structurally:
/// every integral value in the i64/u64 range is an `Int`, whatever its
/// spelling (`1`, `1.0`, `1e0`); everything else (fractions, huge values) is
/// a finite `Float`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    value: Num,
    inclusive: bool,
}

impl Filter {
    /// Parses and checks the wire form.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        Parser { template: None, unusable: false }.run(value)
    }

    /// Parses a filter template from the ACL policy: every string leaf may
    /// contain `{sub}` and `{claims.NAME}` placeholders, substituted with the
    /// principal's `subject` / claim values (string or number claims only). A
    /// missing, empty or non-scalar claim (or one with a dot, inside a `path`)
    /// makes the result [`Filter::nothing`] — never a wider filter.
    /// Substituted text is literal (no re-parsing).
    ///
    /// Errors depend only on the template, never on the principal, so
    /// [`Filter::check_template`] at policy load finds them all.
    pub fn from_template(
        template: &Value,
        subject: &str,
        claims: &Map<String, Value>,
    ) -> Result<Filter, FilterError> {
        Parser { template: Some((subject, claims)), unusable: false }.run(template)
    }

    /// Checks a filter template (e.g. when the ACL policy is loaded) without a
    /// principal; succeeds exactly when [`Filter::from_template`] would.
    pub fn check_template(template: &Value) -> Result<(), FilterError> {
        Self::from_template(template, "", &Map::new()).map(drop)
    }

    /// A filter that matches no record.
    pub fn nothing() -> Filter {
        Filter { repr: Repr::Nothing }
    }

    /// Both must match (client filter AND ACL-imposed filter).
    pub fn and(self, other: Filter) -> Filter {
        match (self.repr, other.repr) {
            (Repr::All(mut a), Repr::All(b)) => {
                a.extend(b);
                Filter { repr: Repr::All(normalize(a)) }
            }
            _ => Filter::nothing(),
        }
    }

    /// Canonical text: equal for filters that are the same (key order, `all`
    /// flattening/ordering/duplicates, `1` vs `1.0`, a one-item `in` vs `eq`,
    /// bounds on one path split or combined), used to group subscribers.
    /// Deterministic; it is the compact JSON of [`Filter::to_json`].
    pub fn canonical(&self) -> String {
        self.to_json().to_string()
    }

    /// The canonical wire form: a single condition, or `{"all": [...]}` of
    /// conditions sorted as they are evaluated (key, header, then value
    /// conditions). [`Filter::parse`] accepts it back and yields an equal
    /// filter, except for [`Filter::nothing`], shown as `{"nothing":true}`,
    /// and for a combination from [`Filter::and`] with more than 16 conditions.
    pub fn to_json(&self) -> Value {
        match &self.repr {
            Repr::Nothing => object([("nothing", Value::Bool(true))]),
            Repr::All(terms) => match terms.as_slice() {
                [term] => term.to_json(),
                terms => object([("all", terms.iter().map(Term::to_json).collect())]),
            },
        }
    }

    /// Whether the record matches.
    pub fn matches(&self, record: &RecordView<'_>) -> bool {
        match &self.repr {
            Repr::Nothing => false,
            Repr::All(terms) => terms.iter().all(|term| term.matches(record)),
        }
    }

    /// True when evaluating needs the parsed JSON value (lets the caller skip
    /// parsing).
    pub fn needs_value(&self) -> bool {
        match &self.repr {
            Repr::Nothing => false,
            Repr::All(terms) => terms.iter().any(Term::needs_value),
        }
    }
}

/// A record as the fan-out sees it; parses the JSON value lazily, at most
/// once, however many filters look at it. Not `Sync`: build one per record
/// on the thread that evaluates the filters.
#[derive(Debug)]
pub struct RecordView<'a> {
    key: Option<&'a [u8]>,
    headers: &'a [(&'a str, Option<&'a [u8]>)],
    value: Option<&'a [u8]>,
    /// `None` inside: absent or not JSON.
    parsed: OnceCell<Option<Value>>,
    parses: Cell<usize>,
}

impl<'a> RecordView<'a> {
    pub fn new(
        key: Option<&'a [u8]>,
        headers: &'a [(&'a str, Option<&'a [u8]>)],
        value: Option<&'a [u8]>,
    ) -> Self {
        Self { key, headers, value, parsed: OnceCell::new(), parses: Cell::new(0) }
    }

    /// The record key.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// How many times the value was parsed (0 or 1); for tests.
    pub fn parse_count(&self) -> usize {
        self.parses.get()
    }

    fn json(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| {
                let bytes = self.value?;
                self.parses.set(self.parses.get() + 1);
                serde_json::from_slice(bytes).ok()
            })
            .as_ref()
    }
}

impl Term {
    /// Evaluation (and canonical) order: cheap byte comparisons first, so that
    /// a failing key or header test spares parsing the value.
    fn rank(&self) -> u8 {
        match self {
            Term::KeyEq(_) | Term::KeyPrefix(_) => 0,
            Term::Header { .. } => 1,
            Term::ValueEq { .. } | Term::ValueIn { .. } | Term::ValueRange { .. } => 2,
        }
    }

    fn needs_value(&self) -> bool {
        self.rank() == 2
    }

    fn matches(&self, record: &RecordView<'_>) -> bool {
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

    fn to_json(&self) -> Value {
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
fn normalize(terms: Vec<Term>) -> Vec<Term> {
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

fn sort_dedup_by_text<T>(items: &mut Vec<T>, to_json: impl Fn(&T) -> Value) {
    let mut keyed: Vec<(String, T)> =
        items.drain(..).map(|t| (to_json(&t).to_string(), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    items.extend(keyed.into_iter().map(|(_, t)| t));
}

/// The tighter of two bounds: `wins` is the ordering of the value that is
/// tighter (`Greater` for lower bounds, `Less` for upper bounds); at equal
/// values an exclusive bound is tighter.
fn tighter(a: Option<Bound>, b: Option<Bound>, wins: Ordering) -> Option<Bound> {
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
    fn lookup<'v>(&self, record: &'v RecordView<'_>) -> Option<&'v Value> {
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

    fn to_json(&self) -> Value {
        let names: Vec<&str> = self.0.iter().map(|s| s.name.as_str()).collect();
        Value::String(names.join("."))
    }
}

impl Segment {
    fn new(name: String) -> Self {
        let canonical_decimal =
            name.bytes().all(|b| b.is_ascii_digit()) && (name == "0" || !name.starts_with('0'));
        let index = if canonical_decimal { name.parse().ok() } else { None };
        Self { name, index }
    }
}

impl Scalar {
    fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (Scalar::Null, Value::Null) => true,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => Num::new(b) == Some(*a),
            (Scalar::Str(a), Value::String(b)) => a == b,
            _ => false,
        }
    }

    fn to_json(&self) -> Value {
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
    fn new(n: &Number) -> Option<Num> {
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
    fn compare(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Float(a), Num::Float(b)) => a.total_cmp(&b),
            (Num::Int(i), Num::Float(f)) => int_vs_float(i, f),
            (Num::Float(f), Num::Int(i)) => int_vs_float(i, f).reverse(),
        }
    }

    fn to_json(self) -> Value {
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
fn int_vs_float(i: i128, f: f64) -> Ordering {
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

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn error(location: &str, message: impl std::fmt::Display) -> FilterError {
    FilterError(format!("{location}: {message}"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Counts serialized bytes and stops past the limit.
struct SizeLimit(usize);

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

struct Parser<'a> {
    /// Subject and claims when parsing an ACL template.
    template: Option<(&'a str, &'a Map<String, Value>)>,
    /// A placeholder had no usable value: the result is `nothing`.
    unusable: bool,
}

impl Parser<'_> {
    fn run(mut self, value: &Value) -> Result<Filter, FilterError> {
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

    fn filter(
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

    fn key(&mut self, body: &Value, at: &str) -> Result<Term, FilterError> {
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

    fn header(&mut self, body: &Value, at: &str) -> Result<Term, FilterError> {
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

    fn value(&mut self, body: &Value, at: &str) -> Result<Term, FilterError> {
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

    fn path(&mut self, arg: &Value, at: &str) -> Result<Path, FilterError> {
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

    fn string(&mut self, arg: &Value, at: &str) -> Result<String, FilterError> {
        let raw = checked_str(arg, at)?;
        self.substitute(raw, at)
    }

    fn non_empty_string(&mut self, arg: &Value, at: &str) -> Result<String, FilterError> {
        if arg.as_str() == Some("") {
            return Err(error(at, "must not be empty"));
        }
        self.string(arg, at)
    }

    fn scalar(&mut self, arg: &Value, at: &str) -> Result<Scalar, FilterError> {
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

    fn scalars(&mut self, arg: &Value, at: &str) -> Result<Vec<Scalar>, FilterError> {
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
    fn substitute(&mut self, raw: &str, at: &str) -> Result<String, FilterError> {
        let Some((subject, claims)) = self.template else {
            return Ok(raw.to_owned());
        };
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(error(at, "unmatched `}` (templates cannot contain literal braces)"));
            }
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| error(at, "unclosed `{`"))?;
            let name = &after[..close];
            let text = if name == "sub" {
                Some(subject.to_owned())
            } else if let Some(claim) = name.strip_prefix("claims.").filter(|c| !c.is_empty()) {
                match claims.get(claim) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                }
            } else {
                return Err(error(
                    at,
                    format!("unknown placeholder {{{name}}}; expected {{sub}} or {{claims.NAME}}"),
                ));
            };
            match text {
                Some(text) if !text.is_empty() => out.push_str(&text),
                _ => self.unusable = true,
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn as_object<'v>(value: &'v Value, at: &str) -> Result<&'v Map<String, Value>, FilterError> {
    value.as_object().ok_or_else(|| error(at, format!("expected an object, got {}", kind(value))))
}

fn checked_str<'v>(value: &'v Value, at: &str) -> Result<&'v str, FilterError> {
    let text = value
        .as_str()
        .ok_or_else(|| error(at, format!("expected a string, got {}", kind(value))))?;
    if text.len() > MAX_STRING_BYTES {
        return Err(error(at, format!("string longer than {MAX_STRING_BYTES} bytes")));
    }
    Ok(text)
}

fn number(value: &Value, at: &str) -> Result<Num, FilterError> {
    let n = value
        .as_number()
        .ok_or_else(|| error(at, format!("expected a number, got {}", kind(value))))?;
    Num::new(n).ok_or_else(|| error(at, "number out of range"))
}

/// Splits a path on dots; in a template, dots inside `{...}` (as in
/// `{claims.tenant}`) do not split.
fn split_path(raw: &str, template: bool) -> Vec<&str> {
    if !template {
        return raw.split('.').collect();
    }
    let mut segments = Vec::new();
    let (mut inside, mut start) = (false, 0);
    for (i, c) in raw.char_indices() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            '.' if !inside => {
                segments.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&raw[start..]);
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> Filter {
        Filter::parse(&value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn parse_error(value: Value) -> String {
        match Filter::parse(&value) {
            Ok(f) => panic!("{value} parsed as {}", f.canonical()),
            Err(FilterError(message)) => message,
        }
    }

    fn assert_error(value: Value, expected: &str) {
        let message = parse_error(value.clone());
        assert!(message.contains(expected), "{value}: {message:?} lacks {expected:?}");
    }

    /// Whether `f` matches a record with just this key.
    fn key_matches(f: &Filter, key: Option<&str>) -> bool {
        f.matches(&RecordView::new(key.map(str::as_bytes), &[], None))
    }

    /// Whether `f` matches a record with just this value (as JSON text).
    fn value_matches(f: &Filter, value: &str) -> bool {
        f.matches(&RecordView::new(None, &[], Some(value.as_bytes())))
    }

    fn canonical(value: Value) -> String {
        filter(value).canonical()
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    // ---- matching ----

    #[test]
    fn key_eq() {
        let f = filter(json!({"key": {"eq": "dev-42"}}));
        assert!(key_matches(&f, Some("dev-42")));
        assert!(!key_matches(&f, Some("dev-4")));
        assert!(!key_matches(&f, Some("dev-420")));
        assert!(!key_matches(&f, Some("")));
        assert!(!key_matches(&f, None));
        assert!(!f.needs_value());
    }

    #[test]
    fn key_eq_empty_string_matches_only_empty_key() {
        let f = filter(json!({"key": {"eq": ""}}));
        assert!(key_matches(&f, Some("")));
        assert!(!key_matches(&f, Some("a")));
        assert!(!key_matches(&f, None));
    }

    #[test]
    fn key_eq_compares_bytes() {
        let f = filter(json!({"key": {"eq": "é"}}));
        let record = |key: &'static [u8]| RecordView::new(Some(key), &[], None);
        assert!(f.matches(&record("é".as_bytes())));
        assert!(!f.matches(&record(b"\xff")));
    }

    #[test]
    fn key_prefix() {
        let f = filter(json!({"key": {"prefix": "acme."}}));
        assert!(key_matches(&f, Some("acme.dev-1")));
        assert!(key_matches(&f, Some("acme.")));
        assert!(!key_matches(&f, Some("acme")));
        assert!(!key_matches(&f, Some("acmeX.dev")));
        assert!(!key_matches(&f, Some("other.acme.dev")));
        assert!(!key_matches(&f, None));
    }

    #[test]
    fn header_eq_with_duplicate_names() {
        let f = filter(json!({"header": {"name": "type", "eq": "alert"}}));
        let matches =
            |headers: &[(&str, Option<&[u8]>)]| f.matches(&RecordView::new(None, headers, None));
        assert!(matches(&[("type", Some(b"alert"))]));
        assert!(matches(&[("type", Some(b"info")), ("type", Some(b"alert"))]));
        assert!(matches(&[("type", None), ("other", Some(b"x")), ("type", Some(b"alert"))]));
        assert!(!matches(&[("type", Some(b"info")), ("type", Some(b"warn"))]));
        assert!(!matches(&[("type", Some(b"alerts"))]));
        assert!(!matches(&[("Type", Some(b"alert"))]), "names are case-sensitive");
        assert!(!matches(&[("kind", Some(b"alert"))]));
        assert!(!matches(&[("type", None)]), "a null header has no value");
        assert!(!matches(&[]));
        assert!(!f.needs_value());
    }

    #[test]
    fn header_eq_empty_value() {
        let f = filter(json!({"header": {"name": "flag", "eq": ""}}));
        assert!(f.matches(&RecordView::new(None, &[("flag", Some(b""))], None)));
        assert!(!f.matches(&RecordView::new(None, &[("flag", None)], None)));
    }

    #[test]
    fn value_eq_scalars() {
        let f = filter(json!({"value": {"path": "sensor.kind", "eq": "temp"}}));
        assert!(f.needs_value());
        assert!(value_matches(&f, r#"{"sensor": {"kind": "temp"}}"#));
        assert!(!value_matches(&f, r#"{"sensor": {"kind": "hum"}}"#));
        assert!(!value_matches(&f, r#"{"sensor": {"kind": ["temp"]}}"#));
        assert!(!value_matches(&f, r#"{"sensor": {"type": "temp"}}"#));
        assert!(!value_matches(&f, r#"{"sensor.kind": "temp"}"#));

        let f = filter(json!({"value": {"path": "on", "eq": true}}));
        assert!(value_matches(&f, r#"{"on": true}"#));
        assert!(!value_matches(&f, r#"{"on": false}"#));
        assert!(!value_matches(&f, r#"{"on": "true"}"#));
        assert!(!value_matches(&f, r#"{"on": 1}"#));

        let f = filter(json!({"value": {"path": "gone", "eq": null}}));
        assert!(value_matches(&f, r#"{"gone": null}"#));
        assert!(!value_matches(&f, r#"{}"#), "null is not a missing field");
        assert!(!value_matches(&f, r#"{"gone": 0}"#));
    }

    #[test]
    fn value_eq_types_are_strict() {
        let number = filter(json!({"value": {"path": "v", "eq": 1}}));
        let string = filter(json!({"value": {"path": "v", "eq": "1"}}));
        assert!(value_matches(&number, r#"{"v": 1}"#));
        assert!(!value_matches(&number, r#"{"v": "1"}"#));
        assert!(!value_matches(&number, r#"{"v": true}"#));
        assert!(value_matches(&string, r#"{"v": "1"}"#));
        assert!(!value_matches(&string, r#"{"v": 1}"#));
    }

    #[test]
    fn numbers_compare_by_value() {
        for spelling in ["1", "1.0", "1e0", "10e-1", "1.000"] {
            let record = format!(r#"{{"v": {spelling}}}"#);
            for filter_value in [json!(1), json!(1.0), json!(1u64), json!(1i64)] {
                let f = filter(json!({"value": {"path": "v", "eq": filter_value}}));
                assert!(value_matches(&f, &record), "{filter_value} vs {spelling}");
            }
        }
        let f = filter(json!({"value": {"path": "v", "eq": 1}}));
        assert!(!value_matches(&f, r#"{"v": 1.0000001}"#));
        assert!(!value_matches(&f, r#"{"v": -1}"#));
        let f = filter(json!({"value": {"path": "v", "eq": 0}}));
        assert!(value_matches(&f, r#"{"v": -0.0}"#));
        let f = filter(json!({"value": {"path": "v", "eq": 2.5}}));
        assert!(value_matches(&f, r#"{"v": 2.50}"#));
        assert!(value_matches(&f, r#"{"v": 25e-1}"#));
        assert!(!value_matches(&f, r#"{"v": 2}"#));
        let f = filter(json!({"value": {"path": "v", "eq": -7}}));
        assert!(value_matches(&f, r#"{"v": -7.0}"#));
    }

    #[test]
    fn large_numbers_compare_exactly() {
        let max = filter(json!({"value": {"path": "v", "eq": u64::MAX}}));
        assert!(value_matches(&max, r#"{"v": 18446744073709551615}"#));
        // 2^64 as a float is one more than u64::MAX, though u64::MAX as f64 rounds to it.
        assert!(!value_matches(&max, r#"{"v": 18446744073709551616}"#));
        assert!(!value_matches(&max, r#"{"v": 1.8446744073709552e19}"#));
        let below = filter(json!({"value": {"path": "v", "lt": 18_446_744_073_709_551_616.0}}));
        assert!(value_matches(&below, r#"{"v": 18446744073709551615}"#));
        let above = filter(json!({"value": {"path": "v", "gt": u64::MAX}}));
        assert!(value_matches(&above, r#"{"v": 1.8446744073709552e19}"#));
        assert!(!value_matches(&above, r#"{"v": 18446744073709551615}"#));
        let min = filter(json!({"value": {"path": "v", "eq": i64::MIN}}));
        assert!(value_matches(&min, r#"{"v": -9223372036854775808}"#));
        assert!(value_matches(&min, r#"{"v": -9.223372036854775808e18}"#));
        let huge = filter(json!({"value": {"path": "v", "gte": 1e300}}));
        assert!(value_matches(&huge, r#"{"v": 1e300}"#));
        assert!(value_matches(&huge, r#"{"v": 2e300}"#));
        assert!(!value_matches(&huge, r#"{"v": 18446744073709551615}"#));
        let tiny = filter(json!({"value": {"path": "v", "lt": -1e300}}));
        assert!(value_matches(&tiny, r#"{"v": -2e300}"#));
        assert!(!value_matches(&tiny, r#"{"v": -9223372036854775808}"#));
    }

    #[test]
    fn value_in() {
        let f = filter(json!({"value": {"path": "status", "in": ["open", "new", 3, null]}}));
        assert!(value_matches(&f, r#"{"status": "open"}"#));
        assert!(value_matches(&f, r#"{"status": "new"}"#));
        assert!(value_matches(&f, r#"{"status": 3.0}"#));
        assert!(value_matches(&f, r#"{"status": null}"#));
        assert!(!value_matches(&f, r#"{"status": "closed"}"#));
        assert!(!value_matches(&f, r#"{"status": "3"}"#));
        assert!(!value_matches(&f, r#"{"status": ["open"]}"#));
        assert!(!value_matches(&f, r#"{}"#));
    }

    #[test]
    fn value_in_accepts_64_items() {
        let items: Vec<Value> = (0..64).map(|i| json!(i)).collect();
        let f = filter(json!({"value": {"path": "n", "in": items}}));
        assert!(value_matches(&f, r#"{"n": 63}"#));
        assert!(!value_matches(&f, r#"{"n": 64}"#));
    }

    #[test]
    fn single_bounds() {
        let cases = [
            ("gt", [(29.9, false), (30.0, false), (30.1, true)]),
            ("gte", [(29.9, false), (30.0, true), (30.1, true)]),
            ("lt", [(29.9, true), (30.0, false), (30.1, false)]),
            ("lte", [(29.9, true), (30.0, true), (30.1, false)]),
        ];
        for (op, expectations) in cases {
            let f = filter(json!({"value": {"path": "temp", op: 30}}));
            for (temp, expected) in expectations {
                assert_eq!(
                    value_matches(&f, &format!(r#"{{"temp": {temp}}}"#)),
                    expected,
                    "{op} {temp}"
                );
            }
            assert_eq!(value_matches(&f, r#"{"temp": 30}"#), op.ends_with('e'), "{op} 30");
        }
    }

    #[test]
    fn bounds_need_a_number() {
        let f = filter(json!({"value": {"path": "temp", "gt": 30}}));
        assert!(value_matches(&f, r#"{"temp": 31}"#));
        assert!(!value_matches(&f, r#"{"temp": "31"}"#));
        assert!(!value_matches(&f, r#"{"temp": [31]}"#));
        assert!(!value_matches(&f, r#"{"temp": {"v": 31}}"#));
        assert!(!value_matches(&f, r#"{"temp": true}"#));
        assert!(!value_matches(&f, r#"{"temp": null}"#));
        assert!(!value_matches(&f, r#"{}"#));
    }

    #[test]
    fn combined_bounds() {
        let f = filter(json!({"value": {"path": "temp", "gte": 10, "lt": 20}}));
        for (temp, expected) in [
            ("9.99", false),
            ("10", true),
            ("10.0", true),
            ("15", true),
            ("19.999", true),
            ("20", false),
            ("-15", false),
        ] {
            assert_eq!(value_matches(&f, &format!(r#"{{"temp": {temp}}}"#)), expected, "{temp}");
        }
        let f = filter(json!({"value": {"path": "t", "gt": -1.5, "lte": 2.5}}));
        for (t, expected) in
            [("-1.5", false), ("-1", true), ("2.5", true), ("2.51", false), ("0", true)]
        {
            assert_eq!(value_matches(&f, &format!(r#"{{"t": {t}}}"#)), expected, "{t}");
        }
        // An empty range is accepted and matches nothing.
        let f = filter(json!({"value": {"path": "t", "gt": 5, "lt": 3}}));
        assert!(!value_matches(&f, r#"{"t": 4}"#));
    }

    #[test]
    fn bounds_in_separate_conditions_intersect() {
        let f = filter(json!({"all": [
            {"value": {"path": "t", "gte": 0}},
            {"value": {"path": "t", "gt": 10}},
            {"value": {"path": "t", "lt": 100}},
            {"value": {"path": "t", "lte": 50}},
        ]}));
        assert_eq!(f.canonical(), r#"{"value":{"gt":10,"lte":50,"path":"t"}}"#);
        for (t, expected) in
            [("5", false), ("10", false), ("11", true), ("50", true), ("51", false)]
        {
            assert_eq!(value_matches(&f, &format!(r#"{{"t": {t}}}"#)), expected, "{t}");
        }
    }

    #[test]
    fn nested_paths_and_array_indexes() {
        let record = r#"{"readings": [{"v": 1}, {"v": 2, "tags": ["a", "b"]}], "m": {"0": "zero", "a": {"b": {"c": 7}}}}"#;
        let at = |path: &str, eq: Value| {
            value_matches(&filter(json!({"value": {"path": path, "eq": eq}})), record)
        };
        assert!(at("readings.0.v", json!(1)));
        assert!(at("readings.1.v", json!(2)));
        assert!(at("readings.1.tags.1", json!("b")));
        assert!(!at("readings.0.v", json!(2)));
        assert!(!at("readings.2.v", json!(1)), "index out of range");
        assert!(!at("readings.01.v", json!(1)), "01 is not an index");
        assert!(!at("readings.+0.v", json!(1)));
        assert!(!at("readings.-1.v", json!(2)));
        assert!(!at("readings.v", json!(1)), "a key on an array");
        assert!(at("m.0", json!("zero")), "a digit key on an object");
        assert!(at("m.a.b.c", json!(7)));
        assert!(!at("m.a.b.c.d", json!(7)), "descending into a number");
        assert!(!at("m.a.b", json!(7)));
        assert!(!at("m.x.b.c", json!(7)));

        let f = filter(json!({"value": {"path": "0", "eq": "first"}}));
        assert!(value_matches(&f, r#"["first", "second"]"#), "a top-level array");
        assert!(!value_matches(&f, r#""first""#));
    }

    #[test]
    fn missing_key_or_bad_value_never_matches() {
        let key = filter(json!({"key": {"prefix": "a"}}));
        assert!(!key.matches(&RecordView::new(None, &[], Some(br#"{"a":1}"#))));

        let value = filter(json!({"value": {"path": "a", "eq": 1}}));
        for bytes in [&b"not json"[..], b"{\"a\":1", b"", b"\xff\xfe", b"{\"a\":1} trailing"] {
            let record = RecordView::new(Some(b"k"), &[], Some(bytes));
            assert!(!value.matches(&record), "{bytes:?}");
            assert_eq!(record.parse_count(), 1);
        }
        let absent = RecordView::new(Some(b"k"), &[], None);
        assert!(!value.matches(&absent));
        assert_eq!(absent.parse_count(), 0, "nothing to parse");
        // A value filter that cannot match does not stop key filters from matching.
        let record = RecordView::new(Some(b"abc"), &[], Some(b"not json"));
        assert!(key.matches(&record));
        assert!(!value.matches(&record));
        // Surrounding whitespace is valid JSON.
        assert!(value.matches(&RecordView::new(None, &[], Some(b" {\"a\": 1}\n"))));
    }

    #[test]
    fn all_requires_every_condition() {
        let f = filter(json!({"all": [
            {"key": {"prefix": "acme."}},
            {"header": {"name": "type", "eq": "reading"}},
            {"value": {"path": "temp", "gte": 10}},
        ]}));
        let headers: &[(&str, Option<&[u8]>)] = &[("type", Some(b"reading"))];
        let wrong_headers: &[(&str, Option<&[u8]>)] = &[("type", Some(b"alert"))];
        let rec = |key: &'static str, headers, value: &'static str| {
            RecordView::new(Some(key.as_bytes()), headers, Some(value.as_bytes()))
        };
        assert!(f.matches(&rec("acme.1", headers, r#"{"temp": 12}"#)));
        assert!(!f.matches(&rec("other.1", headers, r#"{"temp": 12}"#)));
        assert!(!f.matches(&rec("acme.1", wrong_headers, r#"{"temp": 12}"#)));
        assert!(!f.matches(&rec("acme.1", headers, r#"{"temp": 9}"#)));
        assert!(f.needs_value());
    }

    #[test]
    fn cheap_conditions_run_first() {
        let f = filter(json!({"all": [{"value": {"path": "a", "eq": 1}}, {"key": {"eq": "k"}}]}));
        let record = RecordView::new(Some(b"other"), &[], Some(br#"{"a": 1}"#));
        assert!(!f.matches(&record));
        assert_eq!(record.parse_count(), 0, "the key test failed before the value was needed");
    }

    #[test]
    fn nested_all() {
        let f = filter(
            json!({"all": [{"all": [{"key": {"prefix": "a"}}, {"all": [{"key": {"prefix": "ab"}}]}]}]}),
        );
        assert!(key_matches(&f, Some("abc")));
        assert!(!key_matches(&f, Some("ac")));
    }

    #[test]
    fn all_nested_four_deep_is_accepted() {
        let leaf = json!({"key": {"eq": "k"}});
        let f = filter(json!({"all": [{"all": [{"all": [{"all": [leaf]}]}]}]}));
        assert!(key_matches(&f, Some("k")));
        assert_eq!(f.canonical(), r#"{"key":{"eq":"k"}}"#);
    }

    #[test]
    fn all_accepts_16_items() {
        let items: Vec<Value> =
            (0..16).map(|i| json!({"key": {"prefix": "k".repeat(i + 1)}})).collect();
        let f = filter(json!({ "all": items }));
        assert!(key_matches(&f, Some(&"k".repeat(16))));
        assert!(!key_matches(&f, Some(&"k".repeat(15))));
    }

    #[test]
    fn nothing_matches_nothing() {
        let f = Filter::nothing();
        assert!(!key_matches(&f, Some("k")));
        assert!(!key_matches(&f, None));
        assert!(!value_matches(&f, "{}"));
        assert!(!f.needs_value());
        assert_eq!(f.canonical(), r#"{"nothing":true}"#);
        assert_eq!(f, Filter::nothing());
        assert!(Filter::parse(&f.to_json()).is_err(), "not a client filter");
    }

    // ---- parse errors ----

    #[test]
    fn error_not_an_object() {
        assert_error(json!(null), "filter: expected an object, got null");
        assert_error(json!("key"), "filter: expected an object, got a string");
        assert_error(json!([{"key": {"eq": "a"}}]), "filter: expected an object, got an array");
        assert_error(json!({"all": [1]}), "filter.all[0]: expected an object, got a number");
    }

    #[test]
    fn error_empty_or_several_fields() {
        assert_error(json!({}), "filter: empty object");
        assert_error(
            json!({"key": {"eq": "a"}, "header": {"name": "a", "eq": "b"}}),
            "exactly one of",
        );
        assert_error(
            json!({"key": {"eq": "a"}, "header": {"name": "a", "eq": "b"}}),
            "combine conditions with `all`",
        );
    }

    #[test]
    fn error_unknown_filter_kind() {
        assert_error(json!({"any": []}), r#"filter: unknown filter "any""#);
        assert_error(json!({"all": [{"not": {}}]}), r#"filter.all[0]: unknown filter "not""#);
        assert_error(json!({"Key": {"eq": "a"}}), r#"unknown filter "Key""#);
    }

    #[test]
    fn error_unknown_operator() {
        assert_error(json!({"key": {"ne": "a"}}), r#"filter.key: unknown operator "ne""#);
        assert_error(json!({"key": {"suffix": "a"}}), r#"unknown operator "suffix""#);
        assert_error(
            json!({"header": {"name": "a", "prefix": "b"}}),
            r#"filter.header: unknown field "prefix""#,
        );
        assert_error(
            json!({"value": {"path": "a", "ne": 1}}),
            r#"filter.value: unknown operator "ne""#,
        );
        assert_error(
            json!({"value": {"path": "a", "eq": 1, "regex": "x"}}),
            r#"unknown operator "regex""#,
        );
        assert_error(
            json!({"all": [{"key": {"eq": "a"}}, {"value": {"path": "a", "ge": 1}}]}),
            r#"filter.all[1].value: unknown operator "ge""#,
        );
    }

    #[test]
    fn error_missing_or_conflicting_operators() {
        assert_error(json!({"key": {}}), "filter.key: expected one of `eq`, `prefix`");
        assert_error(
            json!({"key": {"eq": "a", "prefix": "a"}}),
            "filter.key: expected exactly one of",
        );
        assert_error(json!({"header": {"name": "a"}}), "filter.header: missing `eq`");
        assert_error(json!({"header": {"eq": "a"}}), "filter.header: missing `name`");
        assert_error(json!({"value": {"eq": 1}}), "filter.value: missing `path`");
        assert_error(json!({"value": {"path": "a"}}), "filter.value: missing an operator");
        assert_error(json!({"value": {"path": "a", "eq": 1, "in": [1]}}), "cannot be combined");
        assert_error(json!({"value": {"path": "a", "eq": 1, "gt": 0}}), "cannot be combined");
        assert_error(json!({"value": {"path": "a", "in": [1], "lt": 5}}), "cannot be combined");
        assert_error(
            json!({"value": {"path": "a", "gt": 1, "gte": 1}}),
            "`gt` and `gte` cannot both be given",
        );
        assert_error(
            json!({"value": {"path": "a", "lt": 1, "lte": 1}}),
            "`lt` and `lte` cannot both be given",
        );
    }

    #[test]
    fn error_empty_strings() {
        assert_error(
            json!({"value": {"path": "", "eq": 1}}),
            "filter.value.path: must not be empty",
        );
        assert_error(json!({"value": {"path": "a..b", "eq": 1}}), "empty segment");
        assert_error(json!({"value": {"path": ".a", "eq": 1}}), "empty segment");
        assert_error(json!({"value": {"path": "a.", "eq": 1}}), "empty segment");
        assert_error(json!({"key": {"prefix": ""}}), "filter.key.prefix: must not be empty");
        assert_error(
            json!({"header": {"name": "", "eq": "x"}}),
            "filter.header.name: must not be empty",
        );
    }

    #[test]
    fn error_wrong_types() {
        assert_error(json!({"key": "dev-42"}), "filter.key: expected an object, got a string");
        assert_error(json!({"key": {"eq": 42}}), "filter.key.eq: expected a string, got a number");
        assert_error(
            json!({"key": {"prefix": null}}),
            "filter.key.prefix: expected a string, got null",
        );
        assert_error(
            json!({"header": {"name": "a", "eq": 1}}),
            "filter.header.eq: expected a string, got a number",
        );
        assert_error(
            json!({"header": {"name": ["a"], "eq": "b"}}),
            "filter.header.name: expected a string, got an array",
        );
        assert_error(
            json!({"value": {"path": ["a", "b"], "eq": 1}}),
            "filter.value.path: expected a string, got an array",
        );
        assert_error(
            json!({"value": {"path": "a", "eq": [1]}}),
            "filter.value.eq: expected a JSON scalar",
        );
        assert_error(json!({"value": {"path": "a", "eq": {"b": 1}}}), "got an object");
        assert_error(
            json!({"value": {"path": "a", "in": 1}}),
            "filter.value.in: expected an array of scalars, got a number",
        );
        assert_error(
            json!({"value": {"path": "a", "in": [1, [2]]}}),
            "filter.value.in[1]: expected a JSON scalar",
        );
        assert_error(
            json!({"value": {"path": "a", "gt": "30"}}),
            "filter.value.gt: expected a number, got a string",
        );
        assert_error(
            json!({"value": {"path": "a", "lte": null}}),
            "filter.value.lte: expected a number, got null",
        );
        assert_error(
            json!({"all": {"key": {"eq": "a"}}}),
            "filter.all: expected an array, got an object",
        );
        assert_error(json!({"value": [1]}), "filter.value: expected an object, got an array");
    }

    #[test]
    fn error_too_many_items() {
        let items: Vec<Value> = (0..17).map(|i| json!({"key": {"eq": i.to_string()}})).collect();
        assert_error(json!({ "all": items }), "filter.all: expected 1 to 16 filters, got 17");
        assert_error(json!({"all": []}), "filter.all: expected 1 to 16 filters, got 0");
        let values: Vec<Value> = (0..65).map(|i| json!(i)).collect();
        assert_error(
            json!({"value": {"path": "a", "in": values}}),
            "filter.value.in: expected 1 to 64 values, got 65",
        );
        assert_error(json!({"value": {"path": "a", "in": []}}), "expected 1 to 64 values, got 0");
    }

    #[test]
    fn error_too_deep() {
        let leaf = json!({"key": {"eq": "k"}});
        let five = json!({"all": [{"all": [{"all": [{"all": [{"all": [leaf]}]}]}]}]});
        assert_error(five, "filter.all[0].all[0].all[0].all[0].all: `all` nested more than 4 deep");
    }

    #[test]
    fn error_oversize() {
        let items: Vec<Value> =
            (0..16).map(|i| json!({"key": {"eq": format!("{i:0>250}")}})).collect();
        let big = json!({ "all": items });
        assert!(big.to_string().len() > 4096);
        assert_error(big, "filter: larger than 4096 bytes");

        // Exactly at the limit is fine, one byte more is not.
        let pad = |n: usize| -> Value {
            let items: Vec<Value> = (0..15)
                .map(|i| json!({"header": {"name": format!("h{i:0>2}"), "eq": "x".repeat(236)}}))
                .collect();
            let mut items = items;
            items.push(json!({"key": {"eq": "y".repeat(n)}}));
            json!({ "all": items })
        };
        let base = pad(0).to_string().len();
        assert!(base < 4096 && 4096 - base <= 256, "{base}");
        let exact = pad(4096 - base);
        assert_eq!(exact.to_string().len(), 4096);
        assert!(Filter::parse(&exact).is_ok());
        let over = pad(4097 - base);
        assert_error(over, "larger than 4096 bytes");
    }

    #[test]
    fn error_string_too_long() {
        let ok = "a".repeat(256);
        let long = "a".repeat(257);
        assert!(Filter::parse(&json!({"key": {"eq": ok}})).is_ok());
        assert_error(json!({"key": {"eq": long}}), "filter.key.eq: string longer than 256 bytes");
        assert_error(json!({"key": {"prefix": long}}), "string longer than 256 bytes");
        assert_error(
            json!({"header": {"name": long, "eq": "x"}}),
            "filter.header.name: string longer",
        );
        assert_error(json!({"value": {"path": long, "eq": 1}}), "filter.value.path: string longer");
        assert_error(
            json!({"value": {"path": "a", "in": ["x", long]}}),
            "filter.value.in[1]: string longer",
        );
        // Multi-byte characters count in bytes.
        assert_error(json!({"key": {"eq": "é".repeat(129)}}), "string longer than 256 bytes");
    }

    #[test]
    fn client_braces_are_literal() {
        let f = filter(json!({"key": {"eq": "{sub}"}}));
        assert!(key_matches(&f, Some("{sub}")));
        let f = filter(json!({"value": {"path": "{claims.a.b}", "eq": 1}}));
        assert!(value_matches(&f, r#"{"{claims": {"a": {"b}": 1}}}"#));
    }

    // ---- canonical form ----

    #[test]
    fn canonical_equal_for_equal_filters() {
        let groups = [
            vec![
                json!({"value": {"path": "temp", "gte": 10, "lt": 20}}),
                serde_json::from_str(r#"{"value": {"lt": 20.0, "path": "temp", "gte": 1e1}}"#).expect("json"),
                json!({"all": [{"value": {"path": "temp", "lt": 20}}, {"value": {"path": "temp", "gte": 10}}]}),
                json!({"all": [{"all": [{"value": {"path": "temp", "gte": 10.0}}]}, {"value": {"path": "temp", "lt": 2e1}}]}),
                json!({"all": [{"value": {"path": "temp", "gte": 10, "lt": 30}}, {"value": {"path": "temp", "gte": 5, "lt": 20}}]}),
            ],
            vec![
                json!({"all": [{"key": {"prefix": "acme."}}, {"header": {"name": "type", "eq": "alert"}}]}),
                serde_json::from_str(r#"{"all": [{"header": {"eq": "alert", "name": "type"}}, {"key": {"prefix": "acme."}}]}"#)
                    .expect("json"),
                json!({"all": [{"all": [{"key": {"prefix": "acme."}}]}, {"all": [{"header": {"name": "type", "eq": "alert"}}, {"key": {"prefix": "acme."}}]}]}),
            ],
            vec![
                json!({"key": {"eq": "a"}}),
                json!({"all": [{"key": {"eq": "a"}}]}),
                json!({"all": [{"key": {"eq": "a"}}, {"key": {"eq": "a"}}]}),
            ],
            vec![
                json!({"value": {"path": "n", "eq": 1}}),
                json!({"value": {"path": "n", "eq": 1.0}}),
                serde_json::from_str(r#"{"value": {"path": "n", "eq": 1e0}}"#).expect("json"),
                json!({"value": {"path": "n", "in": [1]}}),
                json!({"value": {"path": "n", "in": [1, 1.0]}}),
            ],
            vec![
                json!({"value": {"path": "s", "in": ["b", "a", 2, null, true]}}),
                json!({"value": {"path": "s", "in": [true, null, 2.0, "a", "b", "a"]}}),
            ],
            vec![
                json!({"value": {"path": "t", "gt": 10}}),
                json!({"all": [{"value": {"path": "t", "gte": 10}}, {"value": {"path": "t", "gt": 10}}]}),
            ],
        ];
        for group in groups {
            let first = canonical(group[0].clone());
            for other in &group[1..] {
                assert_eq!(canonical(other.clone()), first, "{} vs {}", group[0], other);
                assert_eq!(filter(other.clone()), filter(group[0].clone()));
            }
        }
    }

    #[test]
    fn canonical_differs_for_different_filters() {
        let filters = [
            json!({"key": {"eq": "a"}}),
            json!({"key": {"eq": "b"}}),
            json!({"key": {"prefix": "a"}}),
            json!({"header": {"name": "a", "eq": "b"}}),
            json!({"header": {"name": "b", "eq": "a"}}),
            json!({"value": {"path": "a", "eq": "b"}}),
            json!({"value": {"path": "a", "eq": 1}}),
            json!({"value": {"path": "a", "eq": "1"}}),
            json!({"value": {"path": "a", "eq": 1.5}}),
            json!({"value": {"path": "a", "eq": true}}),
            json!({"value": {"path": "a", "eq": null}}),
            json!({"value": {"path": "b", "eq": 1}}),
            json!({"value": {"path": "a.b", "eq": 1}}),
            json!({"value": {"path": "a", "in": [1, 2]}}),
            json!({"value": {"path": "a", "in": [1, 3]}}),
            json!({"value": {"path": "a", "gt": 1}}),
            json!({"value": {"path": "a", "gte": 1}}),
            json!({"value": {"path": "a", "lt": 1}}),
            json!({"value": {"path": "a", "gt": 1, "lt": 5}}),
            json!({"value": {"path": "b", "gt": 1}}),
            json!({"all": [{"key": {"eq": "a"}}, {"key": {"prefix": "a"}}]}),
            json!({"all": [{"value": {"path": "a", "gt": 1}}, {"value": {"path": "b", "gt": 1}}]}),
        ];
        let texts: Vec<String> = filters.iter().map(|f| canonical(f.clone())).collect();
        for (i, a) in texts.iter().enumerate() {
            for (j, b) in texts.iter().enumerate() {
                if i != j {
                    assert_ne!(a, b, "{} vs {}", filters[i], filters[j]);
                }
            }
            assert_ne!(a, &Filter::nothing().canonical());
        }
    }

    #[test]
    fn canonical_is_sorted_compact_json() {
        let f = filter(json!({"all": [
            {"value": {"path": "temp", "lt": 20.5, "gte": 10.0}},
            {"header": {"name": "type", "eq": "a\"b"}},
            {"key": {"prefix": "acme."}},
        ]}));
        assert_eq!(
            f.canonical(),
            r#"{"all":[{"key":{"prefix":"acme."}},{"header":{"eq":"a\"b","name":"type"}},{"value":{"gte":10,"lt":20.5,"path":"temp"}}]}"#
        );
        assert_eq!(f.canonical(), f.clone().canonical(), "deterministic");
        assert_eq!(f.to_json().to_string(), f.canonical());
    }

    #[test]
    fn to_json_round_trips() {
        let filters = [
            json!({"key": {"eq": "dev-42"}}),
            json!({"value": {"path": "readings.0.v", "in": [3, "x", null, false, 2.25]}}),
            json!({"all": [
                {"header": {"name": "type", "eq": "alert"}},
                {"value": {"path": "t", "gt": -3.5, "lte": 18446744073709551615u64}},
                {"value": {"path": "big", "lt": 1e300}},
                {"key": {"prefix": "{x}"}},
            ]}),
        ];
        for value in filters {
            let f = filter(value);
            let again = filter(f.to_json());
            assert_eq!(again, f);
            assert_eq!(again.canonical(), f.canonical());
        }
    }

    // ---- templates ----

    #[test]
    fn template_substitutes_subject_and_claims() {
        let template = json!({"all": [
            {"key": {"prefix": "{claims.tenant}."}},
            {"header": {"name": "owner", "eq": "{sub}"}},
            {"value": {"path": "sites.{claims.site}.level", "in": ["{claims.level}", "x-{sub}-{claims.tenant}"]}},
        ]});
        let claims = claims(json!({"tenant": "acme", "site": 7, "level": 3}));
        let f = Filter::from_template(&template, "alice", &claims).expect("template");
        assert_eq!(
            f.canonical(),
            canonical(json!({"all": [
                {"key": {"prefix": "acme."}},
                {"header": {"name": "owner", "eq": "alice"}},
                {"value": {"path": "sites.7.level", "in": ["3", "x-alice-acme"]}},
            ]}))
        );
        let headers: &[(&str, Option<&[u8]>)] = &[("owner", Some(b"alice"))];
        let value = br#"{"sites": {"7": {"level": "3"}}}"#;
        assert!(f.matches(&RecordView::new(Some(b"acme.dev"), headers, Some(value))));
        assert!(!f.matches(&RecordView::new(Some(b"evil.dev"), headers, Some(value))));
        // A number claim becomes text, not a number.
        let number = br#"{"sites": {"7": {"level": 3}}}"#;
        assert!(!f.matches(&RecordView::new(Some(b"acme.dev"), headers, Some(number))));
    }

    #[test]
    fn template_without_placeholders_is_a_plain_filter() {
        let template = json!({"value": {"path": "kind", "eq": 1}});
        let f = Filter::from_template(&template, "alice", &Map::new()).expect("template");
        assert_eq!(f, filter(template));
    }

    #[test]
    fn template_hostile_claim_is_literal() {
        let template = json!({"key": {"prefix": "{claims.tenant}."}});
        for hostile in ["acme.*", "**", ".*", "acme\"}, {\"x", "{sub}"] {
            let f = Filter::from_template(&template, "bob", &claims(json!({"tenant": hostile})))
                .expect("template");
            let prefix = format!("{hostile}.");
            assert_eq!(f, filter(json!({"key": {"prefix": prefix}})), "{hostile}");
            assert!(key_matches(&f, Some(&format!("{prefix}dev"))));
        }
        let f = Filter::from_template(&template, "bob", &claims(json!({"tenant": "acme.*"})))
            .expect("template");
        assert!(key_matches(&f, Some("acme.*.dev-1")));
        assert!(!key_matches(&f, Some("acme.dev-1")));
        assert!(!key_matches(&f, Some("acme.x.dev-1")));
        assert!(!key_matches(&f, Some("acme.")));
        assert!(!key_matches(&f, Some("other.dev")));
    }

    #[test]
    fn template_unusable_claim_yields_nothing() {
        let template = json!({"key": {"prefix": "{claims.tenant}."}});
        let cases = [
            json!({}),
            json!({"tenant": null}),
            json!({"tenant": ""}),
            json!({"tenant": true}),
            json!({"tenant": ["acme"]}),
            json!({"tenant": {"name": "acme"}}),
            json!({"Tenant": "acme"}),
        ];
        for case in cases {
            let f =
                Filter::from_template(&template, "bob", &claims(case.clone())).expect("template");
            assert_eq!(f, Filter::nothing(), "{case}");
            assert!(!key_matches(&f, Some("acme.1")));
            assert!(!key_matches(&f, Some(".1")), "never the wider prefix \".\"");
        }
        let sub = json!({"key": {"eq": "{sub}"}});
        assert_eq!(Filter::from_template(&sub, "", &Map::new()), Ok(Filter::nothing()));
        // One unusable placeholder among others still gives nothing.
        let mixed = json!({"all": [{"key": {"eq": "{sub}"}}, {"header": {"name": "t", "eq": "{claims.t}"}}]});
        assert_eq!(Filter::from_template(&mixed, "bob", &Map::new()), Ok(Filter::nothing()));
    }

    #[test]
    fn template_claim_in_path_is_one_segment() {
        let template = json!({"value": {"path": "by_tenant.{claims.tenant}.on", "eq": true}});
        let f = Filter::from_template(&template, "bob", &claims(json!({"tenant": "acme"})))
            .expect("template");
        assert!(value_matches(&f, r#"{"by_tenant": {"acme": {"on": true}}}"#));
        let dotted = Filter::from_template(&template, "bob", &claims(json!({"tenant": "acme.x"})))
            .expect("template");
        assert_eq!(dotted, Filter::nothing(), "a claim may not change the path's shape");
    }

    #[test]
    fn template_errors() {
        let cases = [
            (json!({"key": {"eq": "{tenant}"}}), "filter.key.eq: unknown placeholder {tenant}"),
            (json!({"key": {"eq": "{claims.}"}}), "unknown placeholder {claims.}"),
            (json!({"key": {"eq": "{claims.tenant"}}), "filter.key.eq: unclosed `{`"),
            (json!({"key": {"eq": "a}"}}), "filter.key.eq: unmatched `}`"),
            (json!({"key": {"eq": "{}"}}), "unknown placeholder {}"),
            (
                json!({"value": {"path": "a.{x}", "eq": 1}}),
                "filter.value.path: unknown placeholder {x}",
            ),
            (json!({"value": {"path": "a..{sub}", "eq": 1}}), "empty segment"),
            (json!({"key": {"ne": "{sub}"}}), "unknown operator"),
            (json!({"key": {"eq": "x".repeat(257)}}), "longer than 256 bytes"),
        ];
        for (template, expected) in cases {
            // Errors do not depend on the principal: found with or without claims.
            for claims in [Map::new(), claims(json!({"tenant": "acme"}))] {
                let message =
                    Filter::from_template(&template, "bob", &claims).expect_err("error").0;
                assert!(message.contains(expected), "{template}: {message:?} lacks {expected:?}");
            }
            let message = Filter::check_template(&template).expect_err("error").0;
            assert!(message.contains(expected), "{template}: {message:?}");
        }
        assert_eq!(Filter::check_template(&json!({"key": {"prefix": "{claims.tenant}."}})), Ok(()));
    }

    // ---- and ----

    #[test]
    fn and_requires_both() {
        let client = filter(json!({"value": {"path": "temp", "gt": 30}}));
        let imposed = Filter::from_template(
            &json!({"key": {"prefix": "{claims.tenant}."}}),
            "bob",
            &claims(json!({"tenant": "acme"})),
        )
        .expect("template");
        let both = client.clone().and(imposed.clone());
        let rec =
            |key: &'static [u8], value: &'static [u8]| RecordView::new(Some(key), &[], Some(value));
        assert!(both.matches(&rec(b"acme.1", br#"{"temp": 31}"#)));
        assert!(!both.matches(&rec(b"acme.1", br#"{"temp": 29}"#)));
        assert!(!both.matches(&rec(b"other.1", br#"{"temp": 31}"#)));
        assert!(both.needs_value());
        assert_eq!(both.canonical(), imposed.clone().and(client.clone()).canonical());
        assert_eq!(
            both.canonical(),
            canonical(
                json!({"all": [{"key": {"prefix": "acme."}}, {"value": {"path": "temp", "gt": 30}}]})
            )
        );
        assert_eq!(both.clone().and(both.clone()), both, "idempotent");
    }

    #[test]
    fn and_cannot_widen() {
        let imposed = filter(json!({"key": {"prefix": "acme."}}));
        // Whatever the client asks for, records outside the tenant stay out.
        let clients = [
            json!({"key": {"prefix": "other."}}),
            json!({"key": {"eq": "other.1"}}),
            json!({"value": {"path": "a", "eq": 1}}),
        ];
        for client in clients {
            let f = filter(client).and(imposed.clone());
            for key in [&b"other.1"[..], b"acmeX", b""] {
                assert!(!f.matches(&RecordView::new(Some(key), &[], Some(br#"{"a":1}"#))));
            }
        }
    }

    #[test]
    fn and_with_nothing_is_nothing() {
        let f = filter(json!({"key": {"prefix": "a"}}));
        assert_eq!(f.clone().and(Filter::nothing()), Filter::nothing());
        assert_eq!(Filter::nothing().and(f), Filter::nothing());
        assert_eq!(Filter::nothing().and(Filter::nothing()), Filter::nothing());
    }

    #[test]
    fn and_merges_bounds() {
        let a = filter(json!({"value": {"path": "t", "gte": 0, "lt": 100}}));
        let b = filter(json!({"value": {"path": "t", "gt": 0, "lte": 100}}));
        assert_eq!(a.and(b).canonical(), r#"{"value":{"gt":0,"lt":100,"path":"t"}}"#);
    }

    // ---- RecordView ----

    #[test]
    fn value_is_parsed_at_most_once() {
        let filters: Vec<Filter> = vec![
            filter(json!({"value": {"path": "temp", "gt": 20}})),
            filter(json!({"value": {"path": "temp", "lt": 20}})),
            filter(json!({"value": {"path": "temp", "eq": 21.5}})),
            filter(json!({"value": {"path": "site", "eq": "north"}})),
            filter(json!({"value": {"path": "site", "in": ["south", "east"]}})),
            filter(json!({"value": {"path": "readings.0", "gte": 1}})),
            filter(json!({"value": {"path": "readings.1", "lte": 1}})),
            filter(json!({"value": {"path": "ok", "eq": true}})),
            filter(json!({"value": {"path": "missing.deep", "eq": null}})),
            filter(
                json!({"all": [{"key": {"prefix": "dev"}}, {"value": {"path": "temp", "gte": 21.5}}]}),
            ),
        ];
        let distinct: std::collections::BTreeSet<String> =
            filters.iter().map(Filter::canonical).collect();
        assert_eq!(distinct.len(), 10);
        let value = br#"{"temp": 21.5, "site": "north", "readings": [1, 2], "ok": true}"#;
        let record = RecordView::new(Some(b"dev-1"), &[], Some(value));
        assert_eq!(record.parse_count(), 0, "lazy");
        let results: Vec<bool> = filters.iter().map(|f| f.matches(&record)).collect();
        assert_eq!(results, [true, false, true, true, false, true, false, true, false, true]);
        assert_eq!(record.parse_count(), 1);
        // Again: still once.
        assert!(filters.iter().any(|f| f.matches(&record)));
        assert_eq!(record.parse_count(), 1);
    }

    #[test]
    fn value_not_parsed_without_value_filters() {
        let filters = [
            filter(json!({"key": {"eq": "k"}})),
            filter(json!({"header": {"name": "t", "eq": "x"}})),
            Filter::nothing(),
        ];
        assert!(filters.iter().all(|f| !f.needs_value()));
        let record = RecordView::new(Some(b"k"), &[("t", Some(b"x"))], Some(br#"{"a": 1}"#));
        for f in &filters {
            f.matches(&record);
        }
        assert_eq!(record.parse_count(), 0);
    }
}
