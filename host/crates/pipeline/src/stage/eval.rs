//! The evaluation stage: every system of `[eval] systems` on seeded subsets of the held-out
//! questions (see [`crate::evaluate`]).

use std::path::PathBuf;

use malt_layout::{RoundLayout, RunLayout};

use super::adapters_hash;
use super::chain_plugins;
use super::record::{file_hash, tree_hash};
use super::star::{star_hash, uses_star};
use super::{Env, Stage};
use crate::evaluate::{EvalInputs, ReportInputs, RoundsInputs, StarOutputs};
use crate::session::Session;

pub struct Eval;

/// The stage record's name of [`ReportInputs`].
const REPORT: &str = "report";

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
        let evaluates_online = cfg
            .eval
            .systems
            .iter()
            .any(|s| s.kind == malt_config::SystemKind::Online);
        Ok(EvalInputs {
            adapters: adapters_hash(round)?,
            report: ReportInputs {
                std: cfg.eval.std,
                format: malt_eval::figures::REPORT_FORMAT,
                online_settings: cfg
                    .online
                    .as_ref()
                    .filter(|_| evaluates_online)
                    .map(|o| crate::online::settings_line(o, cfg.run.seed)),
            },
            eval: cfg.eval.clone(),
            plugins: chain_plugins(s, &chain),
            chain,
            model: s.model()?,
            questions: s.questions()?.test,
            plugin_options: super::plugin_options(&cfg),
            star,
            rounds,
            online: if evaluates_online {
                let online = round.online();
                Some(format!(
                    "{} {}",
                    tree_hash(&online.join(malt_layout::ADAPTERS), &|_| true)?,
                    file_hash(&online.join("metrics.jsonl"))?
                ))
            } else {
                None
            },
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
    /// mixed into the report; when only the report's inputs changed, the attempts are still
    /// these inputs' and the run aggregates them again without sampling.
    fn stale(round: &RoundLayout, decision: &super::record::Decision) -> Vec<PathBuf> {
        match decision {
            super::record::Decision::InputsChanged(what) if what.iter().all(|w| w == REPORT) => {
                Vec::new()
            }
            _ => vec![round.eval()],
        }
    }

    fn run(inputs: &EvalInputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        crate::evaluate::check_pool(inputs, &env.tools.provenance.config_path)?;
        let report = crate::evaluate::evaluate(inputs, env, round)?;
        print!("{}", malt_eval::render_markdown(&report));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::record::Decision;

    #[test]
    fn only_a_report_input_keeps_the_logged_attempts() {
        let round = RoundLayout::at(std::path::Path::new("/runs/x"));
        let changed = |what: &[&str]| {
            Eval::stale(
                &round,
                &Decision::InputsChanged(what.iter().map(|w| w.to_string()).collect()),
            )
        };
        assert!(changed(&[REPORT]).is_empty());
        assert_eq!(changed(&[REPORT, "config [eval]"]), vec![round.eval()]);
        assert_eq!(changed(&["adapters"]), vec![round.eval()]);
        assert_eq!(Eval::stale(&round, &Decision::New), vec![round.eval()]);
        // The name the record gives the field.
        let inputs = serde_json::to_value(ReportInputs {
            std: malt_eval::StdConvention::Population,
            format: 3,
            online_settings: None,
        })
        .expect("serialise");
        assert_eq!(inputs["std"], "population");
    }
}
