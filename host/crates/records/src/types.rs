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

/// How a plugin found an answer in an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// After an explicit final-answer marker (`#### 72`, `\boxed{}`, `The answer is`,
    /// `Final Answer:`).
    Marker,
    /// By a fallback, e.g. the last number of the output.
    Fallback,
    /// The plugin does not say (API 0.1.0 plugins).
    Unknown,
}

/// An answer a plugin extracted from an output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// The answer as found: what grading receives and logs show.
    pub answer: String,
    /// The plugin's canonical voting key (e.g. "0.5" for "\dfrac{1}{2}"); `None` from API 0.1.0
    /// plugins, whose answers vote as they are, trimmed.
    pub key: Option<String>,
    pub found_by: AnswerSource,
}

impl Extracted {
    /// An answer from a plugin that gives no key and no source (API 0.1.0).
    pub fn bare(answer: String) -> Extracted {
        Extracted {
            answer,
            key: None,
            found_by: AnswerSource::Unknown,
        }
    }

    /// What this answer votes with: its key, else the answer trimmed.
    pub fn vote_key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.answer).trim()
    }
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
    fn answers_vote_on_their_key_else_on_the_trimmed_answer() {
        let keyed = Extracted {
            answer: "\\dfrac{1}{2}".into(),
            key: Some("0.5".into()),
            found_by: AnswerSource::Marker,
        };
        assert_eq!(keyed.vote_key(), "0.5");
        assert_eq!(Extracted::bare(" 7\n".into()).vote_key(), "7");
        assert_eq!(
            serde_json::to_string(&AnswerSource::Fallback).unwrap(),
            "\"fallback\""
        );
    }

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
