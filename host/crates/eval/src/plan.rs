//! What an evaluation runs: the question pool, subsets, seeds, k and the systems. Its own
//! module so that the driver, the aggregation and the reports all read it without importing
//! one another.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::stats::StdConvention;
use crate::subset::select_subset;

/// Which table of the report a system belongs to (the paper's Table 1 or its ablations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    #[default]
    Main,
    Ablation,
}

/// One evaluated system: a plain row (attempt 0) and an MV@k row of the report. What it runs
/// (which agents, on which weights) is the caller's business; the evaluation only needs its
/// identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct System {
    /// Stable identifier in the result log and `report.json`: `single`, `untrained_chain`,
    /// `star`, `trained_chain`, `trained_generator`, ...
    pub id: String,
    /// Row label, e.g. "Untrained chain".
    pub label: String,
    #[serde(default)]
    pub table: Table,
    /// The MALT system: every other row is compared with its MV@k row (paired tests).
    #[serde(default)]
    pub reference: bool,
}

impl System {
    pub fn new(id: &str, label: &str, table: Table) -> Self {
        System {
            id: id.to_owned(),
            label: label.to_owned(),
            table,
            reference: false,
        }
    }

    /// The same system as the reference of the paired comparisons.
    pub fn reference(mut self) -> Self {
        self.reference = true;
        self
    }

    /// The single base model answering alone.
    pub fn single() -> Self {
        System::new("single", "Single agent", Table::Main)
    }

    /// The chain on the base model.
    pub fn untrained_chain() -> Self {
        System::new("untrained_chain", "Untrained chain", Table::Main)
    }

    /// The single agent fine-tuned on its own correct samples.
    pub fn star() -> Self {
        System::new("star", "STaR", Table::Main)
    }

    /// The chain with every agent's trained adapter.
    pub fn trained_chain() -> Self {
        System::new("trained_chain", "MALT (trained chain)", Table::Main).reference()
    }
}

/// What to evaluate. Mirrors the config's `[eval]` table plus the facts only the caller knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalPlan {
    /// Number of held-out examples the benchmark offers; subsets index into `0..pool_size`.
    pub pool_size: usize,
    /// `eval.questions`: questions per seed.
    pub questions: usize,
    /// `eval.seeds`: one subset (and one accuracy sample) per seed.
    pub seeds: Vec<u64>,
    /// `eval.majority_k`: attempts per question, the `k` of MV@k.
    pub majority_k: u32,
    /// The systems to run, in report order.
    pub systems: Vec<System>,
    /// `eval.std`: the convention of every std over seeds in the report (reports of format 2
    /// have none and used the sample std).
    #[serde(default)]
    pub std: StdConvention,
}

impl EvalPlan {
    pub fn validate(&self) -> Result<(), EvalError> {
        let bad = |m: &str| Err(EvalError::InvalidPlan(m.to_string()));
        if self.seeds.is_empty() {
            return bad("eval.seeds is empty");
        }
        if self.seeds.iter().collect::<HashSet<_>>().len() != self.seeds.len() {
            return bad("eval.seeds has duplicates (they would double-count one subset)");
        }
        if self.questions == 0 {
            return bad("eval.questions must be at least 1");
        }
        if self.majority_k == 0 {
            return bad("eval.majority_k must be at least 1");
        }
        if self.systems.is_empty() {
            return bad("no systems to evaluate");
        }
        let mut ids = HashSet::new();
        for s in &self.systems {
            if !ids.insert(s.id.as_str()) {
                return Err(EvalError::InvalidPlan(format!(
                    "system `{}` is listed twice",
                    s.id
                )));
            }
        }
        if self.systems.iter().filter(|s| s.reference).count() > 1 {
            return bad("more than one reference system");
        }
        if self.questions > self.pool_size {
            return Err(EvalError::SubsetTooLarge {
                requested: self.questions,
                pool: self.pool_size,
            });
        }
        Ok(())
    }

    /// `(seed, question subset)` for every seed, in plan order.
    pub fn subsets(&self) -> Result<Vec<(u64, Vec<usize>)>, EvalError> {
        self.seeds
            .iter()
            .map(|&s| Ok((s, select_subset(self.pool_size, self.questions, s)?)))
            .collect()
    }

    /// The system with this id.
    pub fn system(&self, id: &str) -> Option<&System> {
        self.systems.iter().find(|s| s.id == id)
    }

    /// The reference system of the paired comparisons (MALT), if the plan has one.
    pub fn reference(&self) -> Option<&System> {
        self.systems.iter().find(|s| s.reference)
    }
}

/// A configured system that was not evaluated, and why (e.g. an agent it runs trained has no
/// adapter): the report lists it where its row would be, rather than passing base weights
/// off under its trained label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotRun {
    pub system: String,
    pub label: String,
    pub reason: String,
}
