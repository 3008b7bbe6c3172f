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
    events: Option<crate::tfevents::EventFile>,
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
            events: match crate::tfevents::EventFile::create(dir) {
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
        let Some((step, values)) = crate::tfevents::scalars_of(record) else {
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

/// A dependency-free SVG line chart: train loss per step (blue), eval loss (orange dots).
pub fn loss_svg(title: &str, train: &[(f64, f64)], eval: &[(f64, f64)]) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 400.0, 60.0, 20.0, 30.0, 40.0);
    let all = train
        .iter()
        .chain(eval)
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\">{}</text>\n\
         <line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>\n",
        w / 2.0,
        esc(title),
        h - mb,
        w - mr,
        h - mb,
        h - mb
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.3}</text>\n<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>\n",
            ml - 4.0,
            py(y) + 4.0,
            px(x),
            h - mb + 16.0
        );
    }
    let pts: Vec<String> = train
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    if !pts.is_empty() {
        s += &format!(
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            pts.join(" ")
        );
    }
    for &(x, y) in eval.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#ff7f0e\"/>\n",
            px(x),
            py(y)
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#1f77b4\">train loss</text><text x=\"{}\" y=\"{}\" fill=\"#ff7f0e\">eval loss</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n</svg>\n",
        w - 200.0,
        mt + 10.0,
        w - 110.0,
        mt + 10.0,
        (ml + w - mr) / 2.0,
        h - 6.0
    );
    s
}
