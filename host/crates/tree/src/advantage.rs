//! Advantages for on-policy training: each node against its sibling group.
//!
//! Siblings share their parent, hence their exact input (the question, or the same upstream
//! outputs): the mean of their values is a baseline for each of them that costs no extra
//! sampling. That is what GRPO and RLOO get by sampling a group per prompt; in MALT's tree every
//! level already has one. A node's value is its credit value ([`crate::credit::assign`]: the leaf
//! reward, or the mean of its children's values), so a generator's advantage says how much
//! better its n^2 descendants did than its siblings' did.
//!
//! Only scored siblings form the group (errored ones have no value). A node gets no advantage
//! (`None`: it is not trained) when it is unscored or is the only scored member of its group:
//! with no sibling there is no baseline.

use serde::{Deserialize, Serialize};

use crate::credit::{Credit, CreditInput};

/// How a node's value becomes an advantage within its sibling group of `k` scored members with
/// mean `m` and (unbiased) standard deviation `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// `v - m`: the group mean as the baseline (Dr. GRPO's choice: no division by the spread,
    /// which would weight nearly-solved and nearly-hopeless groups up).
    Centered,
    /// `(v - m) / (s + 1e-4)`: GRPO's, as TRL computes it (`std` over the group with Bessel's
    /// correction, then `1e-4` added).
    Normalized,
    /// `v - mean of the other k - 1 members` `= k / (k - 1) (v - m)`: RLOO's leave-one-out
    /// baseline, which does not contain the node's own value, so the gradient estimate stays
    /// unbiased. With a fixed group size it is `Centered` scaled by `k / (k - 1)`; it differs
    /// when errors leave groups of different sizes.
    #[default]
    LeaveOneOut,
}

/// TRL's `1e-4` guard in GRPO's division by the group's standard deviation.
pub const NORMALIZED_EPS: f64 = 1e-4;

/// Summary of one tree's (or many trees') advantages, for the step's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AdvantageStats {
    /// Nodes that got an advantage.
    pub nodes: usize,
    /// Nodes left without one: unscored, or alone in their group.
    pub skipped: usize,
    /// Sibling groups whose members all had the same value: no signal, every advantage 0.
    pub flat_groups: usize,
    pub sum: f64,
    pub sum_sq: f64,
}

impl AdvantageStats {
    pub fn mean(&self) -> f64 {
        self.sum / self.nodes.max(1) as f64
    }

    /// Population standard deviation of the advantages.
    pub fn std(&self) -> f64 {
        let n = self.nodes.max(1) as f64;
        (self.sum_sq / n - self.mean().powi(2)).max(0.0).sqrt()
    }

    pub fn add(&mut self, other: &AdvantageStats) {
        self.nodes += other.nodes;
        self.skipped += other.skipped;
        self.flat_groups += other.flat_groups;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }
}

/// Every node's advantage (`None`: not trained), in arena order, and their summary per level
/// (index = level).
///
/// Sibling groups are the runs of consecutive nodes with one parent and one level (the arena's
/// layout, see [`crate::tree`]).
pub fn advantages(
    input: &CreditInput,
    credit: &Credit,
    estimator: Estimator,
) -> (Vec<Option<f64>>, Vec<AdvantageStats>) {
    let mut out = vec![None; input.len()];
    let mut levels = vec![AdvantageStats::default(); input.leaf_level as usize + 1];
    for group in crate::credit::sibling_groups(input) {
        let (start, end) = (group.start, group.end);
        let stats = &mut levels[input.level[start] as usize];
        let scored: Vec<(usize, f64)> = (start..end)
            .filter_map(|i| credit.value_of(i).map(|v| (i, v)))
            .collect();
        stats.skipped += (end - start) - scored.len();
        if scored.len() < 2 {
            stats.skipped += scored.len();
            continue;
        }
        let k = scored.len() as f64;
        let mean = scored.iter().map(|&(_, v)| v).sum::<f64>() / k;
        let var = scored.iter().map(|&(_, v)| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
        if scored.iter().all(|&(_, v)| v == scored[0].1) {
            stats.flat_groups += 1;
        }
        for &(i, v) in &scored {
            let a = match estimator {
                Estimator::Centered => v - mean,
                Estimator::Normalized => (v - mean) / (var.sqrt() + NORMALIZED_EPS),
                Estimator::LeaveOneOut => k / (k - 1.0) * (v - mean),
            };
            out[i] = Some(a);
            stats.nodes += 1;
            stats.sum += a;
            stats.sum_sq += a * a;
        }
    }
    (out, levels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credit::{assign, Pooling, NO_PARENT};
    use proptest::prelude::*;

    /// A 2-2 chain (2 level-0 nodes, 4 leaves) with the given leaf rewards (`None`: errored).
    fn tree(rewards: [Option<f64>; 4]) -> (CreditInput, Credit) {
        let input = CreditInput {
            parent: vec![NO_PARENT, NO_PARENT, 0, 0, 1, 1],
            level: vec![0, 0, 1, 1, 1, 1],
            reward: [0.0, 0.0]
                .into_iter()
                .chain(rewards.iter().map(|r| r.unwrap_or(f64::NAN)))
                .collect(),
            errored: [false, false]
                .into_iter()
                .chain(rewards.iter().map(|r| r.is_none()))
                .collect(),
            leaf_level: 1,
        };
        let mut credit = Credit::default();
        assign(&input, &[0.5, 0.5], Pooling::Global, &mut credit);
        (input, credit)
    }

    fn total(levels: &[AdvantageStats]) -> AdvantageStats {
        let mut t = AdvantageStats::default();
        for l in levels {
            t.add(l);
        }
        t
    }

    fn approx(got: &[Option<f64>], want: &[Option<f64>]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "node {i}: {g} vs {w}"),
                _ => assert_eq!(g, w, "node {i}"),
            }
        }
    }

    #[test]
    fn hand_computed_values_for_each_estimator() {
        // Leaves 1, 0 under node 0 (value 0.5) and 1, 1 under node 1 (value 1).
        let (input, credit) = tree([Some(1.0), Some(0.0), Some(1.0), Some(1.0)]);
        // Level 0: values 0.5 and 1, mean 0.75, unbiased std sqrt(0.125) = 0.353553...
        // Leaves under node 0: values 1 and 0, mean 0.5, std sqrt(0.5) = 0.707107...
        // Leaves under node 1: 1 and 1: a flat group, advantages 0.
        let (a, s) = advantages(&input, &credit, Estimator::Centered);
        let s = total(&s);
        approx(
            &a,
            &[
                Some(-0.25),
                Some(0.25),
                Some(0.5),
                Some(-0.5),
                Some(0.0),
                Some(0.0),
            ],
        );
        assert_eq!((s.nodes, s.skipped, s.flat_groups), (6, 0, 1));
        let (a, _) = advantages(&input, &credit, Estimator::Normalized);
        let (s0, s1) = (0.125f64.sqrt() + 1e-4, 0.5f64.sqrt() + 1e-4);
        approx(
            &a,
            &[
                Some(-0.25 / s0),
                Some(0.25 / s0),
                Some(0.5 / s1),
                Some(-0.5 / s1),
                Some(0.0),
                Some(0.0),
            ],
        );
        // Groups of two: the other member's value is the baseline.
        let (a, _) = advantages(&input, &credit, Estimator::LeaveOneOut);
        approx(
            &a,
            &[
                Some(-0.5),
                Some(0.5),
                Some(1.0),
                Some(-1.0),
                Some(0.0),
                Some(0.0),
            ],
        );
    }

    #[test]
    fn errored_and_lonely_nodes_get_none() {
        // Node 0's second leaf errored: its first leaf is alone in its group, and node 0's value
        // is that leaf's (1.0) against node 1's 0.5.
        let (input, credit) = tree([Some(1.0), None, Some(1.0), Some(0.0)]);
        let (a, s) = advantages(&input, &credit, Estimator::LeaveOneOut);
        approx(
            &a,
            &[Some(0.5), Some(-0.5), None, None, Some(1.0), Some(-1.0)],
        );
        assert_eq!((s[0].nodes, s[1].nodes, s[1].skipped), (2, 2, 2));
        let s = total(&s);
        assert_eq!((s.nodes, s.skipped), (4, 2));
    }

    proptest! {
        /// Within every group, centered advantages sum to zero, leave-one-out is centered
        /// scaled by k / (k - 1), and normalized has the sign of centered.
        #[test]
        fn estimators_agree_on_structure(r in proptest::collection::vec(proptest::option::weighted(0.8, 0.0f64..=1.0), 4)) {
            let (input, credit) = tree([r[0], r[1], r[2], r[3]]);
            let (c, _) = advantages(&input, &credit, Estimator::Centered);
            let (l, _) = advantages(&input, &credit, Estimator::LeaveOneOut);
            let (z, _) = advantages(&input, &credit, Estimator::Normalized);
            for group in [0..2usize, 2..4, 4..6] {
                let members: Vec<usize> = group.clone().filter(|&i| c[i].is_some()).collect();
                let sum: f64 = members.iter().map(|&i| c[i].unwrap()).sum();
                prop_assert!(sum.abs() < 1e-9);
                let k = members.len() as f64;
                for &i in &members {
                    prop_assert!((l[i].unwrap() - k / (k - 1.0) * c[i].unwrap()).abs() < 1e-9);
                    prop_assert!(z[i].unwrap() * c[i].unwrap() >= 0.0);
                }
            }
        }
    }
}
