//! One raw record of a dataset file, where it is in its file, and why a file cannot be read:
//! shared by every format's reader.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a record is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 0-based element of a JSON array.
    Element(usize),
    /// 0-based row of a parquet file.
    Row(usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Element(n) => write!(f, "element {n}"),
            Position::Row(n) => write!(f, "row {n}"),
        }
    }
}

impl Position {
    /// `path` and this position the way messages start: `file:3` for a line (what editors and
    /// compilers print), `file: row 12` otherwise.
    pub fn locate(&self, path: &Path) -> String {
        match self {
            Position::Line(n) => format!("{}:{n}", path.display()),
            other => format!("{}: {other}", path.display()),
        }
    }
}

/// One raw record: a JSON object's text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub text: String,
    pub at: Position,
}

/// Why a dataset file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: cannot read the dataset: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One record is bad.
    #[error("{}: {msg}", at.locate(path))]
    Record {
        path: PathBuf,
        at: Position,
        msg: String,
    },
    /// The file as a whole is bad (empty, not parquet, unsupported compression...).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
}

impl DatasetError {
    pub(crate) fn file(path: &Path, msg: impl Into<String>) -> Self {
        DatasetError::File {
            path: path.to_owned(),
            msg: msg.into(),
        }
    }

    pub(crate) fn record(path: &Path, at: Position, msg: impl Into<String>) -> Self {
        DatasetError::Record {
            path: path.to_owned(),
            at,
            msg: msg.into(),
        }
    }
}
