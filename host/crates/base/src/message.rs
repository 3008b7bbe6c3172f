//! The chat message, `{"role": ..., "content": ...}`, one type for every crate: the plugin API's
//! rendered prompts, the trees and datasets in a run directory, the model's chat template,
//! training records and the OpenAI wire format of `malt serve`.
//!
//! Its serialized form is exactly the two fields in that order; trees.jsonl, sft.jsonl,
//! dpo.jsonl and reports already on disk hold it.

use serde::{Deserialize, Serialize};

/// A chat message; role is "system", "user" or "assistant".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_role_then_content() {
        let m = Message::user("2 + 2?");
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"role":"user","content":"2 + 2?"}"#);
        assert_eq!(serde_json::from_str::<Message>(&s).unwrap(), m);
    }

    #[test]
    fn constructors_set_the_role() {
        assert_eq!(Message::system("s"), Message::new("system", "s"));
        assert_eq!(Message::assistant(String::from("a")).role, "assistant");
    }
}
