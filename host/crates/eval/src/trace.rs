//! What one chain pass produces, and the trait through which the caller runs it.

use serde::{Deserialize, Serialize};

/// One call of the runner: run system `system` (an id of [`crate::plan::System`]) once on
/// dataset example `example_idx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRequest {
    pub system: String,
    /// Absolute index into the evaluation pool (the held-out split), not into the subset.
    pub example_idx: usize,
    /// 0-based attempt; attempt 0 is the non-MV result.
    pub attempt: u32,
    /// The evaluation seed (one of `eval.seeds`), which also chose the question subset.
    pub eval_seed: u64,
    /// Seed for the sampler, `derive_sample_seed(eval_seed, example_idx, attempt)`. It does not
    /// depend on the system on purpose (common random numbers): systems differ only by their
    /// weights and prompts, not by their random draws, so two systems that run the same weights
    /// on a turn give the same output there.
    pub sample_seed: u64,
}

/// What one agent turn produced, as graded by the benchmark plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The turn does not answer the question (e.g. a verifier's critique). Skipped by per-turn
    /// accuracy and by the flip matrix.
    NoAnswer,
    /// The turn should have answered but the extractor found nothing. Counts as wrong and
    /// never wins a vote.
    Unparseable,
    /// An extracted answer and its grade.
    Answer {
        /// The extracted answer, as logged.
        answer: String,
        /// The plugin's canonical voting key (e.g. `0.5` for `\frac12`; API 0.2.0 plugins
        /// give one). Without it (0.1.0 plugins, older result logs) the trimmed `answer` is the
        /// key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        correct: bool,
    },
}

impl Outcome {
    /// Whether this turn is meant to answer (answer or failed parse).
    pub fn is_answering(&self) -> bool {
        !matches!(self, Outcome::NoAnswer)
    }

    pub fn is_correct(&self) -> bool {
        matches!(self, Outcome::Answer { correct: true, .. })
    }

    /// The key this outcome votes with, `None` when it cannot vote.
    pub fn vote_key(&self) -> Option<&str> {
        match self {
            Outcome::Answer { answer, key, .. } => {
                Some(crate::vote::vote_key(key.as_deref().unwrap_or(answer)))
            }
            _ => None,
        }
    }
}

/// One agent turn of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// Agent (role) name, e.g. "generator".
    pub agent: String,
    /// The raw output text, kept so that wrong answers can be inspected after the run.
    pub output: String,
    pub outcome: Outcome,
    /// The system skips this agent (the paper's G+R ablation skips the verifier): it was not
    /// run, its output is empty and it answers nothing; the agents after it see the empty
    /// output as its turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Sampling stopped at the length limit (`max_new_tokens`): the output may be cut, and an
    /// answer in it counts only when the plugin found it by a final-answer marker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One sequential pass through the agents; the final answer is that of the last answering turn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTrace {
    pub turns: Vec<Turn>,
}

impl ChainTrace {
    /// The outcome that counts for the pass: the last answering turn. A pass without any
    /// answering turn is treated as unparseable rather than silently skipped.
    pub fn final_outcome(&self) -> &Outcome {
        final_outcome(&self.turns)
    }
}

/// See [`ChainTrace::final_outcome`]; shared with logged records, which hold bare turns.
pub fn final_outcome(turns: &[Turn]) -> &Outcome {
    const UNPARSEABLE: &Outcome = &Outcome::Unparseable;
    turns
        .iter()
        .rev()
        .map(|t| &t.outcome)
        .find(|o| o.is_answering())
        .unwrap_or(UNPARSEABLE)
}

/// Why a pass failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// This attempt failed (generation error, context overflow, plugin trap...). It is recorded,
    /// counted as wrong and reported separately; it is not retried on resume, so reruns are
    /// reproducible.
    #[error("{0}")]
    Item(String),
    /// Nothing can succeed (model failed to load...). Aborts the run without recording, so a
    /// resumed run retries it.
    #[error("{0}")]
    Fatal(String),
}

/// Executes one pass of a system. Implemented by the caller (model + plugin wiring); tests use
/// a deterministic fake.
pub trait ChainRunner {
    fn run_chain(&mut self, request: &ChainRequest) -> Result<ChainTrace, ChainError>;
}

impl<R: ChainRunner + ?Sized> ChainRunner for &mut R {
    fn run_chain(&mut self, request: &ChainRequest) -> Result<ChainTrace, ChainError> {
        (**self).run_chain(request)
    }
}
