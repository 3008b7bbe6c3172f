//! The evaluation loop: every system on the same seeded question subsets, results logged as
//! they come, reports written at the end.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::aggregate::{aggregate, Report, ReportContext};
use crate::error::EvalError;
use crate::plan::EvalPlan;
use crate::report::write_reports;
use crate::results::{read_records, AttemptKey, AttemptRecord, ResultLog};
use crate::subset::derive_sample_seed;
use crate::trace::{ChainError, ChainRequest, ChainRunner};

/// Where [`report_complete_seeds`] writes, inside the output directory.
pub use malt_layout::PARTIAL as PARTIAL_DIR;

/// Name of the result log inside the output directory.
pub use malt_layout::RESULTS as RESULTS_FILE;

/// Runs every missing attempt of `plan` through `runner`, appending to
/// `<out_dir>/results.jsonl`, then writes the reports into `out_dir` and returns the figures.
///
/// Order: seed, question, system, attempt, so an interrupted run has complete questions
/// rather than a complete first system. Attempts already in the log are skipped (resume).
/// `ChainError::Item` is logged as an errored attempt; `ChainError::Fatal` stops the run with
/// `EvalError::Runner`, leaving the log resumable. `ctx` (provenance, STaR data, earlier
/// rounds) goes into the report verbatim. `progress` draws a bar over questions on stderr
/// (hidden when not a terminal).
pub fn run_evaluation(
    runner: &mut dyn ChainRunner,
    plan: &EvalPlan,
    out_dir: &Path,
    ctx: &ReportContext,
    progress: bool,
) -> Result<Report, EvalError> {
    plan.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|e| EvalError::io(out_dir, e))?;
    let mut log = ResultLog::open(out_dir.join(RESULTS_FILE))?;
    let subsets = plan.subsets()?;

    let total = (plan.seeds.len() * plan.questions) as u64;
    let bar = if progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "eval {bar:30} {pos}/{len} questions {msg} [{elapsed} < {eta}]",
    ) {
        bar.set_style(style);
    }
    let resumed = log.records().len();
    if resumed > 0 {
        tracing::info!(records = resumed, path = %log.path().display(), "resuming evaluation");
    }

    for (seed, subset) in &subsets {
        bar.set_message(format!("seed {seed}"));
        for &example_idx in subset {
            for system in &plan.systems {
                for attempt in 0..plan.majority_k {
                    let key = AttemptKey {
                        seed: *seed,
                        system: system.id.clone(),
                        example_idx,
                        attempt,
                    };
                    if log.contains(&key) {
                        continue;
                    }
                    let request = ChainRequest {
                        system: system.id.clone(),
                        example_idx,
                        attempt,
                        eval_seed: *seed,
                        sample_seed: derive_sample_seed(*seed, example_idx, attempt),
                    };
                    let result = match runner.run_chain(&request) {
                        Ok(trace) => Ok(trace),
                        Err(ChainError::Item(msg)) => {
                            tracing::warn!(%key, error = %msg, "attempt failed; counted as wrong");
                            Err(msg)
                        }
                        Err(ChainError::Fatal(msg)) => {
                            bar.abandon();
                            return Err(EvalError::Runner(msg));
                        }
                    };
                    log.append(AttemptRecord::new(key, request.sample_seed, result))?;
                }
            }
            bar.inc(1);
        }
        // A line per seed for logs (the bar is hidden when stderr is not a terminal).
        tracing::info!(
            seed,
            questions = subset.len(),
            logged = log.records().len(),
            "evaluation seed complete"
        );
    }
    bar.finish_and_clear();

    let report = aggregate(plan, log.records(), ctx)?;
    write_reports(out_dir, &report)?;
    for s in &report.systems {
        tracing::info!(system = %s.id, mean_pct = s.mean_pct, std_pct = ?s.std_pct,
            errored = s.errored, "evaluation result");
    }
    Ok(report)
}

/// The report over the seeds of `plan` whose every attempt is already in
/// `<out_dir>/results.jsonl`, written into `<out_dir>/partial/`: a look at a long evaluation
/// while it runs or after it stopped, without running anything. The log is only read, so an
/// evaluation may be appending to it. Fails with [`EvalError::Incomplete`] (counting the first
/// seed's missing attempts) when no seed is complete.
pub fn report_complete_seeds(
    plan: &EvalPlan,
    out_dir: &Path,
    ctx: &ReportContext,
) -> Result<Report, EvalError> {
    plan.validate()?;
    let path = out_dir.join(RESULTS_FILE);
    let records = if path.exists() {
        read_records(&path)?
    } else {
        Default::default()
    };
    let mut complete = Vec::new();
    let mut first_missing: Option<(usize, String)> = None;
    for (seed, subset) in plan.subsets()? {
        let missing: Vec<AttemptKey> = subset
            .iter()
            .flat_map(|&example_idx| {
                plan.systems.iter().flat_map(move |system| {
                    (0..plan.majority_k).map(move |attempt| AttemptKey {
                        seed,
                        system: system.id.clone(),
                        example_idx,
                        attempt,
                    })
                })
            })
            .filter(|k| !records.contains_key(k))
            .collect();
        match missing.first() {
            None => complete.push(seed),
            Some(k) if first_missing.is_none() => {
                first_missing = Some((missing.len(), k.to_string()));
            }
            Some(_) => {}
        }
    }
    if complete.is_empty() {
        let (missing, first) = first_missing.unwrap_or_default();
        return Err(EvalError::Incomplete { missing, first });
    }
    let partial = EvalPlan {
        seeds: complete,
        ..plan.clone()
    };
    let report = aggregate(&partial, &records, ctx)?;
    write_reports(&out_dir.join(PARTIAL_DIR), &report)?;
    Ok(report)
}
