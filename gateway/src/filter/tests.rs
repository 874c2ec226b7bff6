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

fn claims(value: Value) -> Claims {
    value.as_object().cloned().expect("object").into()
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
    for (t, expected) in [("5", false), ("10", false), ("11", true), ("50", true), ("51", false)] {
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
    assert_error(json!({"key": {"eq": "a"}, "header": {"name": "a", "eq": "b"}}), "exactly one of");
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
    assert_error(json!({"key": {"eq": "a", "prefix": "a"}}), "filter.key: expected exactly one of");
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
    assert_error(json!({"value": {"path": "", "eq": 1}}), "filter.value.path: must not be empty");
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
    let items: Vec<Value> = (0..16).map(|i| json!({"key": {"eq": format!("{i:0>250}")}})).collect();
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
    assert_error(json!({"header": {"name": long, "eq": "x"}}), "filter.header.name: string longer");
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
    let f = Filter::from_template(&template, "alice", &Claims::default()).expect("template");
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
        let f = Filter::from_template(&template, "bob", &claims(case.clone())).expect("template");
        assert_eq!(f, Filter::nothing(), "{case}");
        assert!(!key_matches(&f, Some("acme.1")));
        assert!(!key_matches(&f, Some(".1")), "never the wider prefix \".\"");
    }
    let sub = json!({"key": {"eq": "{sub}"}});
    assert_eq!(Filter::from_template(&sub, "", &Claims::default()), Ok(Filter::nothing()));
    // One unusable placeholder among others still gives nothing.
    let mixed =
        json!({"all": [{"key": {"eq": "{sub}"}}, {"header": {"name": "t", "eq": "{claims.t}"}}]});
    assert_eq!(Filter::from_template(&mixed, "bob", &Claims::default()), Ok(Filter::nothing()));
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
        for claims in [Claims::default(), claims(json!({"tenant": "acme"}))] {
            let message = Filter::from_template(&template, "bob", &claims).expect_err("error").0;
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
