//! Server-side record filters for subscriptions.
//!
//! Files: `mod.rs` (the compiled form and its API), `parse.rs` (wire
//! format and ACL templates → compiled form, every limit), `eval.rs`
//! (matching a record, the canonical form), `record.rs` ([`RecordView`]).
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

use crate::auth::Claims;

mod eval;
mod parse;
mod record;
#[cfg(test)]
mod tests;

use eval::*;
use parse::*;
pub use record::RecordView;

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
        claims: &Claims,
    ) -> Result<Filter, FilterError> {
        Parser { template: Some((subject, claims)), unusable: false }.run(template)
    }

    /// Checks a filter template (e.g. when the ACL policy is loaded) without a
    /// principal; succeeds exactly when [`Filter::from_template`] would.
    pub fn check_template(template: &Value) -> Result<(), FilterError> {
        Self::from_template(template, "", &Claims::default()).map(drop)
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
