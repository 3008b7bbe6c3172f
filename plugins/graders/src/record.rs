//! JSON record helpers with error messages fit for "file:line: ..." prefixes.
use serde_json::{Map, Value};

/// Parses one JSON object text.
pub fn parse_object(line: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "not a JSON object: {}",
            preview(&other.to_string())
        )),
        Err(e) => Err(format!("not a JSON object: {e}")),
    }
}

/// A required string field.
pub fn str_field<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "field `{name}` is not a string: {}",
            preview(&other.to_string())
        )),
        None => Err(format!("missing field `{name}`")),
    }
}

/// An optional id field (string or number), else a deterministic hash of `fallback_key`.
pub fn id_or_hash(map: &Map<String, Value>, prefix: &str, fallback_key: &str) -> String {
    match map.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("{prefix}-{:016x}", crate::fnv1a64(fallback_key)),
    }
}

/// At most 60 characters of `s`, for error messages.
pub fn preview(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
