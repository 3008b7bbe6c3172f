//! The plugin API's plain records.

use serde::{Deserialize, Serialize};

/// A chat message; defined once in malt-base for every crate.
pub use malt_base::Message;

/// One answer option of a multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub label: String,
    pub text: String,
}

/// One question, as the benchmark plugin parsed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub question: String,
    pub gold: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    /// Free-form JSON object text ("{}" when there is nothing); kept verbatim for reports.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub metadata: String,
}

fn empty_object() -> String {
    "{}".to_owned()
}

fn is_empty_object(s: &String) -> bool {
    s == "{}" || s.is_empty()
}

impl Example {
    /// `metadata` as the host stores it: a plugin that returns nothing gets "{}".
    pub fn normalised(mut self) -> Self {
        if self.metadata.trim().is_empty() {
            self.metadata = empty_object();
        }
        self
    }
}

/// The output of an earlier agent on the path to the node being prompted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub agent: String,
    pub role: String,
    pub output: String,
}

/// A grade returned by a plugin; reward in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    pub reward: f64,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metadata_normalises_to_an_empty_object() {
        let e = Example {
            id: "1".into(),
            question: "q".into(),
            gold: "g".into(),
            choices: vec![],
            metadata: " ".into(),
        };
        assert_eq!(e.normalised().metadata, "{}");
    }
}
