//! malt-config: the TOML schema of a whole malt run.
//!
//! [`Config::load`] reads a file, rejects unknown keys (`deny_unknown_fields` everywhere), checks
//! the values (ranges, references between sections) and resolves defaults and relative paths
//! (against the config file's directory). Every error points at `file:line:col`. The schema,
//! every key, its default and meaning are documented in this crate's `README.md`.
//!
//! ```no_run
//! let cfg = malt_config::Config::load("configs/quickstart.toml".as_ref()).unwrap();
//! for agent in &cfg.agents {
//!     println!("{} ({}) n={} theta={}", agent.name, agent.role, agent.branches, agent.theta);
//! }
//! println!("{}", cfg.config_hash());
//! ```

mod locate;
mod overrides;
mod raw;
mod types;

use std::fmt;
use std::path::{Path, PathBuf};

pub use overrides::{valid_device, valid_dtype, ModelOverrides};
pub use raw::default_systems;
pub use types::*;

/// Where a problem is: the file as the user named it, and a 1-based line and column when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based (line, column).
    pub line_col: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((l, c)) => write!(f, "{}:{l}:{c}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One finding of validation: an error (the config is refused) or a warning (logged, reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or schema error (unknown key, wrong type, unknown variant).
    #[error("{0}")]
    Parse(Diagnostic),
    /// The file parsed but some values are out of range or inconsistent.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every diagnostic of the error (one for I/O and parse errors).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            ConfigError::Io { path, source } => vec![Diagnostic {
                location: Location {
                    file: path.clone(),
                    line_col: None,
                },
                message: format!("cannot read config: {source}"),
            }],
            ConfigError::Parse(d) => vec![d.clone()],
            ConfigError::Invalid(ds) => ds.clone(),
        }
    }
}

fn join_lines(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Read, parse, validate and resolve a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse config text as if read from `path` (used for messages, the default run name and
    /// to resolve relative paths; the file itself is not read).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let line_col = e.span().map(|s| locate::line_col(text, s.start));
            ConfigError::Parse(Diagnostic {
                location: Location {
                    file: path.to_path_buf(),
                    line_col,
                },
                message: e.message().trim_end().to_string(),
            })
        })?;
        let locator = locate::Locator::new(text, path);
        let (config, errors) = raw::resolve(raw, path, &locator);
        if errors.is_empty() {
            for w in &config.warnings {
                tracing::debug!("{w}");
            }
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// sha256 (hex) of the normalised config: the resolved values serialised as canonical JSON,
    /// so comments, whitespace, key order and spelled-out defaults do not change it.
    pub fn config_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        malt_base::hash::sha256_hex(&json)
    }

    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Names of every plugin the run uses (dataset plugin first, then agents' plugins), unique.
    pub fn used_plugins(&self) -> Vec<String> {
        let mut out = vec![self.dataset.plugin.clone()];
        for a in &self.agents {
            if !out.contains(&a.plugin) {
                out.push(a.plugin.clone());
            }
        }
        out
    }
}
