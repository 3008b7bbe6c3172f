//! Writing the figures: `report.md`, `report.json`, `accuracy.svg`, `per_turn.svg`.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::EvalError;
use crate::figures::{Report, Spread, SystemResult, SystemTurns};
use crate::plan::Table;
use crate::svg::{bar_chart, line_chart, Bar, LineChart, Series};

pub const REPORT_MD: &str = "report.md";
pub const REPORT_JSON: &str = "report.json";
pub const ACCURACY_SVG: &str = "accuracy.svg";
pub const PER_TURN_SVG: &str = "per_turn.svg";
pub const ABLATIONS_SVG: &str = "ablations.svg";
pub const ROUNDS_SVG: &str = "rounds.svg";

fn fmt_spread(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(s) => format!("{mean:.2} ± {s:.2}"),
        None => format!("{mean:.2}"),
    }
}

fn fmt_opt_spread(s: Option<&Spread>) -> String {
    s.map(|s| fmt_spread(s.mean_pct, s.std_pct))
        .unwrap_or_else(|| "n/a".to_string())
}

/// Formats a p-value: four significant figures, scientific below 0.001.
fn fmt_p(p: f64) -> String {
    if p < 0.001 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

/// The accuracy table of the rows of one report table.
fn accuracy_table(md: &mut String, r: &Report, table: Table) {
    let mut header = String::from("| System | Accuracy |");
    let mut rule = String::from("|---|---:|");
    for s in &r.plan.seeds {
        let _ = write!(header, " seed {s} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for s in r.systems.iter().filter(|s| s.table == table) {
        let _ = write!(
            md,
            "| {} | {} |",
            s.label,
            fmt_spread(s.mean_pct, s.std_pct)
        );
        for a in &s.per_seed {
            let _ = write!(md, " {:.2} |", a.accuracy_pct);
        }
        md.push('\n');
    }
}

/// Where a combined report's rows came from.
fn sources_table(md: &mut String, r: &Report) {
    let _ = writeln!(md, "## Sources\n");
    let _ = writeln!(
        md,
        "The rows of {} reports evaluated on the same questions, seeds and attempts (`malt \
         compare`). A system found in several of them with identical answers is one row; one \
         whose answers differ is a row per report, its label suffixed with the report's name.\n",
        r.sources.len()
    );
    let _ = writeln!(
        md,
        "| Report | Systems | Same answers as an earlier report | Config sha256 | Differs from \
         the first report |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let none = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    for s in &r.sources {
        let sha = s
            .manifest
            .get("config_sha256")
            .and_then(|v| v.as_str())
            .map_or_else(
                || "n/a".to_owned(),
                |h| format!("`{}`", h.chars().take(12).collect::<String>()),
            );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {sha} | {} |",
            s.name,
            none(&s.systems),
            none(&s.same_as_earlier),
            none(&s.differs).replace('|', "/")
        );
    }
    md.push('\n');
}

/// The comparisons over distinct questions with Holm's correction (format 3).
fn comparisons_table(md: &mut String, r: &Report, reference: &str) {
    let _ = writeln!(
        md,
        "The unit is a distinct question: one drawn by several seeds counts once, its outcomes \
         pooled over them. {reference} better / the row better: questions {reference} gets right \
         in more / fewer of the seeds that drew them than the row. Δ: {reference} minus the row, \
         in percentage points, mean ± {} over seeds of the per-seed differences. p: two-sided \
         exact sign test on the questions where one of the two is better. Holm p: p adjusted \
         with Holm's step-down procedure over the {} rows compared with {reference}: calling \
         a difference wherever Holm p < α keeps the chance of any false one among them all \
         below α.\n",
        r.plan.std.describe(),
        r.comparisons.len()
    );
    let _ = writeln!(
        md,
        "| System | Questions | {reference} better | The row better | Δ | p | Holm p |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for c in &r.comparisons {
        let Some(t) = &c.test else { continue };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.label,
            t.questions,
            t.reference_wins,
            t.row_wins,
            fmt_spread(c.diff_mean_pct, c.diff_std_pct),
            fmt_p(t.p),
            fmt_p(t.holm_p)
        );
    }
}

/// The comparisons of a format-2 report: a sign test per (seed, question) pair, uncorrected.
fn legacy_comparisons_table(md: &mut String, r: &Report, reference: &str) {
    let _ = writeln!(
        md,
        "Pairs: every question of every seed, answered by both systems. Δ: {reference} \
         minus the row, in percentage points, mean ± sample std over seeds of the per-seed \
         differences. p: two-sided exact sign test (McNemar's exact test) on the pairs where \
         exactly one of the two is right.\n"
    );
    let drawn: usize = r.subsets.iter().map(|s| s.example_idx.len()).sum();
    let distinct = r
        .subsets
        .iter()
        .flat_map(|s| &s.example_idx)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let repeats = if drawn > distinct {
        format!(
            "{} of its {drawn} pairs repeat a question another seed drew yet count as \
             independent evidence, which can make p too small; ",
            drawn - distinct
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "This report predates report format 3: {repeats}p is not corrected for the {} rows \
         compared. Aggregating its results.jsonl again (`malt eval`) gives the test over \
         distinct questions with Holm's correction.\n",
        r.comparisons.len()
    );
    let _ = writeln!(
        md,
        "| System | Pairs | Only {reference} right | Only the row right | Δ | p |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for c in &r.comparisons {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            c.label,
            c.pairs,
            c.reference_only,
            c.row_only,
            fmt_spread(c.diff_mean_pct, c.diff_std_pct),
            c.sign_test_p.map(fmt_p).unwrap_or_else(|| "n/a".into())
        );
    }
}

/// A system's row label, or its id when the plan has no such system.
fn label_of(r: &Report, id: &str) -> String {
    r.plan
        .system(id)
        .map_or_else(|| id.to_owned(), |s| s.label.clone())
}

/// Renders `report.md`. Deterministic for a given report (no timestamps), so it can be
/// snapshot-tested and diffed between runs.
pub fn render_markdown(r: &Report) -> String {
    let p = &r.plan;
    let k = p.majority_k;
    let mut md = String::new();
    let seeds = p
        .seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if r.sources.is_empty() {
        let _ = writeln!(md, "# Evaluation report\n");
    } else {
        let _ = writeln!(md, "# Combined evaluation report\n");
    }
    if r.format < 3 {
        let _ = writeln!(
            md,
            "**Computed before the paper's protocol** (malt issue 28): in this report STaR is \
             rejection sampling on its own samples, the ablations predate the paper's Tables 4 \
             and 5, outputs cut at `max_new_tokens` were trained with an EOS and counted \
             whatever answer the plugin found, votes grouped trimmed answer strings, and the \
             paired tests count (seed, question) pairs without correction. `results/README.md` \
             says which tokenizer it ran on.\n"
        );
    }
    if let Some(last) = r.rounds.last() {
        let _ = writeln!(md, "Round {} (theta {}).\n", last.round, last.theta);
    }
    let _ = writeln!(
        md,
        "{} questions per seed drawn from {} held-out examples; seeds {seeds}; MV@{k} votes over \
         the same {k} attempts whose first is the plain result. Accuracy in %, mean ± {} over \
         seeds; errored attempts count as wrong. Every system samples with the same seeds \
         (common random numbers): two systems that run the same weights on a turn give the same \
         output there.\n",
        p.questions,
        p.pool_size,
        p.std.describe()
    );

    if !r.sources.is_empty() {
        sources_table(&mut md, r);
    }
    let _ = writeln!(md, "## Table 1\n");
    accuracy_table(&mut md, r, Table::Main);
    if r.systems.iter().any(|s| s.table == Table::Ablation) {
        let _ = writeln!(md, "\n## Ablations\n");
        let _ = writeln!(
            md,
            "The chain with only some agents' trained adapters; the others run on the base \
             model, and a skipped agent is not run at all (the agents after it see an empty \
             output in its place).\n"
        );
        accuracy_table(&mut md, r, Table::Ablation);
    }

    if let Some(first) = r.comparisons.first() {
        let reference = r
            .systems
            .iter()
            .find(|s| s.id == first.reference)
            .map(|s| s.label.as_str())
            .unwrap_or(first.reference.as_str());
        let _ = writeln!(md, "\n## Paired comparisons with {reference}\n");
        if r.comparisons.iter().all(|c| c.test.is_some()) {
            comparisons_table(&mut md, r, reference);
        } else {
            legacy_comparisons_table(&mut md, r, reference);
        }
    }

    if !r.not_run.is_empty() {
        let _ = writeln!(md, "\n## Not evaluated\n");
        let _ = writeln!(
            md,
            "Configured systems this round could not run as labelled (none is run on base \
             weights in their place):\n"
        );
        for n in &r.not_run {
            let _ = writeln!(md, "- {} (`{}`): {}", n.label, n.system, n.reason);
        }
    }

    if let Some(star) = &r.star {
        let _ = writeln!(md, "\n## STaR\n");
        let _ = writeln!(
            md,
            "Supervised fine-tuning of the single agent on its positive outputs: {} of {} \
             outputs kept over {} training questions ({}: {}), {} optimiser steps.",
            star.kept, star.samples, star.questions, star.data, star.source, star.steps
        );
    }

    if !r.budgets.is_empty() {
        md.push('\n');
        md.push_str(crate::budget::render(&r.budgets, |id| label_of(r, id)).trim_end());
        md.push('\n');
    }

    if !r.training.is_empty() {
        md.push('\n');
        md.push_str(crate::training::render(&r.training, |id| label_of(r, id)).trim_end());
        md.push('\n');
    }

    if r.rounds.len() > 1 {
        let _ = writeln!(md, "\n## Accuracy by round\n");
        let mut header = String::from("| System |");
        let mut rule = String::from("|---|");
        for round in &r.rounds {
            let _ = write!(header, " round {} (θ {}) |", round.round, round.theta);
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        for s in &r.systems {
            let _ = write!(md, "| {} |", s.label);
            for round in &r.rounds {
                match round.rows.iter().find(|x| x.id == s.id) {
                    Some(x) => {
                        let _ = write!(md, " {} |", fmt_spread(x.mean_pct, x.std_pct));
                    }
                    None => md.push_str(" n/a |"),
                }
            }
            md.push('\n');
        }
    }

    let _ = writeln!(md, "\n## Items\n");
    let _ = writeln!(md, "| System | Correct | Total | Errored | Unparseable |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for s in &r.systems {
        let correct: usize = s.per_seed.iter().map(|a| a.correct).sum();
        let total: usize = s.per_seed.iter().map(|a| a.total).sum();
        let _ = writeln!(
            md,
            "| {} | {correct} | {total} | {} | {} |",
            s.label, s.errored, s.unparseable
        );
    }

    let _ = writeln!(md, "\n## Accuracy after each agent turn\n");
    let _ = writeln!(
        md,
        "Turns that do not answer (e.g. a verifier) are n/a. The last answering turn equals the \
         system's accuracy. Cut: the attempts (over every seed, question and attempt) whose \
         output at that turn stopped at `max_new_tokens`; a cut output's answer counts only when \
         the plugin found it by a final-answer marker.\n"
    );
    let _ = writeln!(md, "| System | Turn | Agent | Accuracy | + MV@{k} | Cut |");
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|");
    for v in &r.per_turn {
        for t in &v.turns {
            let agent = if t.skipped {
                format!("{} (skipped)", t.agent)
            } else {
                t.agent.clone()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                v.label,
                t.turn + 1,
                agent,
                fmt_opt_spread(t.accuracy.as_ref()),
                fmt_opt_spread(t.mv_accuracy.as_ref()),
                t.truncated
                    .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
            );
        }
    }

    let _ = writeln!(
        md,
        "\n## Answer flips between consecutive answering turns\n"
    );
    let _ = writeln!(
        md,
        "Attempt 0, pooled over seeds, errored attempts excluded; unparseable counts as wrong.\n"
    );
    let _ = writeln!(
        md,
        "| System | From → to | Items | Wrong → right | Right → wrong | Right → right | Wrong → wrong |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    let mut any_flip = false;
    for v in &r.flips {
        for f in &v.transitions {
            any_flip = true;
            let _ = writeln!(
                md,
                "| {} | {} → {} | {} | {} | {} | {} | {} |",
                v.label,
                f.from_agent,
                f.to_agent,
                v.items,
                f.wrong_to_right,
                f.right_to_wrong,
                f.right_to_right,
                f.wrong_to_wrong
            );
        }
    }
    if !any_flip {
        let _ = writeln!(md, "| (no system has two answering turns) | | | | | | |");
    }

    let _ = writeln!(md, "\n## Attempts\n");
    let _ = writeln!(md, "| System | Attempts | Errored | Unparseable |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for c in &r.counts {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.label, c.attempts, c.errored_attempts, c.unparseable_attempts
        );
    }
    let errors: Vec<&String> = r.counts.iter().flat_map(|c| &c.first_errors).collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\nFirst errors:\n");
        for e in errors {
            // Error text is free-form; keep it on one line so the list stays a list.
            let _ = writeln!(md, "- `{}`", e.replace(['\n', '`'], " "));
        }
    }

    let _ = writeln!(md, "\n![Accuracy per system]({ACCURACY_SVG})\n");
    if r.systems.iter().any(|s| s.table == Table::Ablation) {
        let _ = writeln!(md, "![Ablations]({ABLATIONS_SVG})\n");
    }
    let _ = writeln!(md, "![Accuracy per agent turn]({PER_TURN_SVG})\n");
    if r.rounds.len() > 1 {
        let _ = writeln!(md, "![Accuracy by round]({ROUNDS_SVG})\n");
    }
    let _ = writeln!(
        md,
        "Every figure, the question subsets and the run manifest are in `{REPORT_JSON}`."
    );
    md
}

fn bars(r: &Report, keep: impl Fn(&SystemResult) -> bool) -> Vec<Bar> {
    r.systems
        .iter()
        .filter(|s| keep(s))
        .map(|s| Bar {
            label: s.label.clone(),
            value: s.mean_pct,
            error: s.std_pct,
        })
        .collect()
}

fn seeds_title(r: &Report) -> String {
    let seeds = r.plan.seeds.len();
    format!(
        "{seeds} seed{} × {} questions",
        if seeds == 1 { "" } else { "s" },
        r.plan.questions
    )
}

/// The accuracy bar chart of Table 1 (mean with one-std error bars).
pub fn accuracy_svg(r: &Report) -> String {
    let title = format!("Accuracy per system ({})", seeds_title(r));
    bar_chart(
        &title,
        &format!("accuracy (%), mean ± {}", r.plan.std.describe()),
        &bars(r, |s| s.table == Table::Main),
    )
}

/// The ablation rows beside the reference system's rows.
pub fn ablations_svg(r: &Report) -> String {
    let reference: Option<&str> = r.plan.reference().map(|s| s.id.as_str());
    let title = format!("Ablations ({})", seeds_title(r));
    bar_chart(
        &title,
        &format!("accuracy (%), mean ± {}", r.plan.std.describe()),
        &bars(r, |s| {
            s.table == Table::Ablation || Some(s.system.as_str()) == reference
        }),
    )
}

/// Accuracy by round, one line per row (dashed: MV@k).
pub fn rounds_svg(r: &Report) -> String {
    let series = r
        .systems
        .iter()
        .enumerate()
        .map(|(i, s)| Series {
            name: s.label.clone(),
            points: r
                .rounds
                .iter()
                .filter_map(|round| {
                    let x = round.rows.iter().find(|x| x.id == s.id)?;
                    Some((round.round as f64, x.mean_pct))
                })
                .collect(),
            dashed: s.majority_k.is_some(),
            colour: Some(i / 2),
        })
        .collect();
    line_chart(&LineChart {
        title: "Accuracy by round".into(),
        x_label: "round".into(),
        y_label: "accuracy (%), mean over seeds".into(),
        series,
        x_ticks: Some(
            r.rounds
                .iter()
                .map(|round| {
                    (
                        round.round as f64,
                        format!("{} (θ {})", round.round, round.theta),
                    )
                })
                .collect(),
        ),
        y_range: Some((0.0, 100.0)),
    })
}

/// MV@k accuracy after each turn: one line per chain system, each in its own colour, joining
/// its answering turns (a non-answering turn has no point); the one-turn systems (the single
/// agent, STaR) are dashed reference levels across every turn. Attempt-0 figures are in
/// report.md's table: two lines per system made a dozen systems unreadable.
pub fn per_turn_svg(r: &Report) -> String {
    let k = r.plan.majority_k;
    let longest = r.per_turn.iter().max_by_key(|v| v.turns.len());
    let last_turn = longest.map(|v| v.turns.len()).unwrap_or(1) as f64;
    let x_ticks = longest.map(|v| {
        v.turns
            .iter()
            .map(|t| ((t.turn + 1) as f64, format!("{} ({})", t.turn + 1, t.agent)))
            .collect()
    });
    let mv_points = |v: &SystemTurns| -> Vec<(f64, f64)> {
        v.turns
            .iter()
            .filter_map(|t| {
                t.mv_accuracy
                    .as_ref()
                    .map(|s| ((t.turn + 1) as f64, s.mean_pct))
            })
            .collect()
    };
    let (chains, singles): (Vec<_>, Vec<_>) = r.per_turn.iter().partition(|v| v.turns.len() > 1);
    let mut series = Vec::new();
    for v in &chains {
        series.push(Series {
            name: v.label.clone(),
            points: mv_points(v),
            dashed: false,
            colour: Some(series.len()),
        });
    }
    for v in &singles {
        let Some(&(_, level)) = mv_points(v).first() else {
            continue;
        };
        series.push(Series {
            name: format!("{} (one turn, reference)", v.label),
            points: vec![(1.0, level), (last_turn.max(1.0), level)],
            dashed: true,
            colour: Some(series.len()),
        });
    }
    line_chart(&LineChart {
        title: format!("Accuracy + MV@{k} after each agent turn"),
        x_label: "agent turn".into(),
        y_label: format!("accuracy + MV@{k} (%), mean over seeds"),
        series,
        x_ticks,
        y_range: Some((0.0, 100.0)),
    })
}

/// Writes `report.md`, `report.json`, `accuracy.svg`, `per_turn.svg` and, when the report has
/// them, `ablations.svg` and `rounds.svg` into `dir`, each atomically so that a reader never
/// sees half a report.
pub fn write_reports(dir: &Path, r: &Report) -> Result<(), EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        malt_base::atomic::write_atomic(&path, bytes).map_err(|e| EvalError::io(&path, e))
    };
    let mut json = serde_json::to_vec_pretty(r)?;
    json.push(b'\n');
    write(REPORT_JSON, &json)?;
    write(REPORT_MD, render_markdown(r).as_bytes())?;
    write(ACCURACY_SVG, accuracy_svg(r).as_bytes())?;
    write(PER_TURN_SVG, per_turn_svg(r).as_bytes())?;
    if r.systems.iter().any(|s| s.table == Table::Ablation) {
        write(ABLATIONS_SVG, ablations_svg(r).as_bytes())?;
    }
    if r.rounds.len() > 1 {
        write(ROUNDS_SVG, rounds_svg(r).as_bytes())?;
    }
    if !r.training.is_empty() {
        let svg = crate::training::svg(&r.training, |id| label_of(r, id));
        write(crate::training::TRAINING_SVG, svg.as_bytes())?;
    }
    Ok(())
}
