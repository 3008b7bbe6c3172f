//! Hot reload inside `malt run`: the plugin host's [`Reloader`] watches the config and its
//! plugins; the run picks a new valid set up only at safe points, so that one tree or one
//! evaluation question is never computed half with the old and half with the new plugins.
//!
//! - Between trees (generation) and between questions (evaluation) a new *plugin set* applies:
//!   plugin code and plugin options (grader settings).
//! - At stage boundaries the new *config* applies too: thresholds, credit, training and eval
//!   settings.
//! - What the stored trees depend on (chain shape and sampling, model, seed, dataset, run
//!   directory) cannot change mid-run: such a reload is refused, logged, and takes effect only
//!   when `malt run` is started again (where the run store and the stage records judge it).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;

use malt_config::Config;
use malt_engine::PluginUpdates;
use malt_eval::{ChainError, ChainRequest, ChainRunner, ChainTrace};
use malt_plugins::reload::{Loaded, Reloader};
use malt_plugins::{PluginSet, Runtime};

/// The parts of a config a running pipeline cannot change, by name, each as a JSON text.
fn frozen_parts(cfg: &Config) -> Vec<(&'static str, String)> {
    let chain = crate::engine_config::chain_from_config(cfg)
        .map(|c| c.generation_fingerprint())
        .unwrap_or_else(|e| format!("invalid: {e:#}"));
    let json = |v: serde_json::Result<String>| v.unwrap_or_default();
    vec![
        ("chain shape or sampling", chain),
        ("model", json(serde_json::to_string(&cfg.model))),
        (
            "run seed or directory",
            json(serde_json::to_string(&cfg.run)),
        ),
        ("dataset", json(serde_json::to_string(&cfg.dataset))),
    ]
}

/// Shared by the pipeline (stage boundaries) and the scorer (between items).
pub struct LiveReload {
    reloader: Reloader,
    frozen: Vec<(&'static str, String)>,
    /// Set when the pipeline finished an item (tree, question): the next plugin call may swap.
    boundary: AtomicBool,
    /// Generation whose plugins the scorer uses.
    plugins_applied: AtomicU64,
    /// Generation whose config the pipeline uses.
    config_applied: AtomicU64,
    /// Last generation logged as refused, so that each refusal is logged once.
    refused: AtomicU64,
}

impl LiveReload {
    /// Starts watching `config_path`; `config` and `plugins` are what the run started with,
    /// loaded from that file (not loaded again here).
    pub fn start(
        runtime: Arc<Runtime>,
        config_path: &Path,
        config: &Config,
        plugins: &PluginSet,
    ) -> anyhow::Result<Arc<LiveReload>> {
        let reloader = Reloader::start_from(runtime, config_path, config.clone(), plugins.clone())?;
        tracing::info!(
            "hot reload: watching {} and its plugins; plugin changes apply between trees and \
             between evaluation questions, config changes at stage boundaries",
            config_path.display()
        );
        let events = reloader.subscribe();
        let live = Arc::new(LiveReload {
            reloader,
            frozen: frozen_parts(config),
            boundary: AtomicBool::new(false),
            plugins_applied: AtomicU64::new(0),
            config_applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        // Say at once what an edit will do; a long stage may otherwise hide it for minutes.
        // (A broken edit is already reported by the reloader.)
        let weak = Arc::downgrade(&live);
        std::thread::Builder::new()
            .name("malt-run-reload".into())
            .spawn(move || {
                for event in events {
                    let Some(live) = weak.upgrade() else { break };
                    if event.result.is_ok() && live.acceptable(&live.reloader.current()) {
                        tracing::info!(
                            "config or plugins changed (generation {}): plugins apply from the \
                             next tree or evaluation question, the config from the next stage",
                            event.generation
                        );
                    }
                }
            })
            .context("starting the hot-reload thread")?;
        Ok(live)
    }

    /// Whether `loaded` leaves the frozen parts alone; logs a refusal once per generation.
    fn acceptable(&self, loaded: &Loaded) -> bool {
        let changed: Vec<&str> = frozen_parts(&loaded.config)
            .into_iter()
            .zip(&self.frozen)
            .filter(|((_, new), (_, old))| new != old)
            .map(|((name, _), _)| name)
            .collect();
        if changed.is_empty() {
            return true;
        }
        if self.refused.swap(loaded.generation, Ordering::SeqCst) != loaded.generation {
            tracing::warn!(
                "reload refused (generation {}): {} cannot change during a run; it applies \
                 when `malt run` is started again",
                loaded.generation,
                changed.join(", ")
            );
        }
        false
    }

    /// The pipeline finished one item (a tree, a question).
    pub fn mark_boundary(&self) {
        self.boundary.store(true, Ordering::SeqCst);
    }

    /// The newest valid set if it is newer than `applied` and changes nothing frozen.
    fn newer(&self, applied: &AtomicU64) -> Option<Arc<Loaded>> {
        if self.reloader.generation() <= applied.load(Ordering::SeqCst) {
            return None;
        }
        let loaded = self.reloader.current();
        if !self.acceptable(&loaded) {
            return None;
        }
        Some(loaded)
    }

    /// Called by the pipeline before `stage`: a newer valid config and its plugins, if any.
    pub fn at_stage(&self, stage: &str) -> Option<Arc<Loaded>> {
        let loaded = self.newer(&self.config_applied)?;
        self.config_applied
            .store(loaded.generation, Ordering::SeqCst);
        self.plugins_applied
            .fetch_max(loaded.generation, Ordering::SeqCst);
        tracing::info!(
            "reloaded plugins (generation {}): {} and the config apply from stage {stage} on",
            loaded.generation,
            names(&loaded.plugins)
        );
        Some(loaded)
    }
}

fn names(plugins: &PluginSet) -> String {
    plugins
        .iter()
        .map(|(n, p)| format!("{n} ({})", &p.hash()[..12.min(p.hash().len())]))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PluginUpdates for LiveReload {
    /// Called by the scorer before each plugin call: after an item boundary, the plugins of a
    /// newer valid generation, if any.
    fn plugins_between_items(&self) -> Option<PluginSet> {
        if !self.boundary.swap(false, Ordering::SeqCst) {
            return None;
        }
        let loaded = self.newer(&self.plugins_applied)?;
        self.plugins_applied
            .store(loaded.generation, Ordering::SeqCst);
        tracing::info!(
            "reloaded plugins (generation {}): {} apply from the next item on; config changes \
             wait for the next stage boundary",
            loaded.generation,
            names(&loaded.plugins)
        );
        Some(loaded.plugins.clone())
    }
}

/// A [`ChainRunner`] that marks a reload boundary whenever the evaluation moves to another
/// question, so new plugins apply between questions and never inside one.
pub struct QuestionBoundaries<'a, R: ChainRunner> {
    inner: R,
    live: Option<&'a LiveReload>,
    last: Option<(u64, usize)>,
}

impl<'a, R: ChainRunner> QuestionBoundaries<'a, R> {
    pub fn new(inner: R, live: Option<&'a LiveReload>) -> Self {
        QuestionBoundaries {
            inner,
            live,
            last: None,
        }
    }
}

impl<R: ChainRunner> ChainRunner for QuestionBoundaries<'_, R> {
    fn run_chain(&mut self, request: &ChainRequest) -> Result<ChainTrace, ChainError> {
        let question = (request.eval_seed, request.example_idx);
        if self.last.is_some_and(|q| q != question) {
            if let Some(live) = self.live {
                live.mark_boundary();
            }
        }
        self.last = Some(question);
        self.inner.run_chain(request)
    }
}
