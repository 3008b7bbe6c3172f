//! One error type for the model layer, so callers can tell a user mistake (missing file, unknown
//! architecture, wrong shapes) from an internal failure and see which file or tensor is at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing file {path}")]
    MissingFile { path: PathBuf },
    #[error("unknown model architecture `{arch}` in {file} (supported: llama, qwen2, qwen3)")]
    UnknownArchitecture { arch: String, file: PathBuf },
    #[error("tensor `{tensor}` in {file}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        tensor: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{tensor}` not found in {file}")]
    MissingTensor { tensor: String, file: PathBuf },
    #[error("invalid config {file}: {msg}")]
    Config { file: PathBuf, msg: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("fetching the default model: {0}")]
    Fetch(String),
    #[error("unknown device `{0}` (expected cpu, cuda:N or metal)")]
    Device(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile { path }
        } else {
            ModelError::Io { path, source }
        }
    }
}
