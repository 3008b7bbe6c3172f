//! The online stage (only with an `[online]` table): the chain's adapters trained on-policy on
//! trees sampled with them (see [`crate::online`]). It reads no upstream stage's files: it
//! samples its own trees from the base model and its adapters.

use std::path::{Path, PathBuf};

use malt_layout::RoundLayout;

use super::record::tree_hash;
use super::{chain_plugins, Env, Stage};
use crate::online::OnlineInputs;
use crate::session::Session;
use crate::train::AgentTraining;

pub struct Online;

/// What online training produced: its adapters, metrics and trees (not the checkpoints, which
/// only serve a resume).
pub fn online_hash(round: &RoundLayout) -> anyhow::Result<String> {
    tree_hash(&round.online(), &|p: &Path| {
        p.starts_with(malt_layout::ADAPTERS)
            || p.starts_with("trees")
            || p == Path::new("metrics.jsonl")
    })
}

impl Stage for Online {
    const NAME: &'static str = "online";
    const VERSION: u32 = 1;
    type Inputs = OnlineInputs;

    fn wanted(s: &Session) -> bool {
        s.config.online.is_some()
    }

    fn inputs(s: &mut Session, _round: &RoundLayout) -> anyhow::Result<OnlineInputs> {
        let cfg = s.config.clone();
        let Some(online) = cfg.online.clone() else {
            anyhow::bail!(
                "{}: no [online] table: add one to train the chain online (see \
                 configs/online.toml and docs/config.md)",
                cfg.source.display()
            );
        };
        let remote = match super::generate::backend(s)? {
            super::generate::Backend::Remote(r) => Some(r),
            super::generate::Backend::Embedded(_) => None,
        };
        let seed = online.seed.unwrap_or(cfg.run.seed);
        Ok(OnlineInputs {
            online,
            remote,
            plugins: chain_plugins(s, &s.chain),
            chain: s.chain.clone(),
            credit: s.credit,
            agents: AgentTraining::of(&cfg),
            model: s.model()?,
            questions: s.questions()?.train,
            plugin_options: super::plugin_options(&cfg),
            seed,
        })
    }

    fn outputs(round: &RoundLayout) -> anyhow::Result<String> {
        online_hash(round)
    }

    /// Checkpoints, trees and adapters of other settings must not be resumed or evaluated.
    fn stale(round: &RoundLayout, _: &super::record::Decision) -> Vec<PathBuf> {
        vec![round.online()]
    }

    fn run(inputs: &OnlineInputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        let s = crate::online::run_online(inputs, env, round)?;
        if s.last_step >= s.first_step {
            tracing::info!(
                "online: steps {}-{} done; adapters in {}",
                s.first_step,
                s.last_step,
                s.adapters.display()
            );
        } else {
            tracing::info!(
                "online: every step was done already; adapters in {}",
                s.adapters.display()
            );
        }
        Ok(())
    }
}
