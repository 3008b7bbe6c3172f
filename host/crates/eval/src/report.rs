//! Writing the figures: `report.md`, `report.json`, `accuracy.svg`, `per_turn.svg`.

use std::fmt::Write as _;
use std::path::Path;

use crate::aggregate::{system_label, Report, Spread};
use crate::error::EvalError;
use crate::svg::{bar_chart, line_chart, Bar, LineChart, Series};

pub const REPORT_MD: &str = "report.md";
pub const REPORT_JSON: &str = "report.json";
pub const ACCURACY_SVG: &str = "accuracy.svg";
pub const PER_TURN_SVG: &str = "per_turn.svg";

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
    let _ = writeln!(md, "# Evaluation report\n");
    let _ = writeln!(
        md,
        "{} questions per seed drawn from {} held-out examples; seeds {seeds}; MV@{k} votes over \
         the same {k} attempts whose first is the plain result. Accuracy in %, mean ± sample std \
         (n-1) over seeds; errored attempts count as wrong.\n",
        p.questions, p.pool_size
    );

    let _ = writeln!(md, "## Accuracy\n");
    let mut header = String::from("| System | Accuracy |");
    let mut rule = String::from("|---|---:|");
    for s in &p.seeds {
        let _ = write!(header, " seed {s} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for s in &r.systems {
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
         system's accuracy.\n"
    );
    let _ = writeln!(md, "| System | Turn | Agent | Accuracy | + MV@{k} |");
    let _ = writeln!(md, "|---|---:|---|---:|---:|");
    for v in &r.per_turn {
        for t in &v.turns {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                v.variant.label(),
                t.turn + 1,
                t.agent,
                fmt_opt_spread(t.accuracy.as_ref()),
                fmt_opt_spread(t.mv_accuracy.as_ref()),
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
                v.variant.label(),
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
            c.variant.label(),
            c.attempts,
            c.errored_attempts,
            c.unparseable_attempts
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

    let _ = writeln!(
        md,
        "\n![Accuracy per system]({ACCURACY_SVG})\n\n![Accuracy per agent turn]({PER_TURN_SVG})\n\n\
         Every figure, the question subsets and the run manifest are in `{REPORT_JSON}`."
    );
    md
}

/// The accuracy bar chart (mean with one-std error bars).
pub fn accuracy_svg(r: &Report) -> String {
    let bars: Vec<Bar> = r
        .systems
        .iter()
        .map(|s| Bar {
            label: system_label(s.variant, s.majority_k),
            value: s.mean_pct,
            error: s.std_pct,
        })
        .collect();
    let seeds = r.plan.seeds.len();
    let title = format!(
        "Accuracy per system ({seeds} seed{} × {} questions)",
        if seeds == 1 { "" } else { "s" },
        r.plan.questions
    );
    bar_chart(&title, "accuracy (%), mean ± std", &bars)
}

/// Accuracy after each turn, one solid (attempt 0) and one dashed (MV@k) line per variant;
/// non-answering turns have no point, so the line joins the answering turns across them. A
/// one-turn variant (the single agent) is drawn as a level line across every turn: the
/// reference the chains are read against (a lone point hid under the chains' first turn).
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
    let mut series = Vec::new();
    for (vi, v) in r.per_turn.iter().enumerate() {
        for voted in [false, true] {
            let mut points: Vec<(f64, f64)> = v
                .turns
                .iter()
                .filter_map(|t| {
                    let s = if voted { &t.mv_accuracy } else { &t.accuracy };
                    s.as_ref().map(|s| ((t.turn + 1) as f64, s.mean_pct))
                })
                .collect();
            let level = v.turns.len() == 1 && last_turn > 1.0 && points.len() == 1;
            if level {
                points.push((last_turn, points[0].1));
            }
            let name = if voted {
                format!("{} + MV@{k}", v.variant.label())
            } else {
                v.variant.label().to_string()
            };
            series.push(Series {
                name: if level {
                    format!("{name} (reference)")
                } else {
                    name
                },
                points,
                dashed: voted,
                colour: Some(vi),
            });
        }
    }
    line_chart(&LineChart {
        title: "Accuracy after each agent turn".into(),
        x_label: "agent turn".into(),
        y_label: "accuracy (%), mean over seeds".into(),
        series,
        x_ticks,
        y_range: Some((0.0, 100.0)),
    })
}

fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), EvalError> {
    // Write-then-rename so a reader never sees half a report.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| EvalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
}

/// Writes `report.md`, `report.json`, `accuracy.svg` and `per_turn.svg` into `dir`.
pub fn write_reports(dir: &Path, r: &Report) -> Result<(), EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut json = serde_json::to_vec_pretty(r)?;
    json.push(b'\n');
    write_atomic(&dir.join(REPORT_JSON), &json)?;
    write_atomic(&dir.join(REPORT_MD), render_markdown(r).as_bytes())?;
    write_atomic(&dir.join(ACCURACY_SVG), accuracy_svg(r).as_bytes())?;
    write_atomic(&dir.join(PER_TURN_SVG), per_turn_svg(r).as_bytes())?;
    Ok(())
}
