//! Online training with `[generation] backend = "remote"`: the servers sample every step's
//! trees, each trained agent on its adapter as the previous step left it, loaded into every
//! endpoint under a versioned name (`generator-v12`, see [`malt_remote::adapters`]). The
//! versions come from the step's checkpoint, which the run writes anyway; the adapters as
//! initialised (version 0) are written once beside it. The servers return each sampled token's
//! log-prob, which the update compares with its own (the mismatch metric) and may correct for
//! (`[online] importance_cap`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use malt_engine::remote::{announce_engines, remote_sampler};
use malt_engine::WithTokenIds;
use malt_model::Tokenizer;
use malt_remote::{AdapterVersion, RemoteSampler};
use malt_train::PolicyModel;
use malt_tree::ChainSpec;

use super::files::checkpoint_adapter;
use super::Role;
use crate::stage::generate::RemoteBackend;

/// The remote servers of one online run and the adapter versions they serve.
pub(super) struct Served<'t> {
    sampler: WithTokenIds<'t, RemoteSampler>,
    run_dir: PathBuf,
    config: PathBuf,
    /// The step whose adapters the servers serve now (0: as initialised).
    serving: Option<u32>,
}

impl<'t> Served<'t> {
    /// Connects to the endpoints and logs what their engines do not honour.
    pub fn start(
        remote: &RemoteBackend,
        tokenizer: &'t Tokenizer,
        chain: &ChainSpec,
        run_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let config = &remote.setup.config_path;
        let mut sampler = remote_sampler(&remote.setup.generation, config, true)?;
        let uses_top_k = chain.agents.iter().any(|a| a.sampling.top_k > 0);
        announce_engines(config, uses_top_k, &mut sampler)?;
        Ok(Served {
            sampler: WithTokenIds::new(sampler, tokenizer),
            run_dir,
            config: config.clone(),
            serving: None,
        })
    }

    pub fn sampler(&mut self) -> &mut dyn malt_tree::Sampler {
        &mut self.sampler
    }

    /// Makes the endpoints serve every trained agent's adapter as of step `step` (0: as
    /// initialised), unless they already do.
    pub fn serve_version(
        &mut self,
        step: u32,
        roles: &[Role<'_>],
        online_dir: &Path,
        model_id: &str,
    ) -> anyhow::Result<()> {
        if self.serving == Some(step) {
            return Ok(());
        }
        let mut versions = Vec::new();
        for role in roles {
            let Some((adapter, _, _)) = &role.trained else {
                continue;
            };
            let local = if step == 0 {
                // In no checkpoint: written for the servers (the same weights on every resume,
                // the initialisation being seeded).
                let dir = online_dir.join("served").join(format!("{}-v0", role.name));
                role.policy.save_adapter(adapter, &dir, model_id)?;
                dir
            } else {
                checkpoint_adapter(online_dir, step, &role.name)
            };
            let in_run = local
                .strip_prefix(&self.run_dir)
                .with_context(|| {
                    format!(
                        "{} is not inside the run directory {}",
                        local.display(),
                        self.run_dir.display()
                    )
                })?
                .to_path_buf();
            versions.push(AdapterVersion {
                agent: role.name.clone(),
                name: format!("{}-v{step}", role.name),
                local,
                in_run,
            });
        }
        self.sampler
            .inner
            .swap_adapters(&versions)
            .map_err(|e| anyhow::anyhow!(e.0))
            .with_context(|| format!("{}: [[generation.endpoints]]", self.config.display()))?;
        tracing::debug!(
            "online: the endpoints serve {}",
            versions
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.serving = Some(step);
        Ok(())
    }

    /// Unloads the run's adapters from the servers and logs where the token ids came from.
    pub fn release(&mut self) {
        self.sampler.inner.release_adapters();
        self.sampler.stats.log();
    }
}
