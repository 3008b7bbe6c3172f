//! What an evaluation runs: the question pool, subsets, seeds, k and the variants. Its own
//! module so that the driver, the aggregation and the reports all read it without importing
//! one another.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::subset::select_subset;
use crate::trace::Variant;

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
    /// The variants to run, in report order (typically [`Variant::ALL`]).
    pub variants: Vec<Variant>,
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
        if self.variants.is_empty() {
            return bad("no variants to evaluate");
        }
        if self.variants.iter().collect::<HashSet<_>>().len() != self.variants.len() {
            return bad("a variant is listed twice");
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
}
