//! `malt compare [NAME=]REPORT... --out DIR [--reference SYSTEM]`: one report from the reports
//! of several runs evaluated on the same questions (offline MALT, online MALT, single-agent
//! online training...), with every row's paired comparison against one reference and every
//! system's training budget side by side. No model is loaded: the reports' per-attempt answers
//! are all it reads (malt_eval::combine).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use malt_eval::{Report, Source};

#[derive(clap::Args)]
pub struct Args {
    /// The reports: `report.json` files or the folders holding one (a results folder, a run's
    /// `eval/` folder), each optionally as NAME=PATH. The name tells apart the rows of a system
    /// that several reports evaluated differently (default: the folder's name, or the run's for
    /// an `eval/` folder).
    #[arg(required = true, num_args = 2.., value_name = "[NAME=]REPORT")]
    reports: Vec<String>,
    /// Folder for the combined report.md, report.json and plots (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The system every other row is compared with: its id in the combined report (`malt
    /// compare` prints them), or an id that only one report holds (default: the only system
    /// that its report compared the others with, if exactly one is).
    #[arg(long, value_name = "SYSTEM")]
    reference: Option<String>,
    /// A row label of your own: `--label on1/online="Single-agent online (40 steps)"`
    /// (repeatable; the id as in the combined report).
    #[arg(long, value_name = "SYSTEM=LABEL")]
    label: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut sources = Vec::new();
    let mut datasets = Vec::new();
    for spec in &args.reports {
        let (name, path) = parse_spec(spec)?;
        let report = load(&path)?;
        datasets.push((name.clone(), path, dataset_of(&report)));
        sources.push(Source { name, report });
    }
    same_questions(&datasets)?;
    let target = args.out.join(malt_eval::report::REPORT_JSON);
    if let Some((name, path, _)) = datasets
        .iter()
        .find(|(_, path, _)| same_file(path, &target))
    {
        bail!(
            "--out {}: it holds the report `{name}` ({}), which the combined report would \
             overwrite: write it to another folder",
            args.out.display(),
            path.display()
        );
    }
    let mut report = malt_eval::combine(&sources, args.reference.as_deref())
        .context("cannot combine the reports")?;
    for spec in &args.label {
        let Some((id, label)) = spec.split_once('=') else {
            bail!("--label {spec}: expected SYSTEM=LABEL");
        };
        malt_eval::relabel(&mut report, id, label)?;
    }
    malt_eval::write_reports(&args.out, &report)
        .with_context(|| format!("writing the combined report to {}", args.out.display()))?;
    print!("{}", malt_eval::render_markdown(&report));
    tracing::info!(
        "combined report of {} systems from {} reports in {}",
        report.plan.systems.len(),
        sources.len(),
        args.out.display()
    );
    Ok(())
}

/// `NAME=PATH` or `PATH`, the file `report.json` itself or the folder holding it.
fn parse_spec(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let (name, path) = match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains(['/', '\\']) => {
            (Some(name.to_owned()), PathBuf::from(path))
        }
        _ => (None, PathBuf::from(spec)),
    };
    let file = if path.is_dir() {
        path.join(malt_eval::report::REPORT_JSON)
    } else {
        path.clone()
    };
    if !file.is_file() {
        bail!(
            "{}: no such report: give a report.json or a folder holding one (a results folder, \
             a run's eval/ folder after `malt eval`)",
            file.display()
        );
    }
    let name = match name {
        Some(n) => n,
        None => default_name(&file).with_context(|| {
            format!(
                "{}: cannot name this report from its path: write NAME={spec}",
                file.display()
            )
        })?,
    };
    Ok((name, file))
}

/// The report's folder name, or its run's for a run's `eval/` folder.
fn default_name(file: &Path) -> Option<String> {
    let folder = file.parent()?.canonicalize().ok()?;
    let named = if folder.file_name()? == "eval" {
        folder.parent()?
    } else {
        &folder
    };
    Some(named.file_name()?.to_string_lossy().into_owned())
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn load(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: not a malt report.json (written by `malt eval` or `malt compare`)",
            path.display()
        )
    })
}

/// The run config's `[dataset]` table (from the manifest's copy of the config), with the
/// dataset plugin's options: together they decide the held-out pool.
fn dataset_of(report: &Report) -> Option<toml::Value> {
    let text = report.manifest.get("config_text")?.as_str()?;
    let config: toml::Table = text.parse().ok()?;
    let dataset = config.get("dataset")?.clone();
    let plugin = dataset.get("plugin").and_then(|p| p.as_str());
    let options = plugin
        .and_then(|p| config.get("plugins")?.get(p)?.get("options"))
        .cloned();
    let mut both = toml::Table::new();
    both.insert("dataset".into(), dataset);
    if let Some(o) = options {
        both.insert("options".into(), o);
    }
    Some(toml::Value::Table(both))
}

/// Refuses reports whose configs draw their held-out questions from different datasets: equal
/// subsets of different pools would be compared as if they were the same questions.
fn same_questions(datasets: &[(String, PathBuf, Option<toml::Value>)]) -> anyhow::Result<()> {
    let Some((first_name, first_path, first)) = datasets.first() else {
        return Ok(());
    };
    for (name, path, dataset) in datasets {
        match (first, dataset) {
            (Some(a), Some(b)) if a != b => bail!(
                "{} ({name}) and {} ({first_name}) evaluate on different datasets: their \
                 configs' [dataset] tables or the dataset plugin's options differ, so the same \
                 question indices are other questions ({name}: {}; {first_name}: {})",
                path.display(),
                first_path.display(),
                one_line(b),
                one_line(a)
            ),
            (Some(_), Some(_)) => {}
            _ => tracing::warn!(
                "{} ({name}): its manifest has no config to check the dataset against; \
                 comparing on the plan's question subsets alone",
                path.display()
            ),
        }
    }
    Ok(())
}

fn one_line(v: &toml::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_spec_or_the_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("my-run").join("eval");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::write(run.join("report.json"), "{}").expect("write");
        let (name, file) = parse_spec(run.to_str().expect("utf-8")).expect("spec");
        assert_eq!(name, "my-run");
        assert_eq!(file, run.join("report.json"));
        let spec = format!("online={}", run.join("report.json").display());
        assert_eq!(parse_spec(&spec).expect("spec").0, "online");
        let err = parse_spec("nowhere/report.json").expect_err("missing");
        assert!(
            format!("{err:#}").contains("nowhere/report.json"),
            "{err:#}"
        );
    }

    #[test]
    fn different_datasets_are_refused() {
        let report = |options: &str| {
            let text = format!(
                "[dataset]\nplugin = \"arith\"\ngenerate = {{ seed = 7, count = 600 }}\n\
                 [plugins.arith]\noptions = {options}\n"
            );
            Some(dataset_of_text(&text))
        };
        let a = report("{ difficulty = \"0\" }");
        let b = report("{ difficulty = \"1\" }");
        let ok = [
            ("a".to_owned(), PathBuf::from("a.json"), a.clone()),
            ("b".to_owned(), PathBuf::from("b.json"), a.clone()),
        ];
        same_questions(&ok).expect("same dataset");
        let bad = [
            ("a".to_owned(), PathBuf::from("a.json"), a),
            ("b".to_owned(), PathBuf::from("b.json"), b),
        ];
        let err = same_questions(&bad).expect_err("other options").to_string();
        assert!(
            err.contains("b.json (b)") && err.contains("difficulty"),
            "{err}"
        );
    }

    fn dataset_of_text(text: &str) -> toml::Value {
        let mut report: Report = serde_json::from_value(serde_json::json!({
            "format": 3,
            "plan": { "pool_size": 1, "questions": 1, "seeds": [0], "majority_k": 1,
                      "systems": [] },
            "subsets": [], "systems": [], "per_turn": [], "flips": [], "counts": [],
            "manifest": null
        }))
        .expect("minimal report");
        report.manifest = serde_json::json!({ "config_text": text });
        dataset_of(&report).expect("a dataset")
    }
}
