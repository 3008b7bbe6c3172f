//! The evaluation stage: every system of `[eval] systems` on seeded subsets of the held-out
//! questions (see [`crate::evaluate`]).

use std::path::PathBuf;

use malt_layout::{RoundLayout, RunLayout};

use super::adapters_hash;
use super::chain_plugins;
use super::record::{file_hash, tree_hash};
use super::star::{star_hash, uses_star};
use super::{Env, Stage};
use crate::evaluate::{EvalInputs, RoundsInputs, StarOutputs};
use crate::session::Session;

pub struct Eval;

impl Eval {
    /// The inputs of round `round`'s evaluation (also what `malt eval --partial` reports from).
    pub fn inputs_of(s: &mut Session, round: &RoundLayout) -> anyhow::Result<EvalInputs> {
        let cfg = s.config.clone();
        let mut chain = s.chain.clone();
        for a in &mut chain.agents {
            a.theta = None;
        }
        let star = if uses_star(s) {
            Some(StarOutputs {
                outputs: star_hash(round)?,
                setup: cfg.star.clone(),
                chain: crate::star::star_chain(&cfg, &s.chain)?,
                tree_samples: crate::star::tree_samples(&s.chain),
            })
        } else {
            None
        };
        let rounds = if cfg.rounds.count > 1 {
            // The by-round table reads the earlier rounds' reports.
            let run = RunLayout::new(&cfg.run.dir);
            let mut earlier = String::new();
            for k in 1..round.round() {
                earlier.push_str(&file_hash(
                    &run.round(k).eval().join(malt_eval::report::REPORT_JSON),
                )?);
            }
            Some(RoundsInputs {
                thetas: (1..=cfg.rounds.count)
                    .map(|k| crate::evaluate::round_theta(&cfg, k))
                    .collect(),
                earlier,
            })
        } else {
            None
        };
        Ok(EvalInputs {
            adapters: adapters_hash(round)?,
            eval: cfg.eval.clone(),
            plugins: chain_plugins(s, &chain),
            chain,
            model: s.model()?,
            questions: s.questions()?.test,
            plugin_options: super::plugin_options(&cfg),
            star,
            rounds,
            test_file: cfg.dataset.test_source.clone(),
        })
    }
}

/// What the evaluation wrote: its attempts log, reports and plots.
pub fn eval_hash(round: &RoundLayout) -> anyhow::Result<String> {
    tree_hash(&round.eval(), &|_| true)
}

impl Stage for Eval {
    const NAME: &'static str = "eval";
    const VERSION: u32 = 1;
    type Inputs = EvalInputs;

    fn inputs(s: &mut Session, round: &RoundLayout) -> anyhow::Result<EvalInputs> {
        Self::inputs_of(s, round)
    }

    fn outputs(round: &RoundLayout) -> anyhow::Result<String> {
        eval_hash(round)
    }

    /// Logged attempts of other adapters, plugins or settings (or of unknown origin) would be
    /// mixed into the report.
    fn stale(round: &RoundLayout, _: &super::record::Decision) -> Vec<PathBuf> {
        vec![round.eval()]
    }

    fn run(inputs: &EvalInputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        crate::evaluate::check_pool(inputs, &env.tools.provenance.config_path)?;
        let report = crate::evaluate::evaluate(inputs, env, round)?;
        print!("{}", malt_eval::render_markdown(&report));
        Ok(())
    }
}
