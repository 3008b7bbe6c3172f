//! The STaR stage (only when `[eval] systems` has `star`): the single agent fine-tuned on its
//! positives, from the trees or its own samples (see [`crate::star`]).

use std::path::{Path, PathBuf};

use malt_layout::{RoundLayout, RunLayout};

use super::chain_plugins;
use super::record::{file_hash, tree_hash};
use super::{Env, Stage};
use crate::session::Session;
use crate::star::StarInputs;
use crate::train::AgentTraining;

pub struct Star;

/// Whether the config evaluates STaR (and so trains it).
pub fn uses_star(s: &Session) -> bool {
    s.config
        .eval
        .systems
        .iter()
        .any(|x| x.kind == malt_config::SystemKind::Star)
}

/// What STaR produced: its samples, its SFT set and its adapter.
pub fn star_hash(round: &RoundLayout) -> anyhow::Result<String> {
    tree_hash(round.star().dir(), &|p: &Path| {
        p.starts_with(malt_layout::ADAPTERS)
            || p == Path::new(malt_layout::TREES)
            || p.file_name().and_then(|n| n.to_str()) == Some("sft.jsonl")
    })
}

impl Stage for Star {
    const NAME: &'static str = "star";
    const VERSION: u32 = 1;
    type Inputs = StarInputs;

    fn wanted(s: &Session) -> bool {
        uses_star(s)
    }

    fn inputs(s: &mut Session, round: &RoundLayout) -> anyhow::Result<StarInputs> {
        let cfg = s.config.clone();
        let chain = crate::star::star_chain(&cfg, &s.chain)?;
        let first = AgentTraining::of(&cfg)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the chain has no agent"))?;
        let (trees, previous) = match cfg.star.data {
            malt_config::StarData::Trees => {
                (Some(file_hash(&round.dataset(&first.name, "sft"))?), None)
            }
            malt_config::StarData::Sample if round.round() > 1 => {
                let prev = RunLayout::new(&cfg.run.dir).round(round.round() - 1).star();
                (None, Some(tree_hash(&prev.adapters(), &|_| true)?))
            }
            malt_config::StarData::Sample => (None, None),
        };
        // The tree positives are credit's output, already rendered and graded: STaR reads no
        // question and calls no plugin then.
        let sampling = cfg.star.data == malt_config::StarData::Sample;
        Ok(StarInputs {
            star: cfg.star.clone(),
            plugins: if sampling {
                chain_plugins(s, &chain)
            } else {
                Default::default()
            },
            chain,
            first,
            model: s.model()?,
            round_seed: crate::engine_config::round_seed(cfg.run.seed, round.round()),
            run_seed: cfg.run.seed,
            steps: crate::star::star_steps(&cfg, round)?,
            trees,
            previous,
            questions: if sampling {
                s.questions()?.train
            } else {
                Vec::new()
            },
            plugin_options: if sampling {
                super::plugin_options(&cfg)
            } else {
                Default::default()
            },
        })
    }

    fn outputs(round: &RoundLayout) -> anyhow::Result<String> {
        star_hash(round)
    }

    /// Samples of another model or settings, their SFT set and adapter.
    fn stale(round: &RoundLayout, _: &super::record::Decision) -> Vec<PathBuf> {
        vec![round.star().dir().to_path_buf()]
    }

    fn run(inputs: &StarInputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        crate::star::run_star(inputs, env, round)
    }
}
