//! Plain-data mirrors of the plugin API records (plugins/api/v0.1.0/plugin.wit).
//!
//! They live here, not in malt-plugins, so that the tree engine (and its tests) never needs
//! the WASM runtime; the host converts between these and the generated bindings field by field.

use serde::{Deserialize, Serialize};

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
    /// Free-form JSON object text; kept verbatim for reports.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub metadata: String,
}

fn empty_object() -> String {
    "{}".to_owned()
}

fn is_empty_object(s: &String) -> bool {
    s == "{}" || s.is_empty()
}

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
