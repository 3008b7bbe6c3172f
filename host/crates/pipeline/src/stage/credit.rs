//! The credit stage: re-score the stored trees with the current plugins, propagate values,
//! label nodes against each agent's threshold (round k's `[rounds] theta` where given) and
//! write the per-agent SFT/DPO sets.

use std::collections::BTreeMap;

use malt_layout::RoundLayout;
use malt_tree::{ChainSpec, CreditSettings, Scorer};
use serde::Serialize;

use super::record::file_hash;
use super::{chain_plugins, datasets_hash};
use super::{Env, Stage};
use crate::session::Session;

pub struct Credit;

#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    /// The trees of the generation stage.
    #[serde(rename = "trees.jsonl")]
    pub trees: String,
    /// The chain the trees have: names, roles, plugins and branches.
    #[serde(rename = "chain shape")]
    pub shape: ChainSpec,
    /// Each agent's threshold in this round.
    #[serde(rename = "agents theta")]
    pub thetas: Vec<(String, Option<f64>)>,
    /// Pooling, pairs and the global threshold of this round.
    #[serde(rename = "config [credit]")]
    pub settings: CreditSettings,
    /// The chain's plugins, which extract and grade every node: name -> hash.
    pub plugins: BTreeMap<String, String>,
    /// Every plugin's options (a grader's settings).
    #[serde(rename = "config [plugins] options")]
    pub plugin_options: BTreeMap<String, BTreeMap<String, String>>,
}

impl Inputs {
    /// The chain with this round's thresholds.
    fn chain(&self) -> ChainSpec {
        let mut c = self.shape.clone();
        for (a, (_, theta)) in c.agents.iter_mut().zip(&self.thetas) {
            a.theta = *theta;
        }
        c
    }
}

impl Stage for Credit {
    const NAME: &'static str = "credit";
    const VERSION: u32 = 1;
    type Inputs = Inputs;

    fn inputs(s: &mut Session, round: &RoundLayout) -> anyhow::Result<Inputs> {
        let (chain, settings) = s.round_credit(round);
        // Names, roles, plugins and branches: sampling made the trees, credit only reads them.
        let mut shape = chain.clone();
        for a in &mut shape.agents {
            a.theta = None;
            a.sampling = Default::default();
        }
        Ok(Inputs {
            trees: file_hash(&round.trees())?,
            thetas: chain
                .agents
                .iter()
                .map(|a| (a.name.clone(), a.theta))
                .collect(),
            plugins: chain_plugins(s, &chain),
            shape,
            settings,
            plugin_options: super::plugin_options(&s.config),
        })
    }

    fn outputs(round: &RoundLayout) -> anyhow::Result<String> {
        datasets_hash(round)
    }

    fn run(inputs: &Inputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        let report = malt_tree::recredit(
            round.dir(),
            &inputs.chain(),
            &inputs.settings,
            Some(&mut *env.tools.scorer as &mut dyn Scorer),
        )?;
        // Trees keep the scores generation gave them unless a plugin changed since.
        tracing::info!(
            "credit: {} of {} trees scored again (their plugins changed since, or an item failed)",
            report.rescored,
            report.stats.trees
        );
        print!("{}", report.stats.table());
        Ok(())
    }
}
