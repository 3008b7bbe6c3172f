//! `metrics.jsonl` (one JSON object per optimiser step and per eval), its TensorBoard mirror
//! (an event file beside it: every numeric field as the scalar `train/<field>` or
//! `eval/<field>`) and the loss-curve SVG.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One training-step record (`"kind":"train"`). DPO fields are absent for SFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub kind: String,
    /// Completed optimiser steps (1-based).
    pub step: u64,
    /// Fractional epoch (`step / steps_per_epoch`).
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    /// Pre-clip global gradient norm.
    pub grad_norm: f64,
    /// Non-pad tokens processed in this step.
    pub tokens: u64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_margin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chosen_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rejected_reward: Option<f64>,
}

/// One eval record (`"kind":"eval"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub kind: String,
    pub step: u64,
    pub epoch: f64,
    /// SFT: mean token NLL; DPO: mean pair loss.
    pub eval_loss: f64,
    pub examples: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_margin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chosen_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rejected_reward: Option<f64>,
}

pub struct MetricsLog {
    path: PathBuf,
    /// The TensorBoard mirror; dropped (with a warning) if it cannot be written, since the
    /// JSONL log is what resuming and the reports read.
    events: Option<malt_base::tfevents::EventFile>,
}

impl MetricsLog {
    /// Fresh run: truncate. Resume from `keep_up_to`: drop records of later steps (they will be
    /// recomputed), so the file reads as one uninterrupted run.
    pub fn open(path: &Path, keep_up_to: Option<u64>) -> Result<Self> {
        let kept = match (keep_up_to, std::fs::read_to_string(path)) {
            (Some(k), Ok(text)) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= k)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            _ => String::new(),
        };
        std::fs::write(path, &kept).map_err(|e| TrainError::io(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut log = MetricsLog {
            path: path.to_path_buf(),
            events: match malt_base::tfevents::EventFile::create(dir) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("{}: no TensorBoard event file: {e}", dir.display());
                    None
                }
            },
        };
        // A resumed phase's event file is rewritten from the records kept above.
        for line in kept.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                log.mirror(&v);
            }
        }
        Ok(log)
    }

    pub fn append<T: Serialize>(&mut self, rec: &T) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        let value = serde_json::to_value(rec)?;
        writeln!(f, "{value}").map_err(|e| TrainError::io(&self.path, e))?;
        self.mirror(&value);
        Ok(())
    }

    fn mirror(&mut self, record: &serde_json::Value) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let Some((step, values)) = scalars_of(record) else {
            return;
        };
        let written = values
            .iter()
            .try_for_each(|(tag, v)| events.scalar(tag, step, *v))
            .and_then(|()| events.flush());
        if let Err(e) = written {
            tracing::warn!("{}: TensorBoard events stop: {e}", events.path().display());
            self.events = None;
        }
    }
}

/// Reads back `(train, eval)` records.
pub fn read_metrics(path: &Path) -> Result<(Vec<StepMetrics>, Vec<EvalMetrics>)> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let (mut tr, mut ev) = (vec![], vec![]);
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l)?;
        if v.get("kind").and_then(|k| k.as_str()) == Some("eval") {
            ev.push(serde_json::from_value(v)?);
        } else {
            tr.push(serde_json::from_value(v)?);
        }
    }
    Ok((tr, ev))
}

/// The loss curve of a phase: train loss per step and, where the phase has a held-out set, eval
/// loss at its evaluation steps (malt-base's line chart, as the evaluation report's plots).
pub fn loss_svg(title: &str, train: &[(f64, f64)], eval: &[(f64, f64)]) -> String {
    use malt_base::svg::{line_chart, LineChart, Series};
    let series = |name: &str, points: &[(f64, f64)], dashed: bool| Series {
        name: name.into(),
        points: points.to_vec(),
        dashed,
        colour: None,
    };
    let mut chart = LineChart {
        title: title.into(),
        x_label: "optimizer step".into(),
        y_label: "loss".into(),
        series: vec![series("train loss", train, false)],
        x_ticks: None,
        y_range: None,
    };
    if !eval.is_empty() {
        chart.series.push(series("eval loss", eval, true));
    }
    line_chart(&chart)
}

/// Every numeric field of a JSONL metrics record as `(kind/field, value)`, with its `step`.
pub fn scalars_of(record: &serde_json::Value) -> Option<(i64, Vec<(String, f64)>)> {
    let obj = record.as_object()?;
    let step = obj.get("step")?.as_i64()?;
    let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or("train");
    let values = obj
        .iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| Some((format!("{kind}/{k}"), v.as_f64()?)))
        .collect();
    Some((step, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields_become_scalars() {
        let rec = serde_json::json!({"kind": "eval", "step": 4, "eval_loss": 1.5, "examples": 3});
        let (step, mut v) = scalars_of(&rec).unwrap();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(step, 4);
        assert_eq!(
            v,
            vec![
                ("eval/eval_loss".to_string(), 1.5),
                ("eval/examples".to_string(), 3.0)
            ]
        );
    }
}
