//! A config's `[[agents]]` and `[credit]` as the tree engine's types, and what round k of
//! `[rounds]` changes (its thetas, its seed): what the session, the stages, the standalone
//! `malt credit` and hot reload's frozen-part check all build the same way.

use anyhow::Context;
use malt_config::Config;
use malt_tree::{
    AgentSpec, ChainSpec, CreditSettings, PairMode, Pooling, SamplingParams, TruncatedPolicy,
};

/// The chain of a config. Config validation already guarantees the invariants; the tree
/// engine checks them again so a library caller cannot bypass them.
pub fn chain_from_config(cfg: &Config) -> anyhow::Result<ChainSpec> {
    let agents = cfg
        .agents
        .iter()
        .map(|a| AgentSpec {
            name: a.name.clone(),
            role: a.role.clone(),
            plugin: a.plugin.clone(),
            branches: a.branches,
            sampling: SamplingParams {
                temperature: a.temperature,
                top_p: a.top_p,
                top_k: a.top_k,
                max_new_tokens: a.max_new_tokens,
                stop: a.stop.clone(),
            },
            theta: Some(a.theta),
            answers: None,
        })
        .collect();
    ChainSpec::new(agents).with_context(|| format!("{}: [[agents]]", cfg.source.display()))
}

/// The `[credit]` section of a config.
pub fn credit_from_config(cfg: &Config) -> anyhow::Result<CreditSettings> {
    let s = CreditSettings {
        theta: cfg.credit.theta,
        pooling: match cfg.credit.pooling {
            malt_config::Pooling::Global => Pooling::Global,
            malt_config::Pooling::Local => Pooling::Local,
        },
        pairs: match cfg.credit.pairs {
            malt_config::Pairs::All => PairMode::All,
            malt_config::Pairs::OnePerParent => PairMode::OnePerParent,
        },
        truncated: match cfg.credit.truncated {
            malt_config::Truncated::Exclude => TruncatedPolicy::Exclude,
            malt_config::Truncated::Keep => TruncatedPolicy::Keep,
        },
    };
    s.validate()
        .with_context(|| format!("{}: [credit]", cfg.source.display()))?;
    Ok(s)
}

/// The chain and credit settings of round `k`: `[rounds] theta` replaces `[credit] theta` and
/// every agent's theta.
pub fn round_credit_of(
    chain: &ChainSpec,
    credit: CreditSettings,
    rounds: &malt_config::Rounds,
    k: u32,
) -> (ChainSpec, CreditSettings) {
    let (mut chain, mut credit) = (chain.clone(), credit);
    if let Some(theta) = rounds.theta_of(k) {
        credit.theta = theta;
        for a in &mut chain.agents {
            a.theta = Some(theta);
        }
    }
    (chain, credit)
}

/// The seed round `k`'s trees derive from: the run seed for round 1, a hash of it and `k` after
/// (each round samples its trees afresh, with the previous round's adapters).
pub fn round_seed(run_seed: u64, k: u32) -> u64 {
    if k <= 1 {
        run_seed
    } else {
        malt_tree::node_seed(run_seed, "malt/round", &[k])
    }
}
