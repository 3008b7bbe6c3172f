//! Errors of the training layer. User mistakes (bad dataset line, bad settings, a checkpoint that
//! does not match the run) are separate variants from internal failures so the CLI can say which
//! file or which example is at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}:{line}: {msg}")]
    Dataset {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("dataset {path} has no usable examples")]
    EmptyDataset { path: PathBuf },
    #[error("invalid training settings: {0}")]
    Settings(String),
    /// Inputs that the caller, not the user, got wrong (mismatched lengths): a bug in malt.
    #[error("internal error: {0} (a bug in malt: please report it with the command that ran)")]
    Internal(String),
    #[error(
        "non-finite {what} ({value}) at step {step}, micro-batch {micro} (0-based), examples [{}]; \
         the run stopped, the last good checkpoint is kept{}",
        examples.join(", "),
        last_checkpoint.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default()
    )]
    NonFinite {
        what: &'static str,
        value: f64,
        step: u64,
        micro: usize,
        examples: Vec<String>,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("adapter {path}: {source}")]
    Adapter {
        path: PathBuf,
        #[source]
        source: Box<malt_model::ModelError>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
    /// Wraps any model-layer error (the bridge to malt-model, test models).
    pub fn model(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        TrainError::Model(Box::new(e))
    }
}
