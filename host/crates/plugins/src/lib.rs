//! malt-plugins: load, sandbox and call WASM component plugins (`malt:plugin@0.2.x` and
//! `@0.1.x`, each through its own bindings in [`api`]).
//!
//! - [`Runtime`]: one wasmtime `Engine` (epoch interruption, with a ticker thread) and the
//!   precompiled-artifact cache (`$MALT_CACHE/wasm` or `~/.cache/malt/wasm`).
//! - [`Plugin`]: one loaded plugin: an `InstancePre` plus a pool of worker stores, each reused
//!   across calls and rebuilt after a trap. Batch calls return one result per item; a trap in a
//!   batch is isolated by retrying the items one by one.
//! - [`PluginSet`]: every plugin of a config.
//! - [`reload::Reloader`]: hot reload of a config and its plugins.
//! - [`conformance`]: the battery behind `malt check` and `malt plugin test`.
//! - [`build`]: finding a plugin by name and building guest crates on demand.

pub mod api;
pub mod build;
pub mod conformance;
mod engine;
mod error;
mod plugin;
pub mod reload;
mod set;
mod types;

pub use engine::Runtime;
pub use error::{CallError, CallErrorKind, ItemError, PluginError};
pub use plugin::{Plugin, PluginStats};
pub use set::{load_named, load_spec, parse_cli_options, PluginSet};
pub use types::*;

/// Re-exported so callers name sandbox limits without depending on malt-config directly.
pub use malt_config::Sandbox;
