//! The OpenAI chat-completions wire format: the choices of a response and error messages (request
//! bodies are engine-specific: [`crate::engine::Engine::request_body`]).

use serde_json::Value;

/// The completions of a response, by choice index (`None`: the server did not return it).
/// Choices with an index outside `0..n` are ignored; a choice without `index` takes the first
/// free slot, as some servers omit it.
pub fn parse_choices(body: &str, n: usize) -> Result<Vec<Option<String>>, String> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| format!("response is not JSON ({e}): {}", excerpt(body)))?;
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("response has no `choices` array: {}", excerpt(body)))?;
    let mut out: Vec<Option<String>> = vec![None; n];
    for c in choices {
        let text = c
            .pointer("/message/content")
            .or_else(|| c.get("text"))
            .map(|t| t.as_str().unwrap_or_default().to_owned())
            .ok_or_else(|| format!("a choice has no message content: {}", excerpt(body)))?;
        let slot = match c.get("index").and_then(Value::as_u64) {
            Some(i) => i as usize,
            None => match out.iter().position(Option::is_none) {
                Some(i) => i,
                None => continue,
            },
        };
        if slot < n && out[slot].is_none() {
            out[slot] = Some(text);
        }
    }
    Ok(out)
}

/// The server's own message from an error body (`{"error": {"message": ...}}`, `{"detail":
/// ...}`, `{"message": ...}`), else the body itself, shortened.
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        for ptr in ["/error/message", "/error", "/detail", "/message"] {
            if let Some(s) = v.pointer(ptr).and_then(Value::as_str) {
                return excerpt(s);
            }
        }
    }
    excerpt(body)
}

/// At most 300 characters of `s`, for error messages.
pub fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_land_by_index_and_missing_ones_stay_empty() {
        let body = r#"{"choices":[{"index":2,"message":{"content":"c"}},{"index":0,"message":{"content":null}},{"index":9,"message":{"content":"x"}}]}"#;
        let got = parse_choices(body, 3).unwrap();
        assert_eq!(got, vec![Some(String::new()), None, Some("c".into())]);
        assert!(parse_choices("<html>", 1).unwrap_err().contains("not JSON"));
        assert!(parse_choices("{}", 1).unwrap_err().contains("choices"));
    }

    #[test]
    fn error_messages_prefer_the_servers_words() {
        assert_eq!(
            error_message(r#"{"error":{"message":"prompt too long"}}"#),
            "prompt too long"
        );
        assert_eq!(error_message(r#"{"detail":"nope"}"#), "nope");
        assert_eq!(error_message("plain"), "plain");
    }
}
