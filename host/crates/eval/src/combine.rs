//! One report from several: systems evaluated by different runs on the same questions, set
//! side by side with their comparisons recomputed.
//!
//! Why this is sound: an evaluation draws its question subsets from the plan alone (pool size,
//! questions, seeds) and samples every attempt with seeds derived from (seed, question,
//! attempt), so two runs that evaluate on the same plan answer the same questions under common
//! random numbers, whichever run trained the system. Their per-attempt answers (format 3 keeps
//! them) are all the rows and the paired tests need, so [`combine`] merges the answers and lets
//! [`rerender`] compute the rest. What the answers cannot show is whether both pools hold the
//! same questions: the caller checks the datasets ([`Source`] only carries the reports).
//!
//! A system id found in several reports is one row when its answers are identical in all of
//! them (the untrained single agent of every run), and one row per report otherwise, its id
//! and label suffixed with the report's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::rerender;
use crate::error::EvalError;
use crate::figures::{Report, SystemAnswers, SystemCounts, SystemFlips, SystemTurns};
use crate::plan::System;

/// One report to combine, under the name its rows are told apart by.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub report: Report,
}

/// Where the rows of a combined report came from, as `report.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSource {
    pub name: String,
    /// The row ids (in the combined report) of the systems it contributed.
    pub systems: Vec<String>,
    /// Its systems left out because another source's identical answers already give the row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub same_as_earlier: Vec<String>,
    /// Provenance that differs from the first source's (`model_sha256`, a plugin's hash...),
    /// in words; a reader decides whether it matters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differs: Vec<String>,
    /// Its report's manifest, verbatim.
    pub manifest: serde_json::Value,
}

/// The combined report of `sources`, compared with the system `reference` (a combined id, or an
/// original id found once); without one, with the only system a source marked as its
/// reference, if exactly one is.
pub fn combine(sources: &[Source], reference: Option<&str>) -> Result<Report, EvalError> {
    let bad = |m: String| Err(EvalError::Combine(m));
    let [first, ..] = sources else {
        return bad("nothing to combine".into());
    };
    if sources.len() < 2 {
        return bad("combining needs at least two reports".into());
    }
    for (i, s) in sources.iter().enumerate() {
        if sources[..i].iter().any(|o| o.name == s.name) {
            return bad(format!(
                "two reports are named `{}`: name them apart (NAME=PATH)",
                s.name
            ));
        }
        if s.report.answers.is_empty() {
            return bad(format!(
                "`{}` is a report of format {} without per-attempt answers: evaluate its run \
                 again (`malt eval`) to write them",
                s.name, s.report.format
            ));
        }
        same_plan(first, s)?;
    }

    // Which ids need a suffix: those whose answers differ between the reports holding them.
    let mut by_id: BTreeMap<&str, Vec<&SystemAnswers>> = BTreeMap::new();
    for s in sources {
        for a in &s.report.answers {
            by_id.entry(a.system.as_str()).or_default().push(a);
        }
    }
    let ambiguous = |id: &str| {
        by_id
            .get(id)
            .is_some_and(|all| all.iter().any(|a| a.per_seed != all[0].per_seed))
    };

    let mut out = first.report.clone();
    out.plan.systems.clear();
    out.answers.clear();
    out.per_turn.clear();
    out.flips.clear();
    out.counts.clear();
    out.budgets.clear();
    out.training.clear();
    out.not_run.clear();
    out.rounds.clear();
    out.comparisons.clear();
    out.star = None;
    out.sources.clear();
    out.manifest = serde_json::Value::Null;
    let mut marked = Vec::new();
    for s in sources {
        let r = &s.report;
        let mut entry = ReportSource {
            name: s.name.clone(),
            systems: Vec::new(),
            same_as_earlier: Vec::new(),
            differs: differences(&first.report.manifest, &r.manifest),
            manifest: r.manifest.clone(),
        };
        for system in &r.plan.systems {
            let answers = r
                .answers
                .iter()
                .find(|a| a.system == system.id)
                .ok_or_else(|| {
                    EvalError::Combine(format!(
                        "`{}` has no answers of its system `{}`",
                        s.name, system.id
                    ))
                })?;
            let (id, label) = if ambiguous(&system.id) {
                (
                    format!("{}/{}", s.name, system.id),
                    format!("{} ({})", system.label, s.name),
                )
            } else if out.plan.system(&system.id).is_some() {
                entry.same_as_earlier.push(system.id.clone());
                continue;
            } else {
                (system.id.clone(), system.label.clone())
            };
            if system.reference {
                marked.push(id.clone());
            }
            out.plan.systems.push(System {
                id: id.clone(),
                label: label.clone(),
                table: system.table,
                reference: false,
            });
            out.answers.push(SystemAnswers {
                system: id.clone(),
                per_seed: answers.per_seed.clone(),
            });
            let of = &system.id;
            push_renamed(&r.per_turn, of, &id, &label, &mut out.per_turn);
            push_renamed(&r.flips, of, &id, &label, &mut out.flips);
            push_renamed(&r.counts, of, &id, &label, &mut out.counts);
            for b in r.budgets.iter().filter(|b| &b.system == of) {
                out.budgets.push(crate::budget::SystemBudget {
                    system: id.clone(),
                    ..b.clone()
                });
            }
            for c in r.training.iter().filter(|c| &c.system == of) {
                out.training.push(crate::training::TrainingCurve {
                    system: id.clone(),
                    ..c.clone()
                });
            }
            if out.star.is_none() && system.id == "star" {
                out.star = r.star.clone();
            }
            entry.systems.push(id);
        }
        for n in &r.not_run {
            out.not_run.push(crate::plan::NotRun {
                system: format!("{}/{}", s.name, n.system),
                label: format!("{} ({})", n.label, s.name),
                ..n.clone()
            });
        }
        out.sources.push(entry);
    }

    let reference = match reference {
        Some(want) => Some(find_reference(&out, want)?),
        None if marked.len() == 1 => marked.pop(),
        None if marked.is_empty() => None,
        None => {
            return bad(format!(
                "several systems are their report's reference ({}): pick one with --reference",
                marked.join(", ")
            ))
        }
    };
    for s in &mut out.plan.systems {
        s.reference = reference.as_deref() == Some(s.id.as_str());
    }
    rerender(&out)
}

/// Refuses a report whose plan draws other questions or votes otherwise than the first's.
fn same_plan(first: &Source, other: &Source) -> Result<(), EvalError> {
    let (a, b) = (&first.report.plan, &other.report.plan);
    let differ = |what: &str, x: String, y: String| {
        Err(EvalError::Combine(format!(
            "`{}` and `{}` were not evaluated alike: {what} {x} against {y}; only reports of \
             the same [eval] questions, seeds and majority_k on the same held-out pool compare",
            first.name, other.name
        )))
    };
    if a.pool_size != b.pool_size {
        return differ(
            "held-out pool of",
            a.pool_size.to_string(),
            b.pool_size.to_string(),
        );
    }
    if a.questions != b.questions {
        return differ(
            "questions per seed",
            a.questions.to_string(),
            b.questions.to_string(),
        );
    }
    if a.seeds != b.seeds {
        return differ("seeds", format!("{:?}", a.seeds), format!("{:?}", b.seeds));
    }
    if a.majority_k != b.majority_k {
        return differ(
            "majority_k",
            a.majority_k.to_string(),
            b.majority_k.to_string(),
        );
    }
    if a.std != b.std {
        return differ(
            "std convention",
            a.std.describe().to_owned(),
            b.std.describe().to_owned(),
        );
    }
    if first.report.subsets != other.report.subsets {
        return differ(
            "question subsets",
            "(first report's)".into(),
            "(another draw)".into(),
        );
    }
    Ok(())
}

/// The combined id of `want`: itself, or the one suffixed id of an original id.
fn find_reference(out: &Report, want: &str) -> Result<String, EvalError> {
    if out.plan.system(want).is_some() {
        return Ok(want.to_owned());
    }
    let suffixed: Vec<&str> = out
        .plan
        .systems
        .iter()
        .map(|s| s.id.as_str())
        .filter(|id| id.rsplit_once('/').is_some_and(|(_, orig)| orig == want))
        .collect();
    match suffixed.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => {
            let ids: Vec<&str> = out.plan.systems.iter().map(|s| s.id.as_str()).collect();
            Err(EvalError::Combine(format!(
                "--reference {want}: {}; the combined systems are {}",
                if suffixed.is_empty() {
                    "no such system"
                } else {
                    "several reports have it"
                },
                ids.join(", ")
            )))
        }
    }
}

/// What in `other`'s manifest differs from `first`'s, among what decides the answers beyond
/// the trained weights: the base model and the plugins.
fn differences(first: &serde_json::Value, other: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["model", "model_sha256"] {
        if first.get(key) != other.get(key) {
            out.push(format!(
                "{key} {}",
                other.get(key).unwrap_or(&serde_json::Value::Null)
            ));
        }
    }
    let hashes = |m: &serde_json::Value| {
        m.get("plugin_hashes")
            .and_then(|h| h.as_object())
            .cloned()
            .unwrap_or_default()
    };
    let (a, b) = (hashes(first), hashes(other));
    for (plugin, hash) in &b {
        if a.get(plugin) != Some(hash) {
            out.push(format!("plugin {plugin} {hash}"));
        }
    }
    out
}

/// Renames the rows of system `id` (its plain and MV@k rows, per-turn, flips and counts), e.g.
/// a one-agent online run labelled before malt told it apart from online MALT.
pub fn relabel(report: &mut Report, id: &str, label: &str) -> Result<(), EvalError> {
    let Some(system) = report.plan.systems.iter_mut().find(|s| s.id == id) else {
        let ids: Vec<&str> = report.plan.systems.iter().map(|s| s.id.as_str()).collect();
        return Err(EvalError::Combine(format!(
            "--label {id}=...: no such system; the combined systems are {}",
            ids.join(", ")
        )));
    };
    system.label = label.to_owned();
    relabel_rows(&mut report.per_turn, id, label);
    relabel_rows(&mut report.flips, id, label);
    relabel_rows(&mut report.counts, id, label);
    *report = rerender(report)?;
    Ok(())
}

/// The per-system tables besides the rows (per-turn accuracy, flips, counts): each names its
/// system by id and label.
trait SystemTable: Clone {
    fn names(&mut self) -> (&mut String, &mut String);
}

macro_rules! system_table {
    ($($t:ty),*) => {$(
        impl SystemTable for $t {
            fn names(&mut self) -> (&mut String, &mut String) {
                (&mut self.system, &mut self.label)
            }
        }
    )*};
}
system_table!(SystemTurns, SystemFlips, SystemCounts);

/// Appends `from`'s entries of system `of` to `out`, as system `id` labelled `label`.
fn push_renamed<T: SystemTable>(from: &[T], of: &str, id: &str, label: &str, out: &mut Vec<T>) {
    for v in from {
        let mut v = v.clone();
        let (system, l) = v.names();
        if system == of {
            (*system, *l) = (id.to_owned(), label.to_owned());
            out.push(v);
        }
    }
}

fn relabel_rows<T: SystemTable>(rows: &mut [T], id: &str, label: &str) {
    for v in rows {
        let (system, l) = v.names();
        if system == id {
            *l = label.to_owned();
        }
    }
}
