//! A small JSON Schema checker for the subset of draft 2020-12 that hull's
//! documented schemas use: type (string or list), required, properties,
//! additionalProperties: false, items, enum, minimum and local `$ref`s.
//! Anything else in a schema is an error, so the checker never silently
//! accepts a schema it does not understand.

use serde_json::Value;

/// Checks `doc` against `schema`; returns every violation as "path: problem".
pub fn validate(schema: &Value, doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, schema, doc, "$", &mut errors);
    errors
}

const KNOWN: &[&str] = &[
    "$schema",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
];

fn check(root: &Value, schema: &Value, doc: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        errors.push(format!("{path}: schema is not an object"));
        return;
    };
    for key in obj.keys() {
        if !KNOWN.contains(&key.as_str()) {
            errors.push(format!("{path}: schema keyword {key:?} is not supported"));
        }
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        match r
            .strip_prefix("#/$defs/")
            .and_then(|n| root["$defs"].get(n))
        {
            Some(target) => check(root, target, doc, path, errors),
            None => errors.push(format!("{path}: unresolvable $ref {r}")),
        }
        return;
    }
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| type_matches(t, doc)) {
            errors.push(format!("{path}: expected {types:?}, found {doc}"));
            return;
        }
    }
    if let Some(allowed) = obj.get("enum").and_then(Value::as_array) {
        if !allowed.contains(doc) {
            errors.push(format!("{path}: {doc} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(n)) = (obj.get("minimum").and_then(Value::as_f64), doc.as_f64()) {
        if n < min {
            errors.push(format!("{path}: {n} is below the minimum {min}"));
        }
    }
    if let Some(map) = doc.as_object() {
        for req in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = req.as_str() {
                if !map.contains_key(name) {
                    errors.push(format!("{path}: missing required {name:?}"));
                }
            }
        }
        let props = obj.get("properties").and_then(Value::as_object);
        for (k, v) in map {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => check(root, sub, v, &format!("{path}.{k}"), errors),
                None if obj.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: unexpected property {k:?}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (obj.get("items"), doc.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check(root, items, v, &format!("{path}[{i}]"), errors);
        }
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => false,
    }
}
