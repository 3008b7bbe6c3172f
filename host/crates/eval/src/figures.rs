//! What `report.json` holds: the report's figures, one struct each (rows, per-turn accuracy,
//! flips, counts, comparisons, final answers), and what the caller adds to them. How they are
//! computed is [`crate::aggregate`]; how they are written, [`crate::report`].

use serde::{Deserialize, Serialize};

use crate::budget::SystemBudget;
use crate::combine::ReportSource;
use crate::plan::{EvalPlan, NotRun, Table};
use crate::significance::QuestionTest;
use crate::training::TrainingCurve;

/// Version of the `report.json` layout (2: configurable systems, comparisons, STaR, rounds;
/// 3: the std convention in the plan, comparisons over distinct questions with Holm's
/// correction, every system's final answers; 4: the online systems' training curves). Format-2
/// reports still load: their comparisons keep the per-pair `sign_test_p` and have no `test`, and
/// they have no `answers`; format-3 reports have no `training`.
pub const REPORT_FORMAT: u32 = 4;

/// Everything `report.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub plan: EvalPlan,
    /// The question subset of each seed (absolute pool indices).
    pub subsets: Vec<SeedSubset>,
    /// The rows: per system, the plain row then its MV@k row.
    pub systems: Vec<SystemResult>,
    pub per_turn: Vec<SystemTurns>,
    pub flips: Vec<SystemFlips>,
    pub counts: Vec<SystemCounts>,
    /// Every other row against the reference system's MV@k row (empty without a reference).
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
    /// What the STaR system was trained on (from the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub star: Option<StarSummary>,
    /// Accuracy by round of `[rounds]`: the earlier rounds' and this one's (empty for a run of
    /// one round).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundSummary>,
    /// Caller-provided provenance (config hash, adapters, plugin versions...), verbatim.
    pub manifest: serde_json::Value,
    /// Every system's final answers (format 3; empty in older reports), from which
    /// [`rerender`] recomputes the rows and comparisons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<SystemAnswers>,
    /// Configured systems that were not evaluated, and why (from the caller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_run: Vec<NotRun>,
    /// What each system cost to train (from the caller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<SystemBudget>,
    /// How each online-trained system's training went, step by step (from the caller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub training: Vec<TrainingCurve>,
    /// A combined report's sources ([`crate::combine`]); empty for a run's own report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<ReportSource>,
}

/// The final outcome of one attempt, as `report.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalAnswer {
    /// The vote key of the final answer ([`Outcome::vote_key`]); `null` when there is none
    /// (unparseable or errored).
    pub key: Option<String>,
    pub correct: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub errored: bool,
}

/// One system's final answers: `per_seed[seed][question][attempt]`, seeds in plan order,
/// questions in the order of that seed's subset (`subsets`), `majority_k` attempts each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemAnswers {
    pub system: String,
    pub per_seed: Vec<Vec<Vec<FinalAnswer>>>,
}

/// What the caller adds to a report: provenance and facts the evaluation cannot know.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportContext {
    pub manifest: serde_json::Value,
    pub star: Option<StarSummary>,
    /// This evaluation's round and the summaries of the rounds before it (`None`: a run of one
    /// round).
    pub round: Option<RoundContext>,
    /// Configured systems left out, with why.
    pub not_run: Vec<NotRun>,
    /// Each system's training budget.
    pub budgets: Vec<SystemBudget>,
    /// The online-trained systems' training curves.
    pub training: Vec<TrainingCurve>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoundContext {
    pub round: u32,
    pub theta: f64,
    pub earlier: Vec<RoundSummary>,
}

/// The STaR baseline's training data and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StarSummary {
    /// `sampled` (its own samples) or `trees` (the generator outputs of the stored trees).
    pub data: String,
    /// Where the samples came from, in words (model, temperature, samples per question).
    pub source: String,
    /// Training questions.
    pub questions: usize,
    /// Samples drawn over all questions.
    pub samples: usize,
    /// Correct samples kept: the SFT examples.
    pub kept: usize,
    /// Optimiser steps of its SFT (as many as the MALT generator's by default).
    pub steps: u64,
}

/// The rows of one round's report, for the accuracy-by-round table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: u32,
    pub theta: f64,
    pub rows: Vec<RoundRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRow {
    /// Row id (`trained_chain_mv3`, ...).
    pub id: String,
    pub label: String,
    pub mean_pct: f64,
    /// In the convention of the report it was taken from.
    pub std_pct: Option<f64>,
}

impl RoundSummary {
    /// The summary of a finished report of round `round`.
    pub fn of(report: &Report, round: u32, theta: f64) -> Self {
        RoundSummary {
            round,
            theta,
            rows: report
                .systems
                .iter()
                .map(|s| RoundRow {
                    id: s.id.clone(),
                    label: s.label.clone(),
                    mean_pct: s.mean_pct,
                    std_pct: s.std_pct,
                })
                .collect(),
        }
    }
}

/// One row compared with the reference row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The compared row's id and label.
    pub row: String,
    pub label: String,
    /// The reference row (the MALT system's MV@k row).
    pub reference: String,
    /// (seed, question) pairs: every question of every seed.
    pub pairs: usize,
    /// Pairs only the reference gets right / only the compared row gets right.
    pub reference_only: usize,
    pub row_only: usize,
    /// Reference minus row accuracy per seed (percentage points), mean and std (`plan.std`).
    pub diff_per_seed_pct: Vec<f64>,
    pub diff_mean_pct: f64,
    pub diff_std_pct: Option<f64>,
    /// The test over distinct questions with its Holm-adjusted p (format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<QuestionTest>,
    /// Format 2 only: the sign test over the discordant (seed, question) pairs, which counted a
    /// question drawn by several seeds several times and was not corrected for the number of
    /// rows. Kept to read old reports; format 3 leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_test_p: Option<f64>,
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
    /// The system's id (the row id without its `_mvK`).
    pub system: String,
    pub table: Table,
    /// `Some(k)` for the MV@k row, `None` for the plain (attempt 0) row.
    pub majority_k: Option<u32>,
    pub per_seed: Vec<SeedAccuracy>,
    pub mean_pct: f64,
    /// Std over seeds in the convention of `plan.std`; `None` with a single seed.
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
    /// In the convention of `plan.std`.
    pub std_pct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemTurns {
    pub system: String,
    pub label: String,
    pub turns: Vec<TurnAccuracy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnAccuracy {
    /// 0-based turn index.
    pub turn: usize,
    pub agent: String,
    /// Whether this turn answers at all; when false both accuracies are `null` (n/a).
    pub answering: bool,
    /// The system skips this agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Attempt 0.
    pub accuracy: Option<Spread>,
    /// MV@k over the turn's answers of the k attempts.
    pub mv_accuracy: Option<Spread>,
    /// Attempts (every seed, question and attempt) whose output at this turn was cut at the
    /// length limit; `None` in reports from before malt recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemFlips {
    pub system: String,
    pub label: String,
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

/// Attempt-level counts over all seeds, questions and attempts of a system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemCounts {
    pub system: String,
    pub label: String,
    pub attempts: usize,
    pub errored_attempts: usize,
    /// Non-errored attempts whose final answer could not be extracted.
    pub unparseable_attempts: usize,
    /// Up to five error messages, to diagnose without opening the log.
    pub first_errors: Vec<String>,
}
