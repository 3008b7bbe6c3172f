//! Errors of the evaluation crate.

use std::path::PathBuf;

/// Everything that can stop an evaluation or a report.
///
/// A failing chain attempt is *not* an `EvalError`: it is recorded as an errored item (see
/// [`crate::ChainError::Item`]). Only [`crate::ChainError::Fatal`] aborts a run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("invalid evaluation plan: {0}")]
    InvalidPlan(String),

    #[error("cannot draw {requested} questions from a pool of {pool}")]
    SubsetTooLarge { requested: usize, pool: usize },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("corrupt result log {path}, line {line}: {message}")]
    CorruptLog {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("results are incomplete: {missing} attempts missing (first: {first})")]
    Incomplete { missing: usize, first: String },

    #[error("cannot re-render the report: {0}")]
    InvalidReport(String),

    /// Reports that cannot be combined (`malt compare`), or a bad choice among their systems.
    #[error("{0}")]
    Combine(String),

    #[error("chain runner failed fatally: {0}")]
    Runner(String),

    #[error("JSON serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}
