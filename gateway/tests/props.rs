//! Property tests of the filter parser and evaluator and of the ACL topic
//! patterns, through the crate's public API: no input panics, the canonical
//! form round-trips, evaluation agrees with a plain reading of the
//! documented rules, and claim substitution never widens a grant.

use ferry_gateway::acl::Pattern;
use ferry_gateway::auth::Principal;
use ferry_gateway::filter::{Filter, RecordView};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "[a-c.{}]{0,6}".prop_map(Value::String),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("key".to_owned()), Just("all".to_owned()), "[a-z]{1,6}"],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A small scalar, from a set where equal values collide often.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(|n| json!(n)),
        (-3i64..3).prop_map(|n| json!(n as f64 + 0.5)),
        "[ab]{0,2}".prop_map(Value::String),
    ]
}

/// Paths over the keys the records below use.
fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("0".to_owned())],
        1..3,
    )
}

/// One valid condition in wire form.
fn condition() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[ab.]{0,3}".prop_map(|k| json!({"key": {"eq": k}})),
        "[ab.]{1,3}".prop_map(|k| json!({"key": {"prefix": k}})),
        ("[ht]", "[xy]{0,2}").prop_map(|(n, v)| json!({"header": {"name": n, "eq": v}})),
        (path(), scalar()).prop_map(|(p, s)| json!({"value": {"path": p.join("."), "eq": s}})),
        (path(), prop::collection::vec(scalar(), 1..4))
            .prop_map(|(p, s)| json!({"value": {"path": p.join("."), "in": s}})),
        (path(), prop::sample::select(&["gt", "gte", "lt", "lte"][..]), -3i64..3)
            .prop_map(|(p, op, n)| json!({"value": {"path": p.join("."), op: n}})),
        (path(), -3i64..0, 0i64..3)
            .prop_map(|(p, lo, hi)| json!({"value": {"path": p.join("."), "gte": lo, "lt": hi}})),
    ]
}

/// A valid filter in wire form: a condition, or `all` nested up to 3 deep.
fn valid_filter() -> impl Strategy<Value = Value> {
    condition().prop_recursive(3, 16, 4, |inner| {
        prop::collection::vec(inner, 1..5).prop_map(|items| json!({"all": items}))
    })
}

/// Filter-shaped objects that are often wrong: unknown operators, wrong
/// types, empty strings, deep `all`s.
fn filter_like() -> impl Strategy<Value = Value> {
    let ops = prop::sample::select(
        &["eq", "prefix", "in", "gt", "gte", "lt", "lte", "ne", "name", "path", "all"][..],
    );
    let field = prop::sample::select(&["key", "header", "value", "all", "nothing", "x"][..]);
    let leaf = (field, prop::collection::btree_map(ops, json_value(), 0..4)).prop_map(
        |(f, m)| json!({f: Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())}),
    );
    leaf.prop_recursive(6, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|items| json!({"all": items})),
            (inner.clone(), inner).prop_map(|(a, b)| {
                let mut m = a.as_object().cloned().unwrap_or_default();
                m.extend(b.as_object().cloned().unwrap_or_default());
                Value::Object(m)
            }),
        ]
    })
}

/// A record: key, headers and a JSON-ish value over the same small sets.
#[derive(Debug, Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    value: Option<Vec<u8>>,
}

fn record() -> impl Strategy<Value = Rec> {
    let value_json = prop_oneof![
        scalar(),
        (scalar(), scalar()).prop_map(|(x, y)| json!({"a": x, "b": y})),
        (scalar(), scalar()).prop_map(|(x, y)| json!({"a": {"a": x, "b": [y]}, "b": {"0": y}})),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| json!({"a": v, "b": {"a": v}})),
    ];
    (
        prop::option::of("[ab.]{0,4}".prop_map(String::into_bytes)),
        prop::collection::vec(
            ("[ht]", prop::option::of("[xy]{0,2}".prop_map(String::into_bytes))),
            0..3,
        ),
        prop_oneof![
            Just(None),
            value_json.prop_map(|v| Some(v.to_string().into_bytes())),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(Some),
        ],
    )
        .prop_map(|(key, headers, value)| Rec { key, headers, value })
}

fn matches(filter: &Filter, rec: &Rec) -> bool {
    let headers: Vec<(&str, Option<&[u8]>)> =
        rec.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    let view = RecordView::new(rec.key.as_deref(), &headers, rec.value.as_deref());
    let result = filter.matches(&view);
    if !filter.needs_value() {
        assert_eq!(view.parse_count(), 0, "a filter without value conditions parsed the value");
    }
    assert!(view.parse_count() <= 1);
    result
}

/// The value at `path` in `value`, the way the filter docs define paths.
fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |current, segment| match current {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => {
            let canonical = segment == "0" || !segment.starts_with('0');
            let index: usize = segment.parse().ok().filter(|_| canonical)?;
            items.get(index)
        }
        _ => None,
    })
}

/// JSON scalar equality with numbers compared by value.
fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn principal(subject: &str, claims: Map<String, Value>) -> Principal {
    Principal { subject: subject.to_owned(), claims: claims.into(), expires_at: None }
}

fn plain_segment(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

proptest! {
    #![proptest_config(config())]

    // ---- filter: parser ----

    #[test]
    fn parse_never_panics_on_arbitrary_json(value in json_value()) {
        if let Err(e) = Filter::parse(&value) {
            prop_assert!(!e.0.is_empty());
        }
    }

    #[test]
    fn parse_never_panics_on_filter_shaped_json(value in filter_like()) {
        match Filter::parse(&value) {
            Ok(f) => {
                // Whatever parses has a canonical form that parses back.
                prop_assert_eq!(Filter::parse(&f.to_json()).map(|g| g.canonical()), Ok(f.canonical()));
            }
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    #[test]
    fn valid_filters_parse_and_round_trip(wire in valid_filter()) {
        let f = Filter::parse(&wire).map_err(|e| TestCaseError::fail(format!("{wire}: {e}")))?;
        let again = Filter::parse(&f.to_json()).unwrap();
        prop_assert_eq!(&again, &f);
        prop_assert_eq!(again.canonical(), f.canonical());
        // The canonical text is JSON of the canonical form.
        prop_assert_eq!(serde_json::from_str::<Value>(&f.canonical()).unwrap(), f.to_json());
    }

    #[test]
    fn templates_never_panic(template in filter_like(), subject in ".{0,8}", claim in json_value()) {
        let mut claims = Map::new();
        claims.insert("tenant".into(), claim);
        let checked = Filter::check_template(&template);
        let built = Filter::from_template(&template, &subject, &claims.into());
        // Errors depend only on the template.
        prop_assert_eq!(checked.is_ok(), built.is_ok());
    }

    // ---- filter: evaluation ----

    #[test]
    fn evaluation_agrees_with_the_canonical_form(wire in valid_filter(), rec in record()) {
        let f = Filter::parse(&wire).unwrap();
        let canonical = Filter::parse(&f.to_json()).unwrap();
        prop_assert_eq!(matches(&f, &rec), matches(&canonical, &rec));
    }

    #[test]
    fn and_is_a_conjunction(a in valid_filter(), b in valid_filter(), rec in record()) {
        let (fa, fb) = (Filter::parse(&a).unwrap(), Filter::parse(&b).unwrap());
        let both = fa.clone().and(fb.clone());
        prop_assert_eq!(matches(&both, &rec), matches(&fa, &rec) && matches(&fb, &rec));
    }

    #[test]
    fn all_is_a_conjunction(items in prop::collection::vec(condition(), 1..6), rec in record()) {
        let all = Filter::parse(&json!({"all": items})).unwrap();
        let each = items.iter().all(|c| matches(&Filter::parse(c).unwrap(), &rec));
        prop_assert_eq!(matches(&all, &rec), each);
    }

    #[test]
    fn key_conditions_compare_bytes(wanted in "[ab.]{1,3}", rec in record()) {
        let eq = Filter::parse(&json!({"key": {"eq": wanted}})).unwrap();
        let prefix = Filter::parse(&json!({"key": {"prefix": wanted}})).unwrap();
        let key = rec.key.as_deref();
        prop_assert_eq!(matches(&eq, &rec), key == Some(wanted.as_bytes()));
        prop_assert_eq!(matches(&prefix, &rec), key.is_some_and(|k| k.starts_with(wanted.as_bytes())));
    }

    #[test]
    fn header_condition_matches_any_header_of_that_name(name in "[ht]", wanted in "[xy]{0,2}", rec in record()) {
        let f = Filter::parse(&json!({"header": {"name": name, "eq": wanted}})).unwrap();
        let expected = rec.headers.iter().any(|(n, v)| *n == name && v.as_deref() == Some(wanted.as_bytes()));
        prop_assert_eq!(matches(&f, &rec), expected);
    }

    #[test]
    fn value_conditions_follow_the_documented_rules(
        p in path(),
        s in scalar(),
        list in prop::collection::vec(scalar(), 1..4),
        bound in -3i64..3,
        op in prop::sample::select(&["gt", "gte", "lt", "lte"][..]),
        rec in record(),
    ) {
        let parsed: Option<Value> = rec.value.as_deref().and_then(|v| serde_json::from_slice(v).ok());
        let field = parsed.as_ref().and_then(|v| lookup(v, &p));
        let path = p.join(".");

        let eq = Filter::parse(&json!({"value": {"path": path, "eq": s}})).unwrap();
        prop_assert_eq!(matches(&eq, &rec), field.is_some_and(|f| scalar_eq(f, &s)));

        let any_of = Filter::parse(&json!({"value": {"path": path, "in": list}})).unwrap();
        prop_assert_eq!(matches(&any_of, &rec), field.is_some_and(|f| list.iter().any(|s| scalar_eq(f, s))));

        let range = Filter::parse(&json!({"value": {"path": path, op: bound}})).unwrap();
        let b = bound as f64;
        let expected = field.and_then(Value::as_f64).is_some_and(|x| match op {
            "gt" => x > b,
            "gte" => x >= b,
            "lt" => x < b,
            _ => x <= b,
        });
        prop_assert_eq!(matches(&range, &rec), expected);
    }

    #[test]
    fn imposed_tenant_prefix_never_widens(claim in json_value(), rec in record()) {
        let template = json!({"key": {"prefix": "{claims.tenant}."}});
        let mut claims = Map::new();
        claims.insert("tenant".into(), claim.clone());
        let f = Filter::from_template(&template, "someone", &claims.into()).unwrap();
        if matches(&f, &rec) {
            let text = match &claim {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(TestCaseError::fail(format!("matched with claim {other}"))),
            };
            prop_assert!(!text.is_empty());
            let key = rec.key.as_deref().unwrap();
            let wanted = format!("{}.", text);
            prop_assert!(key.starts_with(wanted.as_bytes()), "key {:?} for claim {:?}", key, text);
        }
    }

    // ---- ACL patterns ----

    #[test]
    fn pattern_parse_and_match_never_panic(
        pattern in prop_oneof![".{0,16}", "[a*.{}]{0,10}", "[a.*]{0,6}(\\{sub\\}|\\{claims\\.[a.]{0,3}\\})?[a.*]{0,4}"],
        topic in prop_oneof![".{0,16}", "[a*.]{0,8}"],
        subject in ".{0,6}",
        claim in json_value(),
    ) {
        let mut claims = Map::new();
        claims.insert("a".into(), claim);
        if let Ok(p) = Pattern::parse(&pattern) {
            let _ = p.matches(&topic, &principal(&subject, claims));
        }
    }

    #[test]
    fn literal_patterns_match_only_themselves(
        pattern in "[ab_-]{1,3}(\\.[ab_-]{1,3}){0,3}",
        topic in prop_oneof!["[ab_-]{1,3}(\\.[ab_-]{1,3}){0,3}", "[ab.]{0,8}"],
    ) {
        let p = Pattern::parse(&pattern).unwrap();
        let who = principal("s", Map::new());
        prop_assert!(p.matches(&pattern, &who));
        prop_assert_eq!(p.matches(&topic, &who), topic == pattern);
    }

    #[test]
    fn star_matches_exactly_one_nonempty_segment(
        segments in prop::collection::vec("[ab]{1,2}", 1..5),
        stars in prop::collection::vec(any::<bool>(), 5),
        topic in "[ab.]{0,9}",
    ) {
        let pattern: Vec<&str> = segments
            .iter()
            .zip(&stars)
            .map(|(s, star)| if *star { "*" } else { s.as_str() })
            .collect();
        let p = Pattern::parse(&pattern.join(".")).unwrap();
        let who = principal("s", Map::new());
        prop_assert!(p.matches(&segments.join("."), &who));
        let parts: Vec<&str> = topic.split('.').collect();
        let expected = parts.len() == pattern.len()
            && parts.iter().zip(&pattern).all(|(t, p)| if *p == "*" { !t.is_empty() } else { t == p });
        prop_assert_eq!(p.matches(&topic, &who), expected);
    }

    #[test]
    fn double_star_matches_one_or_more_segments(prefix in "[ab]{1,2}", topic in "[ab.]{0,9}") {
        let p = Pattern::parse(&format!("{prefix}.**")).unwrap();
        let who = principal("s", Map::new());
        let expected = topic
            .strip_prefix(&format!("{prefix}."))
            .is_some_and(|rest| rest.split('.').next().is_some_and(|s| !s.is_empty()));
        prop_assert_eq!(p.matches(&topic, &who), expected);
    }

    #[test]
    fn claims_and_subject_never_widen(
        claim in prop_oneof![json_value(), "[a-c]{1,3}".prop_map(Value::String), "[a.*]{1,4}".prop_map(Value::String)],
        subject in prop_oneof![".{0,6}", "[a-c]{1,3}", "[a.*]{1,4}"],
        topic in prop_oneof!["t\\.[a-c.*]{0,5}\\.x", "[a-c.*]{0,8}"],
    ) {
        let mut claims = Map::new();
        claims.insert("c".into(), claim.clone());
        let who = principal(&subject, claims);
        let by_claim = Pattern::parse("t.{claims.c}.x").unwrap();
        if by_claim.matches(&topic, &who) {
            let text = match &claim {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(TestCaseError::fail(format!("matched with claim {other}"))),
            };
            prop_assert!(plain_segment(&text), "claim {:?} widened the pattern", text);
            prop_assert_eq!(&topic, &format!("t.{text}.x"));
        }
        let by_subject = Pattern::parse("t.{sub}.x").unwrap();
        if by_subject.matches(&topic, &who) {
            prop_assert!(plain_segment(&subject), "subject {:?} widened the pattern", subject);
            prop_assert_eq!(&topic, &format!("t.{subject}.x"));
        }
    }
}
