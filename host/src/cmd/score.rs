//! `malt score --plugin P --data RAW --completions C.jsonl [--options k=v ...]`: grade
//! completions of any model. RAW is read as `[dataset] path` is (malt-records: JSONL, a JSON
//! array or parquet); each line of C is `{"index": i, "completion": "..."}` with `i` a 0-based
//! record number of RAW. Prints one JSON line per completion
//! `{"index": i, "answer": <extracted or null>, "reward": <float>}`, plus the answer's voting
//! `"key"` and `"found_by"` (`"marker"`, `"fallback"`, or `"unknown"` from an API 0.1.0 plugin)
//! when there is an answer, `"error"` when the item errored, and a summary on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use malt_plugins::{AnswerSource, ExtractRequest, GradeRequest, Runtime, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Plugin: a name under plugins/, a guest crate directory or a .wasm component.
    #[arg(long)]
    plugin: String,
    /// Raw dataset records, parsed by the plugin: JSONL, a JSON array or parquet (read as
    /// `[dataset] path` is). A completion's index counts its records from 0: non-blank lines of
    /// JSONL, elements of an array, rows of parquet.
    #[arg(long)]
    data: PathBuf,
    /// Completions, JSONL only: one {"index": i, "completion": "..."} per line.
    #[arg(long)]
    completions: PathBuf,
    /// Plugin options, `key=value` (repeatable).
    #[arg(long = "options", value_name = "KEY=VALUE", num_args = 1..)]
    options: Vec<String>,
    /// Items per plugin call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// Parse `k=v` options.
#[derive(serde::Serialize)]
struct Scored {
    index: usize,
    answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    found_by: Option<AnswerSource>,
    reward: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Completion {
    index: usize,
    completion: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = malt_plugins::parse_cli_options(&args.options).map_err(anyhow::Error::msg)?;
    let runtime = Runtime::shared()?;
    let plugin = malt_plugins::load_named(&runtime, &args.plugin, &options, &Sandbox::default())
        .with_context(|| format!("loading plugin {}", args.plugin))?;
    let records = malt_records::read_records(&args.data)?;
    let comp_text = std::fs::read_to_string(&args.completions)
        .with_context(|| format!("reading {}", args.completions.display()))?;
    let mut completions = Vec::new();
    for (n, line) in comp_text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c: Completion = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: bad completion line",
                args.completions.display(),
                n + 1
            )
        })?;
        if c.index >= records.len() {
            bail!(
                "{}:{}: index {} is out of range ({} has {} records)",
                args.completions.display(),
                n + 1,
                c.index,
                args.data.display(),
                records.len()
            );
        }
        completions.push(c);
    }
    // Parse only the records that are referenced.
    let mut wanted: Vec<usize> = completions.iter().map(|c| c.index).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let lines: Vec<String> = wanted.iter().map(|&i| records[i].text.clone()).collect();
    let mut examples = BTreeMap::new();
    for chunk in wanted
        .chunks(args.batch.max(1))
        .zip(lines.chunks(args.batch.max(1)))
    {
        for (&i, r) in chunk.0.iter().zip(plugin.parse_records(chunk.1)) {
            examples.insert(i, r);
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut count, mut sum, mut unparseable, mut errors) = (0usize, 0f64, 0usize, 0usize);
    for chunk in completions.chunks(args.batch.max(1)) {
        let ex_reqs: Vec<ExtractRequest> = chunk
            .iter()
            .map(|c| ExtractRequest {
                output: c.completion.clone(),
                choices: examples
                    .get(&c.index)
                    .and_then(|r| r.as_ref().ok())
                    .map(|e| e.choices.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let answers = plugin.extract(&ex_reqs);
        let mut grade_reqs = Vec::new();
        let mut grade_of = vec![None; chunk.len()];
        for (k, (c, a)) in chunk.iter().zip(&answers).enumerate() {
            if let (Some(Ok(e)), Ok(ans)) = (examples.get(&c.index), a) {
                grade_of[k] = Some(grade_reqs.len());
                grade_reqs.push(GradeRequest {
                    answer: ans.as_ref().map(|a| a.answer.clone()),
                    gold: e.gold.clone(),
                });
            }
        }
        let grades = plugin.grade(&grade_reqs);
        for (k, c) in chunk.iter().enumerate() {
            count += 1;
            let mut line = Scored {
                index: c.index,
                answer: None,
                key: None,
                found_by: None,
                reward: 0.0,
                error: None,
            };
            let err = match (examples.get(&c.index), &answers[k]) {
                (Some(Err(e)), _) => {
                    Some(format!("{}: {e}", records[c.index].at.locate(&args.data)))
                }
                (_, Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Ok(Some(a)) = &answers[k] {
                line.answer = Some(a.answer.clone());
                line.key = Some(a.vote_key().to_owned());
                line.found_by = Some(a.found_by);
            }
            let err = err.or_else(|| match grade_of[k].map(|g| &grades[g]) {
                Some(Ok(g)) => {
                    sum += g.reward;
                    line.reward = g.reward;
                    None
                }
                Some(Err(e)) => Some(e.to_string()),
                None => Some("not graded".into()),
            });
            match err {
                Some(e) => {
                    errors += 1;
                    line.error = Some(e);
                }
                None if line.answer.is_none() => unparseable += 1,
                None => {}
            }
            let line = serde_json::to_string(&line)?;
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    let mean = if count > 0 { sum / count as f64 } else { 0.0 };
    eprintln!("scored {count} completions with {} {}: mean reward {mean:.4}, unparseable {unparseable}, errors {errors}", plugin.name(), plugin.version());
    Ok(())
}
