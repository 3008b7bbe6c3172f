//! The remote generation backend from a config: `[generation]` resolved into a
//! [`malt_remote::RemoteSampler`], API keys read from the environment.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use malt_config::{Config, EngineKind, Generation, ModelSource};
use malt_remote::{Endpoint, Engine, EngineChoice, RemoteSampler, RemoteSettings, RetryPolicy};

/// The sampler for `[[generation.endpoints]]` of the config at `config`. Fails, naming the
/// variable, when an endpoint's `api_key_env` is not set.
pub fn remote_sampler(
    g: &Generation,
    config: &Path,
    logprobs: bool,
) -> anyhow::Result<RemoteSampler> {
    let mut endpoints = Vec::with_capacity(g.endpoints.len());
    for (i, e) in g.endpoints.iter().enumerate() {
        let key = match &e.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "{}: [[generation.endpoints]] #{} ({}) takes its API key from the \
                     environment variable {var}, which is not set (export {var}=...)",
                    config.display(),
                    i + 1,
                    Endpoint::new(&e.url)
                )
            })?),
            None => None,
        };
        let mut ep = Endpoint::new(&e.url).with_api_key(key);
        ep.max_concurrency = e.max_concurrency;
        ep.timeout = Duration::from_secs_f64(e.timeout_s);
        ep.connect_timeout = Duration::from_secs_f64(e.connect_timeout_s);
        ep.malt_seeds = e.malt_seeds;
        ep.adapter_root = e.adapter_root.clone();
        ep.engine = match e.engine {
            EngineKind::Auto => EngineChoice::Auto,
            EngineKind::Malt => EngineChoice::Fixed(Engine::Malt),
            EngineKind::Vllm => EngineChoice::Fixed(Engine::Vllm),
            EngineKind::Sglang => EngineChoice::Fixed(Engine::Sglang),
            EngineKind::LlamaCpp => EngineChoice::Fixed(Engine::LlamaCpp),
            EngineKind::Openai => EngineChoice::Fixed(Engine::Openai),
        };
        endpoints.push(ep);
    }
    let settings = RemoteSettings {
        endpoints,
        model: g.model.clone(),
        models: g.models.clone(),
        retry: RetryPolicy {
            retries: g.retries,
            backoff: Duration::from_millis(g.backoff_ms),
            max_backoff: Duration::from_secs_f64(g.max_backoff_s),
            max_wait: Duration::from_secs_f64(g.max_wait_s),
        },
        logprobs,
    };
    tracing::debug!("remote generation: {settings:?}");
    RemoteSampler::new(settings)
        .map_err(|e| anyhow::anyhow!(e.0))
        .with_context(|| format!("{}: [generation]", config.display()))
}

/// Identifies each endpoint's engine and logs, at the start of the run, what it does not honour
/// of what the trees depend on (per-choice seeds, `n`, `seed`, `top_k`).
pub fn announce_engines(
    config: &Path,
    uses_top_k: bool,
    sampler: &mut RemoteSampler,
) -> anyhow::Result<()> {
    let reports = sampler
        .resolve_engines(uses_top_k)
        .map_err(|e| anyhow::anyhow!(e.0))
        .with_context(|| format!("{}: [[generation.endpoints]]", config.display()))?;
    for r in &reports {
        r.log();
    }
    Ok(())
}

/// The model identity a remote run records in its manifest. `malt serve` serves the config's
/// `[model]` as `base`, so that name stands for the `[model]` source (and a run can move
/// between the embedded backend and `malt serve`); any other served name is its own identity.
pub fn remote_model_id(cfg: &Config) -> String {
    if cfg.generation.model == "base" {
        match &cfg.model.source {
            ModelSource::Named(name) => name.clone(),
            ModelSource::Path(p) => p.display().to_string(),
        }
    } else {
        cfg.generation.model.clone()
    }
}
