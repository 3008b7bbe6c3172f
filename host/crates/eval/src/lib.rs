//! malt-eval: evaluation of single-agent and multi-agent chains with majority voting.
//!
//! The crate never touches a model or the plugin runtime. The caller implements
//! [`ChainRunner`] (one sequential pass of a system over one question) and calls
//! [`run_evaluation`]; everything else (question subsets, resumable result log, voting,
//! aggregation, Markdown/JSON/SVG reports) is pure logic here.
//!
//! One concept per module:
//! - [`trace`]: what a runner returns and the [`ChainRunner`] trait.
//! - [`vote`]: answer keys and the majority vote with its tie rule.
//! - [`subset`]: seeded question subsets (splitmix64 + partial Fisher-Yates).
//! - [`plan`]: the [`EvalPlan`], what an evaluation runs.
//! - [`results`]: the append-only JSONL result log and its resume logic.
//! - [`stats`]: mean and the std convention over seeds.
//! - [`significance`]: the paired test between two systems over distinct questions, and
//!   Holm's correction over the rows compared with the reference.
//! - [`figures`]: what `report.json` holds.
//! - [`mod@aggregate`]: from result records to the [`Report`] figures.
//! - [`driver`]: the evaluation loop.
//! - [`combine`]: one report from several runs' reports on the same questions.
//! - [`report`]: `report.md`, `report.json` and the plots.
//! - [`svg`]: hand-written SVG charts (malt-base's, which the trainer's loss curves use too).

pub mod aggregate;
pub mod budget;
pub mod combine;
pub mod driver;
pub mod error;
pub mod figures;
pub mod plan;
pub mod report;
pub mod results;
pub mod significance;
pub mod stats;
pub mod subset;
/// The SVG charts, shared with the trainer's loss curves (malt-base).
pub use malt_base::svg;
pub mod trace;
pub mod training;
pub mod vote;

pub use aggregate::{aggregate, rerender};
pub use budget::SystemBudget;
pub use combine::{combine, relabel, ReportSource, Source};
pub use driver::{report_complete_seeds, run_evaluation, PARTIAL_DIR, RESULTS_FILE};
pub use error::EvalError;
pub use figures::{
    Comparison, FinalAnswer, Report, ReportContext, RoundContext, RoundRow, RoundSummary,
    StarSummary, SystemAnswers,
};
pub use plan::{EvalPlan, NotRun, System, Table};
pub use report::{render_markdown, write_reports};
pub use results::{AttemptKey, AttemptRecord, ResultLog};
pub use significance::QuestionTest;
pub use stats::StdConvention;
pub use subset::{derive_sample_seed, select_subset, SplitMix64};
pub use trace::{ChainError, ChainRequest, ChainRunner, ChainTrace, Outcome, Turn};
pub use training::TrainingCurve;
pub use vote::{majority_vote, vote_key};
