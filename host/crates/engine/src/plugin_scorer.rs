//! [`malt_tree::Scorer`] over the loaded WASM plugins of a config.
//!
//! The tree engine and malt-plugins share malt-records' examples, messages and turns; only the
//! borrowed requests of the tree engine become malt-plugins' owned ones here. A plugin's per-item
//! failures (one poisonous output that traps) stay per item: malt-plugins already retries a
//! trapped batch item by item.

use std::collections::BTreeMap;
use std::sync::Arc;

use malt_plugins::{self as mp, PluginSet};
use malt_tree::{self as mt, PluginError, Scorer};

/// Where newer plugins come from while a run is going (the pipeline's hot reload): asked
/// before each render, it hands out a newer valid set only right after an item boundary.
pub trait PluginUpdates: Send + Sync {
    fn plugins_between_items(&self) -> Option<PluginSet>;
}

/// Scores through the plugins of one loaded [`PluginSet`], counting item errors per plugin.
pub struct PluginScorer {
    plugins: PluginSet,
    /// Item errors per plugin, for the run's statistics.
    pub errors: BTreeMap<String, u64>,
    /// Hot reload of `malt run`: newer plugins are swapped in at item boundaries.
    live: Option<Arc<dyn PluginUpdates>>,
}

impl PluginScorer {
    pub fn new(plugins: PluginSet) -> Self {
        PluginScorer {
            plugins,
            errors: BTreeMap::new(),
            live: None,
        }
    }

    /// Follow `live`: after each item boundary it marks, the next render uses the newest valid
    /// plugins. Render is the first plugin call of every tree and every chain turn, so a tree
    /// or a question never mixes two plugin sets.
    pub fn follow(&mut self, live: Option<Arc<dyn PluginUpdates>>) {
        self.live = live;
    }

    pub fn plugins(&self) -> &PluginSet {
        &self.plugins
    }

    /// Swap in a reloaded plugin set (hot reload between questions).
    pub fn replace(&mut self, plugins: PluginSet) {
        self.plugins = plugins;
    }

    fn plugin(&self, name: &str) -> Result<&mp::Plugin, PluginError> {
        self.plugins.get(name).map(|p| p.as_ref()).ok_or_else(|| {
            let known: Vec<&str> = self.plugins.iter().map(|(n, _)| n.as_str()).collect();
            PluginError(format!(
                "no plugin named `{name}` is loaded (loaded: {})",
                known.join(", ")
            ))
        })
    }

    /// Keeps the plugin's error text for the node and counts it.
    fn item<T>(&mut self, plugin: &str, r: Result<T, mp::ItemError>) -> Result<T, String> {
        r.map_err(|e| {
            *self.errors.entry(plugin.to_owned()).or_default() += 1;
            e.to_string()
        })
    }
}

impl Scorer for PluginScorer {
    fn parse_records(
        &mut self,
        plugin: &str,
        lines: &[&str],
    ) -> Result<Vec<Result<mt::Example, String>>, PluginError> {
        let p = self.plugin(plugin)?;
        let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        // A rejected record is the dataset's fault, not the plugin's: not counted as an error.
        Ok(p.parse_records(&owned)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect())
    }

    fn generate_examples(
        &mut self,
        plugin: &str,
        seed: u64,
        count: u32,
    ) -> Result<Result<Vec<mt::Example>, String>, PluginError> {
        let p = self.plugin(plugin)?;
        match p.generate(seed, count) {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.is_rejection() => Ok(Err(e.to_string())),
            Err(e) => Err(PluginError(e.to_string())),
        }
    }

    fn render(
        &mut self,
        plugin: &str,
        requests: &[mt::RenderRequest<'_>],
    ) -> Result<Vec<Result<Vec<mt::Message>, String>>, PluginError> {
        if let Some(set) = self.live.as_ref().and_then(|l| l.plugins_between_items()) {
            self.plugins = set;
        }
        let p = self.plugin(plugin)?;
        let reqs: Vec<mp::RenderRequest> = requests
            .iter()
            .map(|r| mp::RenderRequest {
                agent: r.agent.to_owned(),
                role: r.role.to_owned(),
                position: r.position,
                chain_length: r.chain_length,
                example: r.example.clone(),
                history: r.history.clone(),
            })
            .collect();
        let out = p.render(&reqs);
        Ok(out.into_iter().map(|r| self.item(plugin, r)).collect())
    }

    fn extract(
        &mut self,
        plugin: &str,
        requests: &[mt::ExtractRequest<'_>],
    ) -> Result<Vec<Result<Option<mt::types::Extracted>, String>>, PluginError> {
        let p = self.plugin(plugin)?;
        let reqs: Vec<mp::ExtractRequest> = requests
            .iter()
            .map(|r| mp::ExtractRequest {
                output: r.output.to_owned(),
                choices: r.choices.to_vec(),
            })
            .collect();
        let out = p.extract(&reqs);
        Ok(out.into_iter().map(|r| self.item(plugin, r)).collect())
    }

    fn grade(
        &mut self,
        plugin: &str,
        requests: &[mt::GradeRequest<'_>],
    ) -> Result<Vec<Result<mt::Grade, String>>, PluginError> {
        let p = self.plugin(plugin)?;
        let reqs: Vec<mp::GradeRequest> = requests
            .iter()
            .map(|r| mp::GradeRequest {
                answer: r.answer.map(str::to_owned),
                gold: r.gold.to_owned(),
            })
            .collect();
        let out = p.grade(&reqs);
        Ok(out
            .into_iter()
            .map(|r| self.item(plugin, r).map(Into::into))
            .collect())
    }

    /// The component's hash (its bytes and the engine) and the options it was configured with.
    fn identity(&self, plugin: &str) -> Option<String> {
        let p = self.plugins.get(plugin)?;
        Some(format!("sha256:{} options {:?}", p.hash(), p.options()))
    }
}
