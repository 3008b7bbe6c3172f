//! From logged attempts to the reported figures.
//!
//! Definitions (all accuracies in percent of the questions of one seed, then mean and sample
//! std over seeds):
//! - plain system: the final outcome (last answering turn) of attempt 0;
//! - MV@k system: majority vote ([`crate::vote`]) over the final answers of attempts
//!   `0..k`; it is correct when the winning attempt was graded correct, wrong when no attempt
//!   has an answer;
//! - errored attempts count as wrong and vote `None`; an item is *errored* for a plain system
//!   when attempt 0 errored, for an MV system when all `k` attempts errored;
//! - *unparseable*: not errored but no answer (plain), or no vote cast at all (MV);
//! - per-turn accuracy: the same two rules applied to the outcome of turn `t` instead of the
//!   final one; turns that never answer (`no_answer` in every trace, e.g. a verifier) are
//!   reported as n/a;
//! - flip matrix: attempt 0, pooled over seeds, errored attempts excluded, between consecutive
//!   answering turns; unparseable counts as wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::plan::EvalPlan;
use crate::results::{AttemptKey, AttemptRecord};
use crate::stats::{mean, sample_std};
use crate::trace::{Outcome, Variant};
use crate::vote::majority_vote;

/// Version of the `report.json` layout.
pub const REPORT_FORMAT: u32 = 1;

/// Everything `report.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub plan: EvalPlan,
    /// The question subset of each seed (absolute pool indices).
    pub subsets: Vec<SeedSubset>,
    /// Table 1 rows: per variant, the plain system then its MV@k system.
    pub systems: Vec<SystemResult>,
    pub per_turn: Vec<VariantTurns>,
    pub flips: Vec<VariantFlips>,
    pub counts: Vec<VariantCounts>,
    /// Caller-provided provenance (config hash, adapters, plugin versions...), verbatim.
    pub manifest: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSubset {
    pub seed: u64,
    pub example_idx: Vec<usize>,
}

/// One row of the accuracy table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemResult {
    /// `single`, `single_mv3`, `trained_chain`, ...
    pub id: String,
    pub label: String,
    pub variant: Variant,
    /// `Some(k)` for the MV@k row, `None` for the plain (attempt 0) row.
    pub majority_k: Option<u32>,
    pub per_seed: Vec<SeedAccuracy>,
    pub mean_pct: f64,
    /// Sample std over seeds (n-1); `None` with a single seed.
    pub std_pct: Option<f64>,
    /// Items over all seeds counted as errored / unparseable (see module doc).
    pub errored: usize,
    pub unparseable: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedAccuracy {
    pub seed: u64,
    pub correct: usize,
    pub total: usize,
    pub accuracy_pct: f64,
}

/// Accuracy over seeds of one quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub per_seed_pct: Vec<f64>,
    pub mean_pct: f64,
    pub std_pct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantTurns {
    pub variant: Variant,
    pub turns: Vec<TurnAccuracy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnAccuracy {
    /// 0-based turn index.
    pub turn: usize,
    pub agent: String,
    /// Whether this turn answers at all; when false both accuracies are `null` (n/a).
    pub answering: bool,
    /// Attempt 0.
    pub accuracy: Option<Spread>,
    /// MV@k over the turn's answers of the k attempts.
    pub mv_accuracy: Option<Spread>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantFlips {
    pub variant: Variant,
    /// Non-errored attempt-0 items pooled over seeds (the sum of every transition's cells).
    pub items: usize,
    pub transitions: Vec<Flip>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub from_turn: usize,
    pub from_agent: String,
    pub to_turn: usize,
    pub to_agent: String,
    pub wrong_to_right: usize,
    pub right_to_wrong: usize,
    pub right_to_right: usize,
    pub wrong_to_wrong: usize,
}

/// Attempt-level counts over all seeds, questions and attempts of a variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantCounts {
    pub variant: Variant,
    pub attempts: usize,
    pub errored_attempts: usize,
    /// Non-errored attempts whose final answer could not be extracted.
    pub unparseable_attempts: usize,
    /// Up to five error messages, to diagnose without opening the log.
    pub first_errors: Vec<String>,
}

/// The attempts of one question: `k` records in attempt order.
type Item<'a> = Vec<&'a AttemptRecord>;

/// Which outcome of an attempt is scored.
#[derive(Clone, Copy)]
enum Scored {
    Final,
    Turn(usize),
}

fn outcome(rec: &AttemptRecord, which: Scored) -> Option<&Outcome> {
    match which {
        Scored::Final => rec.final_outcome(),
        Scored::Turn(t) => rec.outcome_at(t),
    }
}

struct ItemScore {
    correct: bool,
    errored: bool,
    unparseable: bool,
}

fn score_plain(item: &Item<'_>, which: Scored) -> ItemScore {
    let first = item[0];
    match outcome(first, which) {
        None => ItemScore {
            correct: false,
            errored: true,
            unparseable: false,
        },
        Some(o) => ItemScore {
            correct: o.is_correct(),
            errored: false,
            unparseable: !matches!(o, Outcome::Answer { .. }),
        },
    }
}

fn score_voted(item: &Item<'_>, which: Scored) -> ItemScore {
    let votes: Vec<Option<&str>> = item
        .iter()
        .map(|r| outcome(r, which).and_then(Outcome::vote_key))
        .collect();
    let winner = majority_vote(&votes);
    let errored = item.iter().all(|r| r.is_errored());
    ItemScore {
        correct: winner
            .and_then(|i| outcome(item[i], which))
            .is_some_and(Outcome::is_correct),
        errored,
        unparseable: winner.is_none() && !errored,
    }
}

fn pct(correct: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * correct as f64 / total as f64
    }
}

fn spread(per_seed_pct: Vec<f64>) -> Spread {
    Spread {
        mean_pct: mean(&per_seed_pct).unwrap_or(0.0),
        std_pct: sample_std(&per_seed_pct),
        per_seed_pct,
    }
}

/// Identifier of a system row.
pub fn system_id(variant: Variant, majority_k: Option<u32>) -> String {
    match majority_k {
        None => variant.key().to_string(),
        Some(k) => format!("{}_mv{k}", variant.key()),
    }
}

/// Label of a system row, e.g. "Untrained chain + MV@3".
pub fn system_label(variant: Variant, majority_k: Option<u32>) -> String {
    match majority_k {
        None => variant.label().to_string(),
        Some(k) => format!("{} + MV@{k}", variant.label()),
    }
}

/// Computes the report from the logged records. Every attempt the plan asks for must be
/// present (extra records, e.g. from a larger earlier plan, are ignored).
pub fn aggregate(
    plan: &EvalPlan,
    records: &BTreeMap<AttemptKey, AttemptRecord>,
    manifest: serde_json::Value,
) -> Result<Report, EvalError> {
    plan.validate()?;
    let subsets = plan.subsets()?;
    let k = plan.majority_k;

    // grid[variant][seed][question] = the k attempts.
    let mut missing: Vec<AttemptKey> = Vec::new();
    let mut grid: Vec<Vec<Vec<Item<'_>>>> = Vec::new();
    for &variant in &plan.variants {
        let mut per_seed = Vec::new();
        for (seed, subset) in &subsets {
            let mut items = Vec::new();
            for &example_idx in subset {
                let mut item = Vec::new();
                for attempt in 0..k {
                    let key = AttemptKey {
                        seed: *seed,
                        variant,
                        example_idx,
                        attempt,
                    };
                    match records.get(&key) {
                        Some(r) => item.push(r),
                        None => missing.push(key),
                    }
                }
                items.push(item);
            }
            per_seed.push(items);
        }
        grid.push(per_seed);
    }
    if let Some(first) = missing.first() {
        return Err(EvalError::Incomplete {
            missing: missing.len(),
            first: first.to_string(),
        });
    }

    let mut systems = Vec::new();
    let mut per_turn = Vec::new();
    let mut flips = Vec::new();
    let mut counts = Vec::new();
    for (vi, &variant) in plan.variants.iter().enumerate() {
        let seeds_items = &grid[vi];
        for mv in [None, Some(k)] {
            systems.push(system_row(variant, mv, &plan.seeds, seeds_items));
        }
        let layout = turn_layout(seeds_items);
        per_turn.push(turn_accuracies(variant, &layout, seeds_items));
        flips.push(flip_matrix(variant, &layout, seeds_items));
        counts.push(variant_counts(variant, seeds_items));
    }

    Ok(Report {
        format: REPORT_FORMAT,
        plan: plan.clone(),
        subsets: subsets
            .into_iter()
            .map(|(seed, example_idx)| SeedSubset { seed, example_idx })
            .collect(),
        systems,
        per_turn,
        flips,
        counts,
        manifest,
    })
}

fn system_row(
    variant: Variant,
    mv: Option<u32>,
    seeds: &[u64],
    seeds_items: &[Vec<Item<'_>>],
) -> SystemResult {
    let mut per_seed = Vec::new();
    let (mut errored, mut unparseable) = (0, 0);
    for (&seed, items) in seeds.iter().zip(seeds_items) {
        let mut correct = 0;
        for item in items {
            let s = match mv {
                None => score_plain(item, Scored::Final),
                Some(_) => score_voted(item, Scored::Final),
            };
            correct += usize::from(s.correct);
            errored += usize::from(s.errored);
            unparseable += usize::from(s.unparseable);
        }
        per_seed.push(SeedAccuracy {
            seed,
            correct,
            total: items.len(),
            accuracy_pct: pct(correct, items.len()),
        });
    }
    let s = spread(per_seed.iter().map(|a| a.accuracy_pct).collect());
    SystemResult {
        id: system_id(variant, mv),
        label: system_label(variant, mv),
        variant,
        majority_k: mv,
        per_seed,
        mean_pct: s.mean_pct,
        std_pct: s.std_pct,
        errored,
        unparseable,
    }
}

/// (agent name, answering) per turn index, over every non-errored trace of the variant.
fn turn_layout(seeds_items: &[Vec<Item<'_>>]) -> Vec<(String, bool)> {
    let mut layout: Vec<(Option<String>, bool)> = Vec::new();
    for rec in seeds_items.iter().flatten().flatten() {
        for (t, turn) in rec.turns.iter().enumerate() {
            if layout.len() <= t {
                layout.push((None, false));
            }
            let slot = &mut layout[t];
            // First agent name in log-key order names the turn; chains are fixed per variant.
            slot.0.get_or_insert_with(|| turn.agent.clone());
            slot.1 |= turn.outcome.is_answering();
        }
    }
    layout
        .into_iter()
        .enumerate()
        .map(|(t, (name, ans))| (name.unwrap_or_else(|| format!("turn {}", t + 1)), ans))
        .collect()
}

fn turn_accuracies(
    variant: Variant,
    layout: &[(String, bool)],
    seeds_items: &[Vec<Item<'_>>],
) -> VariantTurns {
    let turns = layout
        .iter()
        .enumerate()
        .map(|(t, (agent, answering))| {
            let acc = |voted: bool| {
                let per_seed = seeds_items
                    .iter()
                    .map(|items| {
                        let correct = items
                            .iter()
                            .filter(|item| {
                                if voted {
                                    score_voted(item, Scored::Turn(t)).correct
                                } else {
                                    score_plain(item, Scored::Turn(t)).correct
                                }
                            })
                            .count();
                        pct(correct, items.len())
                    })
                    .collect();
                spread(per_seed)
            };
            TurnAccuracy {
                turn: t,
                agent: agent.clone(),
                answering: *answering,
                accuracy: answering.then(|| acc(false)),
                mv_accuracy: answering.then(|| acc(true)),
            }
        })
        .collect();
    VariantTurns { variant, turns }
}

fn flip_matrix(
    variant: Variant,
    layout: &[(String, bool)],
    seeds_items: &[Vec<Item<'_>>],
) -> VariantFlips {
    let answering: Vec<usize> = layout
        .iter()
        .enumerate()
        .filter(|(_, (_, a))| *a)
        .map(|(t, _)| t)
        .collect();
    let firsts: Vec<&AttemptRecord> = seeds_items
        .iter()
        .flatten()
        .map(|item| item[0])
        .filter(|r| !r.is_errored())
        .collect();
    let transitions = answering
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let mut f = Flip {
                from_turn: a,
                from_agent: layout[a].0.clone(),
                to_turn: b,
                to_agent: layout[b].0.clone(),
                wrong_to_right: 0,
                right_to_wrong: 0,
                right_to_right: 0,
                wrong_to_wrong: 0,
            };
            for r in &firsts {
                let ra = r.outcome_at(a).is_some_and(Outcome::is_correct);
                let rb = r.outcome_at(b).is_some_and(Outcome::is_correct);
                match (ra, rb) {
                    (false, true) => f.wrong_to_right += 1,
                    (true, false) => f.right_to_wrong += 1,
                    (true, true) => f.right_to_right += 1,
                    (false, false) => f.wrong_to_wrong += 1,
                }
            }
            f
        })
        .collect();
    VariantFlips {
        variant,
        items: firsts.len(),
        transitions,
    }
}

fn variant_counts(variant: Variant, seeds_items: &[Vec<Item<'_>>]) -> VariantCounts {
    let mut c = VariantCounts {
        variant,
        attempts: 0,
        errored_attempts: 0,
        unparseable_attempts: 0,
        first_errors: Vec::new(),
    };
    for rec in seeds_items.iter().flatten().flatten() {
        c.attempts += 1;
        match (&rec.error, rec.final_outcome()) {
            (Some(msg), _) => {
                c.errored_attempts += 1;
                if c.first_errors.len() < 5 {
                    c.first_errors.push(format!("{}: {msg}", rec.key()));
                }
            }
            (None, Some(Outcome::Answer { .. })) => {}
            (None, _) => c.unparseable_attempts += 1,
        }
    }
    c
}
