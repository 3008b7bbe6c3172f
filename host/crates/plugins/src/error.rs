//! Typed errors: loading a plugin ([`PluginError`]) and calling it ([`CallError`]).

use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong in one call (or for one item of a batch call).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallErrorKind {
    #[error("timed out after {ms} ms")]
    Timeout { ms: u64 },
    #[error("exceeded its memory limit of {mib} MiB")]
    MemoryLimit { mib: u64 },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {bytes} bytes for one item, more than the limit of {max} bytes")]
    OutputTooLarge { bytes: usize, max: usize },
    #[error("returned a malformed response: {0}")]
    BadResponse(String),
    /// The plugin itself reported an error for this item (e.g. an unparseable record).
    #[error("{0}")]
    Rejected(String),
}

/// A failed call or item, naming the plugin, its version, the function and, for traps, the
/// guest's panic message taken from its captured stderr.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("plugin `{plugin}` {version}: {function}: {kind}{}", panic_suffix(.panic))]
pub struct CallError {
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    pub function: &'static str,
    pub kind: CallErrorKind,
    /// The guest's panic message, when it printed one.
    pub panic: Option<Arc<str>>,
    /// Everything the guest wrote to stderr during the call (bounded).
    pub stderr: Arc<str>,
}

fn panic_suffix(p: &Option<Arc<str>>) -> String {
    match p {
        Some(p) => format!(" (guest panicked: {p})"),
        None => String::new(),
    }
}

impl CallError {
    /// True for the plugin's own per-item rejections, false for sandbox failures.
    pub fn is_rejection(&self) -> bool {
        matches!(self.kind, CallErrorKind::Rejected(_))
    }
}

/// The error of one item of a batch call.
pub type ItemError = CallError;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{name}`: cannot read {}: {source}", path.display())]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin `{name}`: {message}")]
    NotFound { name: String, message: String },
    #[error("plugin `{name}`: build failed ({}):\n{message}", manifest.display())]
    Build {
        name: String,
        manifest: PathBuf,
        message: String,
    },
    #[error("plugin `{name}`: {} is not a valid WebAssembly component: {message}", path.display())]
    Invalid {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin `{name}` ({}) targets {guest}; this host supports {supported}", path.display())]
    UnsupportedApi {
        name: String,
        path: PathBuf,
        guest: String,
        supported: String,
    },
    #[error("plugin `{name}` ({}) is not a malt plugin: it exports no `malt:plugin/benchmark` interface (exports: {})", path.display(), exports.join(", "))]
    NotAPlugin {
        name: String,
        path: PathBuf,
        exports: Vec<String>,
    },
    #[error("plugin `{name}` ({}): cannot link: {message}", path.display())]
    Link {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin `{name}`: configure refused the options: {message}")]
    Configure { name: String, message: String },
    #[error("plugin `{name}`: info() reports an invalid description: {message}")]
    BadInfo { name: String, message: String },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("wasm cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The panic message inside a Rust guest's stderr ("panicked at FILE:L:C:\nMESSAGE").
pub(crate) fn panic_message(stderr: &str) -> Option<String> {
    let idx = stderr.find("panicked at ")?;
    let rest = &stderr[idx..];
    let mut lines = rest.lines();
    let first = lines.next()?;
    // Newer std: message on the next line; older: "panicked at 'msg', file".
    let msg: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note:") && !l.starts_with("stack backtrace"))
        .collect();
    let msg = msg.join("\n");
    let msg = msg.trim();
    if msg.is_empty() {
        Some(first.trim_start_matches("panicked at ").to_string())
    } else {
        Some(msg.to_string())
    }
}
