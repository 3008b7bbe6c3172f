//! Every plugin of a config, loaded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use malt_config::{Config, PluginSpec, Sandbox};

use crate::build::{self, Source};
use crate::{Plugin, PluginError, Runtime};

/// The loaded plugins of a config, by the names the config gives them.
#[derive(Debug, Default, Clone)]
pub struct PluginSet {
    plugins: BTreeMap<String, Arc<Plugin>>,
    sources: BTreeMap<String, Source>,
}

impl PluginSet {
    /// Build (when needed) and load every plugin the config declares.
    pub fn load(runtime: &Arc<Runtime>, config: &Config) -> Result<PluginSet, PluginError> {
        let mut set = PluginSet::default();
        for (name, spec) in &config.plugins {
            let (source, plugin) = load_spec(runtime, spec, config)?;
            set.sources.insert(name.clone(), source);
            set.plugins.insert(name.clone(), Arc::new(plugin));
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Plugin>)> {
        self.plugins.iter()
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Where each plugin came from (for watching).
    pub fn sources(&self) -> &BTreeMap<String, Source> {
        &self.sources
    }

    /// Paths whose changes should trigger a reload.
    pub fn watch_paths(&self) -> Vec<PathBuf> {
        self.sources
            .values()
            .flat_map(Source::watch_paths)
            .collect()
    }
}

/// Resolve, build if needed and load one plugin of a config.
pub fn load_spec(
    runtime: &Arc<Runtime>,
    spec: &PluginSpec,
    config: &Config,
) -> Result<(Source, Plugin), PluginError> {
    let source = build::resolve(&spec.name, spec.path.as_deref(), &config.base_dir)?;
    let wasm = build::component_path(&spec.name, &source)?;
    let plugin = Plugin::load(runtime, &spec.name, &wasm, &spec.options, &config.sandbox)?;
    Ok((source, plugin))
}

/// Load a plugin named on the command line: a path (`.wasm` or crate dir) or a name under
/// `plugins/`, with the given options and limits.
pub fn load_named(
    runtime: &Arc<Runtime>,
    name_or_path: &str,
    options: &BTreeMap<String, String>,
    limits: &Sandbox,
) -> Result<Plugin, PluginError> {
    let p = std::path::Path::new(name_or_path);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let (name, source) = if p.exists() {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name_or_path.into());
        (name.clone(), build::resolve(&name, Some(p), &cwd)?)
    } else {
        (
            name_or_path.to_string(),
            build::resolve(name_or_path, None, &cwd)?,
        )
    };
    let wasm = build::component_path(&name, &source)?;
    Plugin::load(runtime, &name, &wasm, options, limits)
}

/// Plugin options given on a command line as `KEY=VALUE` (`malt score --option`, `malt plugin
/// test --option`, `malt bench plugins --option`): the same map a config's `options` table gives.
pub fn parse_cli_options(opts: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for o in opts {
        let Some((k, v)) = o.split_once('=') else {
            return Err(format!("option {o:?}: expected KEY=VALUE"));
        };
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}
