//! A JSON Schema (2020-12) validator for the keywords
//! `docs/json-output.schema.json` uses: `type`, `const`, `enum`,
//! `required`, `properties`, `additionalProperties` (a boolean), `items`,
//! `minItems`, `minimum`, `maximum`, `oneOf`, `allOf`, `if`/`then` and
//! local `$ref`s (`#/$defs/NAME`). Any other keyword is an error, so the
//! schema cannot grow past what is checked here.
//!
//! Written here, for the tests, instead of depending on the `jsonschema`
//! crate: that crate and the ~20 crates it alone pulls in (regex engines,
//! URI and e-mail parsers, …) took about 120 s of compile time of the 560 s
//! a cold `cargo test` build spends (`cargo build --timings`), a minute of
//! the suite's wall time on two cores, to check these dozen keywords. The
//! tests below hold it to the standard's meaning of each one.

use serde_json::Value;

/// Every way `value` breaks `schema` (empty: it matches).
pub fn errors(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, schema, value, "", &mut out);
    out
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
        other => panic!("unknown JSON Schema type {other:?}"),
    }
}

fn check(root: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let s = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return out.push(format!("{at}: nothing is allowed here")),
        Value::Object(s) => s,
        other => panic!("not a schema: {other}"),
    };
    let here = if at.is_empty() { "/" } else { at };
    let fail = |out: &mut Vec<String>, m: String| out.push(format!("{here}: {m}"));
    for (k, kv) in s {
        match k.as_str() {
            "$schema" | "$id" | "title" | "description" | "$defs" | "then" => {}
            "type" => {
                let ok = match kv {
                    Value::String(t) => type_matches(t, v),
                    Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap(), v)),
                    other => panic!("type: {other}"),
                };
                if !ok {
                    fail(out, format!("{v} is not of type {kv}"));
                }
            }
            "const" if v != kv => fail(out, format!("{v} is not {kv}")),
            "const" => {}
            "enum" if !kv.as_array().unwrap().contains(v) => {
                fail(out, format!("{v} is not one of {kv}"))
            }
            "enum" => {}
            "required" => {
                if let Some(o) = v.as_object() {
                    for r in kv.as_array().unwrap() {
                        if !o.contains_key(r.as_str().unwrap()) {
                            fail(out, format!("{r} is required"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (name, sub) in kv.as_object().unwrap() {
                        if let Some(pv) = o.get(name) {
                            check(root, sub, pv, &format!("{at}/{name}"), out);
                        }
                    }
                }
            }
            "additionalProperties" => {
                let allowed = kv.as_bool().expect("additionalProperties: a boolean here");
                if let (false, Some(o)) = (allowed, v.as_object()) {
                    let known = s.get("properties").and_then(Value::as_object);
                    for name in o.keys() {
                        if !known.is_some_and(|p| p.contains_key(name)) {
                            out.push(format!("{at}/{name}: not an allowed property"));
                        }
                    }
                }
            }
            "items" => {
                if let Some(a) = v.as_array() {
                    for (i, item) in a.iter().enumerate() {
                        check(root, kv, item, &format!("{at}/{i}"), out);
                    }
                }
            }
            "minItems" => {
                if let Some(a) = v.as_array()
                    && (a.len() as u64) < kv.as_u64().unwrap()
                {
                    fail(out, format!("fewer than {kv} items"));
                }
            }
            "minimum" | "maximum" => {
                if let (Some(x), Some(limit)) = (v.as_f64(), kv.as_f64()) {
                    let ok = if k == "minimum" {
                        x >= limit
                    } else {
                        x <= limit
                    };
                    if !ok {
                        fail(out, format!("{v} breaks {k} {kv}"));
                    }
                }
            }
            "oneOf" => {
                let matching = kv
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|sub| {
                        let mut e = Vec::new();
                        check(root, sub, v, at, &mut e);
                        e.is_empty()
                    })
                    .count();
                if matching != 1 {
                    fail(
                        out,
                        format!("matches {matching} of oneOf's schemas, not exactly one"),
                    );
                }
            }
            "allOf" => {
                for sub in kv.as_array().unwrap() {
                    check(root, sub, v, at, out);
                }
            }
            "if" => {
                let mut e = Vec::new();
                check(root, kv, v, at, &mut e);
                if e.is_empty()
                    && let Some(then) = s.get("then")
                {
                    check(root, then, v, at, out);
                }
            }
            "$ref" => {
                let name = kv
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                    .unwrap_or_else(|| panic!("only local $refs: {kv}"));
                let target = &root["$defs"][name];
                assert!(!target.is_null(), "no $defs/{name}");
                check(root, target, v, at, out);
            }
            other => {
                panic!("JSON Schema keyword {other:?} is not checked by tests/common/schema.rs")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::errors;

    #[test]
    fn each_keyword_means_what_the_standard_says() {
        let schema = json!({
            "$defs": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
            "type": "object",
            "required": ["a"],
            "additionalProperties": false,
            "properties": {
                "a": {"$ref": "#/$defs/n"},
                "b": {"type": ["string", "null"]},
                "c": {"enum": ["x", "y"]},
                "d": {"type": "array", "minItems": 1, "items": {"const": true}},
                "e": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
                "f": {"allOf": [{"type": "object"}, {"required": ["g"]}]}
            },
            "if": {"properties": {"c": {"const": "x"}}, "required": ["c"]},
            "then": {"required": ["b"]}
        });
        let ok = |v: serde_json::Value| assert!(errors(&schema, &v).is_empty(), "{v}");
        let bad = |v: serde_json::Value| assert!(!errors(&schema, &v).is_empty(), "{v}");
        ok(json!({"a": 3}));
        ok(json!({"a": 0, "b": null, "c": "y", "d": [true], "e": 1.5, "f": {"g": 1}}));
        ok(json!({"a": 9, "c": "x", "b": "here"}));
        bad(json!({}));
        bad(json!({"a": 10}));
        bad(json!({"a": -1}));
        bad(json!({"a": 1.5}));
        bad(json!({"a": 1, "z": 1}));
        bad(json!({"a": 1, "b": 2}));
        bad(json!({"a": 1, "c": "z"}));
        bad(json!({"a": 1, "d": []}));
        bad(json!({"a": 1, "d": [false]}));
        bad(json!({"a": 1, "e": 2}));
        bad(json!({"a": 1, "f": {}}));
        bad(json!({"a": 1, "c": "x"}));
        bad(json!([1]));
    }

    /// Every keyword of every subschema (not only those one instance
    /// reaches) is one [`super::check`] knows.
    fn walk(schema: &serde_json::Value, found: &mut Vec<String>) {
        let Some(o) = schema.as_object() else { return };
        for (k, v) in o {
            found.push(k.clone());
            match k.as_str() {
                "properties" | "$defs" => {
                    v.as_object().unwrap().values().for_each(|s| walk(s, found))
                }
                "oneOf" | "allOf" => v.as_array().unwrap().iter().for_each(|s| walk(s, found)),
                "items" | "if" | "then" => walk(v, found),
                _ => {}
            }
        }
    }

    #[test]
    fn the_envelope_schema_uses_only_checked_keywords() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json-output.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut found = Vec::new();
        walk(&schema, &mut found);
        let known = [
            "$schema",
            "$id",
            "title",
            "description",
            "$defs",
            "type",
            "const",
            "enum",
            "required",
            "properties",
            "additionalProperties",
            "items",
            "minItems",
            "minimum",
            "maximum",
            "oneOf",
            "allOf",
            "if",
            "then",
            "$ref",
        ];
        let unknown: Vec<&String> = found
            .iter()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "keywords schema.rs does not check: {unknown:?}"
        );
        assert!(
            found.len() > 300,
            "the walk reached every subschema: {}",
            found.len()
        );
        for v in [
            json!({"event": "note", "message": "m"}),
            json!({"event": "progress", "phase": "write", "done": 1, "total": 2}),
        ] {
            assert!(errors(&schema, &v).is_empty(), "{v}");
        }
        assert!(!errors(&schema, &json!({"event": "note"})).is_empty());
        assert!(
            !errors(
                &schema,
                &json!({"event": "progress", "phase": "w", "done": -1, "total": 2})
            )
            .is_empty()
        );
    }
}
