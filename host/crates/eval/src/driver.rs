//! The evaluation loop: every system on the same seeded question subsets, results logged as
//! they come, reports written at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::aggregate::aggregate;
use crate::error::EvalError;
use crate::figures::{Report, ReportContext};
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
    let mut pace = ProgressLog::new(total);
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
                    pace.attempt();
                }
            }
            bar.inc(1);
            if let Some(line) = pace.question_done() {
                bar.suspend(|| tracing::info!("{line}"));
            }
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

/// About ten log lines per evaluation, as generation writes: questions done, attempts per
/// second and the ETA, from the work of this process only (resumed questions cost nothing). The
/// bar is drawn on a terminal only: without these lines a log (stderr not a terminal) saw
/// nothing for minutes.
struct ProgressLog {
    start: Instant,
    total: u64,
    step: u64,
    done: u64,
    /// Questions with at least one attempt run here, and those attempts.
    fresh: u64,
    attempts: u64,
    fresh_question: bool,
}

impl ProgressLog {
    fn new(total: u64) -> Self {
        ProgressLog {
            start: Instant::now(),
            total,
            step: (total / 10).max(1),
            done: 0,
            fresh: 0,
            attempts: 0,
            fresh_question: false,
        }
    }

    fn attempt(&mut self) {
        self.attempts += 1;
        self.fresh_question = true;
    }

    /// Counts a question; its log line when one is due.
    fn question_done(&mut self) -> Option<String> {
        self.done += 1;
        self.fresh += u64::from(std::mem::take(&mut self.fresh_question));
        self.line(self.start.elapsed())
    }

    fn line(&self, elapsed: Duration) -> Option<String> {
        if self.fresh == 0 || (!self.done.is_multiple_of(self.step) && self.done != self.total) {
            return None;
        }
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.attempts as f64 / secs
        } else {
            0.0
        };
        let left = self.total.saturating_sub(self.done);
        let eta = elapsed.mul_f64(left as f64 / self.fresh as f64).as_secs();
        Some(format!(
            "eval: {}/{} questions, {rate:.2} attempts/s, ETA {}m{:02}s",
            self.done,
            self.total,
            eta / 60,
            eta % 60
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten lines for 100 questions, none while only resumed questions pass, the ETA from this
    /// process's own pace.
    #[test]
    fn progress_logs_about_ten_lines_from_the_work_done_here() {
        let mut p = ProgressLog::new(100);
        let mut lines = Vec::new();
        for q in 0..100 {
            if q >= 35 {
                p.attempt();
                p.attempt();
            }
            if p.question_done().is_some() {
                lines.push(q + 1);
            }
        }
        assert_eq!(lines, [40, 50, 60, 70, 80, 90, 100]);
        let mut p = ProgressLog::new(20);
        for _ in 0..10 {
            p.attempt();
            p.question_done();
        }
        assert_eq!(
            p.line(Duration::from_secs(50)).as_deref(),
            Some("eval: 10/20 questions, 0.20 attempts/s, ETA 0m50s")
        );
        let mut p = ProgressLog::new(7);
        let n = (0..7)
            .filter(|_| {
                p.attempt();
                p.question_done().is_some()
            })
            .count();
        assert_eq!(n, 7);
    }
}
