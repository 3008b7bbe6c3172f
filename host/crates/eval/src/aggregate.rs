//! From logged attempts to the reported figures.
//!
//! Definitions (all accuracies in percent of the questions of one seed, then mean and std over
//! seeds, the std of `[eval] std`: [`crate::stats`]):
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
//!   answering turns; unparseable counts as wrong. A turn a system skips answers nothing;
//! - comparisons: every row against the reference system's MV@k row, tested over distinct
//!   questions (a question drawn by several seeds pooled), Holm-corrected over the rows (see
//!   [`crate::significance`]).
//!
//! Every row and comparison follows from the final answers alone ([`SystemAnswers`], kept in
//! `report.json`), so [`rerender`] recomputes them, with another std convention for instance,
//! without the result log and without sampling anything.

use std::collections::BTreeMap;

use crate::error::EvalError;
use crate::figures::*;
use crate::plan::{EvalPlan, System};
use crate::results::{AttemptKey, AttemptRecord};
use crate::significance::{holm, question_test};
use crate::stats::{mean, StdConvention};
use crate::trace::Outcome;
use crate::vote::majority_vote;

impl FinalAnswer {
    /// The final outcome of an attempt; `None` for an errored one.
    pub fn of(outcome: Option<&Outcome>) -> Self {
        let s = Scorable::of(outcome);
        FinalAnswer {
            key: s.key.map(str::to_owned),
            correct: s.correct,
            errored: s.errored,
        }
    }
}

/// The attempts of one question: `k` records in attempt order.
type Item<'a> = Vec<&'a AttemptRecord>;

/// What scoring reads of one attempt's outcome (a final one or a turn's): the same whether it
/// comes from a logged record or from `report.json`'s [`FinalAnswer`]s.
#[derive(Clone, Copy)]
struct Scorable<'a> {
    key: Option<&'a str>,
    correct: bool,
    errored: bool,
}

impl<'a> Scorable<'a> {
    /// `None`: an errored attempt.
    fn of(outcome: Option<&'a Outcome>) -> Self {
        Scorable {
            key: outcome.and_then(Outcome::vote_key),
            correct: outcome.is_some_and(Outcome::is_correct),
            errored: outcome.is_none(),
        }
    }

    fn stored(a: &'a FinalAnswer) -> Self {
        Scorable {
            key: a.key.as_deref(),
            correct: a.correct,
            errored: a.errored,
        }
    }
}

/// The outcomes of turn `t` of one question's attempts.
fn turn_scorables<'a>(item: &Item<'a>, t: usize) -> Vec<Scorable<'a>> {
    item.iter().map(|r| Scorable::of(r.outcome_at(t))).collect()
}

struct ItemScore {
    correct: bool,
    errored: bool,
    unparseable: bool,
}

fn score_plain(item: &[Scorable<'_>]) -> ItemScore {
    let first = item[0];
    ItemScore {
        correct: first.correct,
        errored: first.errored,
        // Only an extracted answer has a key.
        unparseable: !first.errored && first.key.is_none(),
    }
}

fn score_voted(item: &[Scorable<'_>]) -> ItemScore {
    let votes: Vec<Option<&str>> = item.iter().map(|a| a.key).collect();
    let winner = majority_vote(&votes);
    let errored = item.iter().all(|a| a.errored);
    ItemScore {
        correct: winner.is_some_and(|i| item[i].correct),
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

fn spread(per_seed_pct: Vec<f64>, std: StdConvention) -> Spread {
    Spread {
        mean_pct: mean(&per_seed_pct).unwrap_or(0.0),
        std_pct: std.std(&per_seed_pct),
        per_seed_pct,
    }
}

/// Identifier of a row: the system's id, `_mvK` appended for its MV@k row.
pub fn row_id(system: &str, majority_k: Option<u32>) -> String {
    match majority_k {
        None => system.to_string(),
        Some(k) => format!("{system}_mv{k}"),
    }
}

/// Label of a row, e.g. "Untrained chain + MV@3".
pub fn row_label(label: &str, majority_k: Option<u32>) -> String {
    match majority_k {
        None => label.to_string(),
        Some(k) => format!("{label} + MV@{k}"),
    }
}

/// Computes the report from the logged records. Every attempt the plan asks for must be
/// present (extra records, e.g. from a larger earlier plan, are ignored).
pub fn aggregate(
    plan: &EvalPlan,
    records: &BTreeMap<AttemptKey, AttemptRecord>,
    ctx: &ReportContext,
) -> Result<Report, EvalError> {
    plan.validate()?;
    let subsets = plan.subsets()?;
    let k = plan.majority_k;

    // grid[system][seed][question] = the k attempts.
    let mut missing: Vec<AttemptKey> = Vec::new();
    let mut grid: Vec<Vec<Vec<Item<'_>>>> = Vec::new();
    for system in &plan.systems {
        let mut per_seed = Vec::new();
        for (seed, subset) in &subsets {
            let mut items = Vec::new();
            for &example_idx in subset {
                let mut item = Vec::new();
                for attempt in 0..k {
                    let key = AttemptKey {
                        seed: *seed,
                        system: system.id.clone(),
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

    let answers: Vec<SystemAnswers> = plan
        .systems
        .iter()
        .zip(&grid)
        .map(|(system, seeds_items)| SystemAnswers {
            system: system.id.clone(),
            per_seed: seeds_items
                .iter()
                .map(|items| {
                    items
                        .iter()
                        .map(|item| {
                            item.iter()
                                .map(|r| FinalAnswer::of(r.final_outcome()))
                                .collect()
                        })
                        .collect()
                })
                .collect(),
        })
        .collect();
    let (systems, comparisons) = rows_and_comparisons(plan, &subsets, &answers);

    let mut per_turn = Vec::new();
    let mut flips = Vec::new();
    let mut counts = Vec::new();
    for (system, seeds_items) in plan.systems.iter().zip(&grid) {
        let layout = turn_layout(seeds_items);
        per_turn.push(turn_accuracies(system, &layout, seeds_items, plan.std));
        flips.push(flip_matrix(system, &layout, seeds_items));
        counts.push(system_counts(system, seeds_items));
    }

    let mut report = Report {
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
        comparisons,
        star: ctx.star.clone(),
        rounds: Vec::new(),
        manifest: ctx.manifest.clone(),
        answers,
        not_run: ctx.not_run.clone(),
        budgets: ctx.budgets.clone(),
        training: ctx.training.clone(),
        sources: Vec::new(),
    };
    if let Some(rc) = &ctx.round {
        let mut rounds: Vec<RoundSummary> = rc
            .earlier
            .iter()
            .filter(|s| s.round < rc.round)
            .cloned()
            .collect();
        rounds.push(RoundSummary::of(&report, rc.round, rc.theta));
        report.rounds = rounds;
    }
    Ok(report)
}

/// The report recomputed from its own `report.json`: the rows and comparisons from the stored
/// final answers, every std in the convention of `report.plan.std` (set it to re-render in
/// the other one), this round's row of the accuracy-by-round table from the new rows. The
/// per-turn accuracies keep their per-seed values (only their mean and std are recomputed);
/// flips, counts, STaR, manifest and the earlier rounds are kept as they are. A report
/// aggregated from the result log comes back unchanged.
pub fn rerender(report: &Report) -> Result<Report, EvalError> {
    let plan = &report.plan;
    plan.validate()?;
    let subsets: Vec<(u64, Vec<usize>)> = report
        .subsets
        .iter()
        .map(|s| (s.seed, s.example_idx.clone()))
        .collect();
    check_answers(report, &subsets)?;
    let (systems, comparisons) = rows_and_comparisons(plan, &subsets, &report.answers);
    let mut out = Report {
        format: REPORT_FORMAT,
        systems,
        comparisons,
        ..report.clone()
    };
    for turn in out.per_turn.iter_mut().flat_map(|v| &mut v.turns) {
        for s in [&mut turn.accuracy, &mut turn.mv_accuracy]
            .into_iter()
            .flatten()
        {
            *s = spread(std::mem::take(&mut s.per_seed_pct), plan.std);
        }
    }
    if let Some(last) = out.rounds.pop() {
        let summary = RoundSummary::of(&out, last.round, last.theta);
        out.rounds.push(summary);
    }
    Ok(out)
}

/// Refuses stored answers that do not cover the plan exactly (a report from before format 3,
/// or one edited by hand).
fn check_answers(report: &Report, subsets: &[(u64, Vec<usize>)]) -> Result<(), EvalError> {
    let plan = &report.plan;
    let bad = |why: String| {
        Err(EvalError::InvalidReport(format!(
            "{why}; aggregate it again from its results.jsonl (`malt eval`)"
        )))
    };
    if report.answers.is_empty() {
        return bad(format!(
            "a report of format {} has no final answers (format 3 and later keep them)",
            report.format
        ));
    }
    let seeds: Vec<u64> = subsets.iter().map(|(s, _)| *s).collect();
    if seeds != plan.seeds {
        return bad(format!(
            "its subsets are of seeds {seeds:?}, its plan has {:?}",
            plan.seeds
        ));
    }
    let ids: Vec<&str> = report.answers.iter().map(|a| a.system.as_str()).collect();
    let want: Vec<&str> = plan.systems.iter().map(|s| s.id.as_str()).collect();
    if ids != want {
        return bad(format!("answers of systems {ids:?}, the plan has {want:?}"));
    }
    for a in &report.answers {
        if a.per_seed.len() != subsets.len() {
            return bad(format!(
                "system `{}` has answers for {} seeds, the plan has {}",
                a.system,
                a.per_seed.len(),
                subsets.len()
            ));
        }
        for (items, (seed, subset)) in a.per_seed.iter().zip(subsets) {
            if items.len() != subset.len() {
                return bad(format!(
                    "system `{}`, seed {seed}: {} questions answered, the subset has {}",
                    a.system,
                    items.len(),
                    subset.len()
                ));
            }
            if let Some(q) = items
                .iter()
                .position(|attempts| attempts.len() != plan.majority_k as usize)
            {
                return bad(format!(
                    "system `{}`, seed {seed}, example {}: {} attempts, majority_k is {}",
                    a.system,
                    subset[q],
                    items[q].len(),
                    plan.majority_k
                ));
            }
        }
    }
    Ok(())
}

/// Every system's plain and MV@k rows and, with a reference system, every other row compared
/// with its MV@k row. `answers` cover the plan (aggregated, or checked by [`check_answers`]).
fn rows_and_comparisons(
    plan: &EvalPlan,
    subsets: &[(u64, Vec<usize>)],
    answers: &[SystemAnswers],
) -> (Vec<SystemResult>, Vec<Comparison>) {
    let k = plan.majority_k;
    let mut systems = Vec::new();
    // Per row, per seed, per question: correct? (for the paired comparisons)
    let mut correctness: Vec<Vec<Vec<bool>>> = Vec::new();
    for (system, a) in plan.systems.iter().zip(answers) {
        for mv in [None, Some(k)] {
            let (row, correct) = system_row(system, mv, &plan.seeds, &a.per_seed, plan.std);
            systems.push(row);
            correctness.push(correct);
        }
    }
    let comparisons = plan
        .reference()
        .and_then(|r| {
            let id = row_id(&r.id, Some(k));
            systems.iter().position(|s| s.id == id)
        })
        .map(|ri| compare_rows(&systems, &correctness, subsets, ri, plan.std))
        .unwrap_or_default();
    (systems, comparisons)
}

/// Every row but the reference against the reference row `ri`, Holm-corrected over them all.
fn compare_rows(
    rows: &[SystemResult],
    correct: &[Vec<Vec<bool>>],
    subsets: &[(u64, Vec<usize>)],
    ri: usize,
    std: StdConvention,
) -> Vec<Comparison> {
    let reference = &rows[ri];
    let mut comparisons: Vec<Comparison> = rows
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != ri)
        .map(|(i, row)| {
            let (mut pairs, mut b, mut c) = (0, 0, 0);
            let mut by_question = Vec::new();
            for ((ref_seed, row_seed), (_, subset)) in
                correct[ri].iter().zip(&correct[i]).zip(subsets)
            {
                for ((&x, &y), &q) in ref_seed.iter().zip(row_seed).zip(subset) {
                    pairs += 1;
                    b += usize::from(x && !y);
                    c += usize::from(y && !x);
                    by_question.push((q, x, y));
                }
            }
            let diffs: Vec<f64> = reference
                .per_seed
                .iter()
                .zip(&row.per_seed)
                .map(|(r, o)| r.accuracy_pct - o.accuracy_pct)
                .collect();
            Comparison {
                row: row.id.clone(),
                label: row.label.clone(),
                reference: reference.id.clone(),
                pairs,
                reference_only: b,
                row_only: c,
                diff_mean_pct: mean(&diffs).unwrap_or(0.0),
                diff_std_pct: std.std(&diffs),
                diff_per_seed_pct: diffs,
                test: Some(question_test(by_question)),
                sign_test_p: None,
            }
        })
        .collect();
    let p: Vec<f64> = comparisons
        .iter()
        .filter_map(|c| c.test.as_ref().map(|t| t.p))
        .collect();
    for (c, adjusted) in comparisons.iter_mut().zip(holm(&p)) {
        if let Some(t) = &mut c.test {
            t.holm_p = adjusted;
        }
    }
    comparisons
}

fn system_row(
    system: &System,
    mv: Option<u32>,
    seeds: &[u64],
    per_seed_answers: &[Vec<Vec<FinalAnswer>>],
    std: StdConvention,
) -> (SystemResult, Vec<Vec<bool>>) {
    let mut per_seed = Vec::new();
    let mut correctness = Vec::new();
    let (mut errored, mut unparseable) = (0, 0);
    for (&seed, items) in seeds.iter().zip(per_seed_answers) {
        let mut flags = Vec::with_capacity(items.len());
        for item in items {
            let attempts: Vec<Scorable<'_>> = item.iter().map(Scorable::stored).collect();
            let s = match mv {
                None => score_plain(&attempts),
                Some(_) => score_voted(&attempts),
            };
            flags.push(s.correct);
            errored += usize::from(s.errored);
            unparseable += usize::from(s.unparseable);
        }
        let correct = flags.iter().filter(|&&c| c).count();
        per_seed.push(SeedAccuracy {
            seed,
            correct,
            total: items.len(),
            accuracy_pct: pct(correct, items.len()),
        });
        correctness.push(flags);
    }
    let s = spread(per_seed.iter().map(|a| a.accuracy_pct).collect(), std);
    let row = SystemResult {
        id: row_id(&system.id, mv),
        label: row_label(&system.label, mv),
        system: system.id.clone(),
        table: system.table,
        majority_k: mv,
        per_seed,
        mean_pct: s.mean_pct,
        std_pct: s.std_pct,
        errored,
        unparseable,
    };
    (row, correctness)
}

/// Per turn index, over every non-errored trace of the system: (agent name, answering,
/// skipped).
fn turn_layout(seeds_items: &[Vec<Item<'_>>]) -> Vec<(String, bool, bool)> {
    let mut layout: Vec<(Option<String>, bool, bool)> = Vec::new();
    for rec in seeds_items.iter().flatten().flatten() {
        for (t, turn) in rec.turns.iter().enumerate() {
            if layout.len() <= t {
                layout.push((None, false, true));
            }
            let slot = &mut layout[t];
            // First agent name in log-key order names the turn; chains are fixed per system.
            slot.0.get_or_insert_with(|| turn.agent.clone());
            slot.1 |= turn.outcome.is_answering();
            slot.2 &= turn.skipped;
        }
    }
    layout
        .into_iter()
        .enumerate()
        .map(|(t, (name, ans, skipped))| {
            (
                name.unwrap_or_else(|| format!("turn {}", t + 1)),
                ans,
                skipped,
            )
        })
        .collect()
}

fn turn_accuracies(
    system: &System,
    layout: &[(String, bool, bool)],
    seeds_items: &[Vec<Item<'_>>],
    std: StdConvention,
) -> SystemTurns {
    let turns = layout
        .iter()
        .enumerate()
        .map(|(t, (agent, answering, skipped))| {
            let acc = |voted: bool| {
                let per_seed = seeds_items
                    .iter()
                    .map(|items| {
                        let correct = items
                            .iter()
                            .filter(|item| {
                                let attempts = turn_scorables(item, t);
                                if voted {
                                    score_voted(&attempts).correct
                                } else {
                                    score_plain(&attempts).correct
                                }
                            })
                            .count();
                        pct(correct, items.len())
                    })
                    .collect();
                spread(per_seed, std)
            };
            let truncated = seeds_items
                .iter()
                .flatten()
                .flatten()
                .filter(|rec| rec.turns.get(t).is_some_and(|turn| turn.truncated))
                .count();
            TurnAccuracy {
                turn: t,
                agent: agent.clone(),
                answering: *answering,
                skipped: *skipped,
                accuracy: answering.then(|| acc(false)),
                mv_accuracy: answering.then(|| acc(true)),
                truncated: Some(truncated),
            }
        })
        .collect();
    SystemTurns {
        system: system.id.clone(),
        label: system.label.clone(),
        turns,
    }
}

fn flip_matrix(
    system: &System,
    layout: &[(String, bool, bool)],
    seeds_items: &[Vec<Item<'_>>],
) -> SystemFlips {
    let answering: Vec<usize> = layout
        .iter()
        .enumerate()
        .filter(|(_, (_, a, _))| *a)
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
    SystemFlips {
        system: system.id.clone(),
        label: system.label.clone(),
        items: firsts.len(),
        transitions,
    }
}

fn system_counts(system: &System, seeds_items: &[Vec<Item<'_>>]) -> SystemCounts {
    let mut c = SystemCounts {
        system: system.id.clone(),
        label: system.label.clone(),
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
