//! One error type for the crate: every variant that comes from user input names its file
//! (and line, when there is one) so the message alone is enough to fix the input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Bad chain or credit settings (zero agents, theta outside [0, 1], ...).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A line of a user-supplied or stored file is bad.
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// A record of a dataset file is bad (the plugin's message, or a duplicate id).
    #[error("{}: {msg}", at.locate(path))]
    Record {
        path: PathBuf,
        at: malt_records::Position,
        msg: String,
    },

    /// A dataset file cannot be read (I/O, JSON or parquet errors, located).
    #[error(transparent)]
    Dataset(#[from] malt_records::DatasetError),

    /// A whole file is bad (empty dataset, unreadable manifest, ...).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another process holds the run lock.
    #[error("{}: run is locked by another writer (lock file {})", run.display(), lock.display())]
    Locked { run: PathBuf, lock: PathBuf },

    /// The run directory was created with a different chain, seed or model.
    #[error("{}: cannot resume: {msg}", run.display())]
    Mismatch { run: PathBuf, msg: String },

    /// The sampler (model layer) failed as a whole; generation stops.
    #[error("sampler failed: {0}")]
    Sampler(String),

    /// The scorer failed in a way that is not attributable to a node (e.g. dataset parsing).
    #[error("plugin {plugin}: {msg}")]
    Plugin { plugin: String, msg: String },
}

impl TreeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TreeError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = TreeError> = std::result::Result<T, E>;
