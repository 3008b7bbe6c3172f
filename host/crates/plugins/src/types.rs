//! Host-side records of the plugin API, independent of the API version a plugin targets. The
//! plain records (examples, messages, turns) are malt-records' own; the ones here are either
//! requests only the plugin host builds or component types that `grade` lowers and lifts
//! without a copy (with `From` impls to malt-records' [`malt_records::Grade`]).

pub use malt_records::{AnswerSource, Choice, Example, Extracted, Message, Turn};
use serde::{Deserialize, Serialize};
use wasmtime::component::{ComponentType, Lift, Lower};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderRequest {
    pub agent: String,
    pub role: String,
    pub position: u32,
    pub chain_length: u32,
    pub example: Example,
    pub history: Vec<Turn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractRequest {
    pub output: String,
    pub choices: Vec<Choice>,
}

/// Also a component-model type: `grade` lowers these directly, without a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ComponentType, Lower, Lift)]
#[component(record)]
pub struct GradeRequest {
    pub answer: Option<String>,
    pub gold: String,
}

/// Also a component-model type: `grade` lifts these directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ComponentType, Lower, Lift)]
#[component(record)]
pub struct Grade {
    /// In [0, 1] (checked by the host).
    pub reward: f64,
    pub reason: String,
}

impl From<Grade> for malt_records::Grade {
    fn from(g: Grade) -> Self {
        malt_records::Grade {
            reward: g.reward,
            reason: g.reason,
        }
    }
}

impl From<malt_records::Grade> for Grade {
    fn from(g: malt_records::Grade) -> Self {
        Grade {
            reward: g.reward,
            reason: g.reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub roles: Vec<String>,
    pub options: Vec<(String, String)>,
    pub can_generate: bool,
}

/// Total size of the strings in a value, for the output-size guard.
pub(crate) trait OutputSize {
    fn output_size(&self) -> usize;
}

impl OutputSize for String {
    fn output_size(&self) -> usize {
        self.len()
    }
}
impl<T: OutputSize> OutputSize for Option<T> {
    fn output_size(&self) -> usize {
        self.as_ref().map_or(0, OutputSize::output_size)
    }
}
impl<T: OutputSize> OutputSize for Vec<T> {
    fn output_size(&self) -> usize {
        self.iter().map(OutputSize::output_size).sum()
    }
}
impl<T: OutputSize, E: OutputSize> OutputSize for Result<T, E> {
    fn output_size(&self) -> usize {
        match self {
            Ok(t) => t.output_size(),
            Err(e) => e.output_size(),
        }
    }
}
impl OutputSize for Choice {
    fn output_size(&self) -> usize {
        self.label.len() + self.text.len()
    }
}
impl OutputSize for Example {
    fn output_size(&self) -> usize {
        self.id.len()
            + self.question.len()
            + self.gold.len()
            + self.choices.output_size()
            + self.metadata.len()
    }
}
impl OutputSize for Message {
    fn output_size(&self) -> usize {
        self.role.len() + self.content.len()
    }
}
impl OutputSize for Extracted {
    fn output_size(&self) -> usize {
        self.answer.len() + self.key.as_ref().map_or(0, String::len)
    }
}
impl OutputSize for Grade {
    fn output_size(&self) -> usize {
        self.reason.len()
    }
}
