//! The generation stage: one tree per training question, through the embedded model or the
//! remote backend (`[generation] backend`). Round k >= 2 samples its trees afresh with round
//! k-1's adapters.

use std::collections::BTreeMap;
use std::path::PathBuf;

use malt_layout::{RoundLayout, RunLayout};
use malt_tree::{ChainSpec, CreditSettings, Example};
use serde::Serialize;

use super::record::Decision;
use super::{chain_plugins, Env, Stage, MODEL_INPUT};
use crate::generate::{RemoteSetup, TreeTarget};
use crate::session::{ModelIdentity, Session};

pub struct Generate;

/// What samples the completions.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The embedded candle model.
    Embedded(ModelIdentity),
    /// OpenAI-compatible servers.
    Remote(RemoteBackend),
}

/// OpenAI-compatible servers: the model they serve (per agent where `[generation] models`
/// names one) and the local tokenizer that checks or supplies the completions' ids.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteBackend {
    pub served: String,
    pub models: BTreeMap<String, String>,
    pub tokenizer: Option<String>,
    /// How to reach the servers; not what the trees are.
    #[serde(skip)]
    pub setup: RemoteSetup,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    /// The agents as sampling sees them: names, roles, plugins, branches and sampling
    /// (thresholds are credit's, not sampling's).
    #[serde(rename = "chain shape and sampling")]
    pub chain: ChainSpec,
    #[serde(rename = "model")]
    pub backend: Backend,
    /// The training questions, in order.
    pub questions: Vec<Example>,
    /// Node seeds derive from it (the run seed in round 1).
    pub seed: u64,
    /// Round k >= 2: the hash of round k-1's adapters, which it samples with.
    #[serde(
        rename = "previous round's adapters",
        skip_serializing_if = "Option::is_none"
    )]
    pub previous: Option<String>,
    /// The chain's plugins (they render every prompt and score every node): name -> hash.
    pub plugins: BTreeMap<String, String>,
    /// Every plugin's options (they can change the prompts).
    #[serde(rename = "config [plugins] options")]
    pub plugin_options: BTreeMap<String, BTreeMap<String, String>>,
    /// Recorded in the trees' manifest for information; thresholds do not change trees.
    #[serde(skip)]
    pub credit: CreditSettings,
}

/// The chain without its thresholds.
fn sampling_chain(chain: &ChainSpec) -> ChainSpec {
    let mut c = chain.clone();
    for a in &mut c.agents {
        a.theta = None;
    }
    c
}

/// `[generation]` as stage inputs name the model.
pub fn backend(session: &Session) -> anyhow::Result<Backend> {
    let cfg = &session.config;
    Ok(match cfg.generation.backend {
        malt_config::Backend::Embedded => Backend::Embedded(session.model()?),
        malt_config::Backend::Remote => Backend::Remote(RemoteBackend {
            served: malt_engine::remote::remote_model_id(cfg),
            models: cfg.generation.models.clone(),
            tokenizer: session.tokenizer_fingerprint(),
            setup: RemoteSetup {
                generation: cfg.generation.clone(),
                tokenizer_source: crate::session::model_id(cfg),
                config_path: cfg.source.clone(),
            },
        }),
    })
}

impl Stage for Generate {
    const NAME: &'static str = "generate";
    const VERSION: u32 = 1;
    type Inputs = Inputs;

    fn inputs(s: &mut Session, round: &RoundLayout) -> anyhow::Result<Inputs> {
        let (chain, credit) = s.round_credit(round);
        let previous = if round.round() > 1 {
            let prev = RunLayout::new(&s.config.run.dir).round(round.round() - 1);
            Some(super::adapters_hash(&prev)?)
        } else {
            None
        };
        Ok(Inputs {
            plugins: chain_plugins(s, &chain),
            chain: sampling_chain(&chain),
            backend: backend(s)?,
            questions: s.questions()?.train,
            seed: crate::engine_config::round_seed(s.config.run.seed, round.round()),
            previous,
            credit,
            plugin_options: super::plugin_options(&s.config),
        })
    }

    fn outputs(round: &RoundLayout) -> anyhow::Result<String> {
        super::record::file_hash(&round.trees())
    }

    /// A later round's trees derive from the previous round's adapters. Round 1's are
    /// discarded only when they were sampled with another model or tokenization (a run with
    /// other questions or another chain is refused instead, keeping what it cost).
    fn stale(round: &RoundLayout, decision: &Decision) -> Vec<PathBuf> {
        let other_model = matches!(decision, Decision::InputsChanged(what)
            if what.iter().any(|w| w == MODEL_INPUT));
        if round.round() > 1 || other_model {
            vec![round.trees(), round.manifest()]
        } else {
            Vec::new()
        }
    }

    /// Refuses to mix trees of two question sets: every stored tree must belong to the
    /// training split (a different dataset, split size or seed selects other questions).
    fn check(inputs: &Inputs, round: &RoundLayout) -> anyhow::Result<()> {
        let path = round.trees();
        if !path.exists() {
            return Ok(());
        }
        let stored = malt_tree::read_trees(&path)?;
        let train: std::collections::HashSet<&str> =
            inputs.questions.iter().map(|e| e.id.as_str()).collect();
        let foreign: Vec<&str> = stored
            .trees
            .iter()
            .map(|t| t.question_id.as_str())
            .filter(|id| !train.contains(id))
            .collect();
        if let Some(first) = foreign.first() {
            anyhow::bail!(
                "{}: {} stored tree(s) (e.g. question {first:?}) are not in the training split \
                 ([dataset] or run seed changed since they were generated); refusing to mix two \
                 question sets: use a new run directory ([run] dir) or restore the old [dataset]",
                path.display(),
                foreign.len(),
            );
        }
        Ok(())
    }

    fn run(inputs: &Inputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        let mut target = TreeTarget {
            dir: round.dir(),
            chain: &inputs.chain,
            credit: inputs.credit,
            seed: inputs.seed,
            model_id: String::new(),
            tokenizer: None,
        };
        match &inputs.backend {
            Backend::Remote(remote) => {
                target.model_id = remote.served.clone();
                target.tokenizer = remote.tokenizer.clone();
                let mut adapters = Vec::new();
                if let Some(hash) = &inputs.previous {
                    let run_dir = &env.tools.provenance.run_dir;
                    let prev = RunLayout::new(run_dir).round(round.round() - 1);
                    adapters = round_adapters(run_dir, &prev, &inputs.chain)?;
                    target.model_id = format!(
                        "{} + adapters of round {} sha256:{hash}",
                        remote.served,
                        prev.round()
                    );
                }
                crate::generate::generate_remote(
                    &mut env.tools,
                    &inputs.questions,
                    &remote.setup,
                    &target,
                    &adapters,
                )?;
            }
            Backend::Embedded(id) => {
                target.model_id = id.source.clone();
                target.tokenizer = id.tokenizer.clone();
                let model = env.models.get(id)?;
                let mut adapters = Vec::new();
                if let Some(hash) = &inputs.previous {
                    let prev =
                        RunLayout::new(&env.tools.provenance.run_dir).round(round.round() - 1);
                    let agents = inputs.chain.agents.iter().map(|a| a.name.as_str());
                    adapters = malt_train::load_final_adapters(model, prev.dir(), agents)?;
                    target.model_id = format!(
                        "{} + adapters of round {} sha256:{hash}",
                        id.source,
                        prev.round()
                    );
                    tracing::info!(
                        "round {}: sampling the trees with round {}'s adapters ({})",
                        round.round(),
                        prev.round(),
                        adapters
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                crate::generate::generate_embedded(
                    &mut env.tools,
                    &inputs.questions,
                    model,
                    adapters,
                    &target,
                )?;
            }
        }
        Ok(())
    }
}

/// Round `prev`'s final adapters as the endpoints are to serve them (`{agent}-round{k}`); an
/// agent that trained nothing samples on the base model, as with the embedded backend.
fn round_adapters(
    run_dir: &std::path::Path,
    prev: &RoundLayout,
    chain: &ChainSpec,
) -> anyhow::Result<Vec<malt_remote::AdapterVersion>> {
    let mut out = Vec::new();
    for a in &chain.agents {
        let Some(local) = malt_train::final_adapter_dir(prev.dir(), &a.name) else {
            continue;
        };
        let in_run = local
            .strip_prefix(run_dir)
            .map(PathBuf::from)
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: the adapter is not inside the run directory {}",
                    local.display(),
                    run_dir.display()
                )
            })?;
        out.push(malt_remote::AdapterVersion {
            agent: a.name.clone(),
            name: format!("{}-round{}", a.name, prev.round()),
            local,
            in_run,
        });
    }
    tracing::info!(
        "round {}: sampling the trees with round {}'s adapters ({}) served by the endpoints",
        prev.round() + 1,
        prev.round(),
        out.iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(out)
}
