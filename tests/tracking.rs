//! TensorBoard's own reader (the `tensorboard` package's EventAccumulator) parses malt's event
//! files: a training phase's metrics (with a resume that drops and recomputes steps) and the
//! config text. Skips with a message when python3 has no `tensorboard` (pip install
//! tensorboard, or MALT_TEST_PYTHON); CI installs it and sets MALT_REQUIRE_PY_TOOLS=1.

mod common;

use std::process::Command;

use malt_train::metrics::{MetricsLog, StepMetrics};

fn python_with(module: &str) -> Option<String> {
    let py = std::env::var("MALT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!(
        "skipped: `{py}` cannot import {module} (pip install {module}, or set MALT_TEST_PYTHON)"
    );
    if std::env::var("MALT_REQUIRE_PY_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg}; MALT_REQUIRE_PY_TOOLS=1 requires it");
    }
    eprintln!("{msg}");
    None
}

const READ: &str = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
out = {}
for d in sys.argv[1:]:
    acc = ea.EventAccumulator(d, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    out[d] = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "text": {t: [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)] for t in tags["tensors"]},
    }
print(json.dumps(out))
"#;

fn step(step: u64, loss: f64) -> StepMetrics {
    StepMetrics {
        kind: "train".into(),
        step,
        epoch: step as f64 / 4.0,
        loss,
        lr: 1e-4,
        grad_norm: 0.5,
        tokens: 100,
        tokens_per_s: 50.0,
        reward_margin: None,
        accuracy: None,
        chosen_reward: None,
        rejected_reward: None,
    }
}

#[test]
fn tensorboard_reads_malt_events() {
    let Some(py) = python_with("tensorboard") else {
        return;
    };
    let run = tempfile::tempdir().unwrap();
    let phase = run.path().join("train/verifier/sft");
    std::fs::create_dir_all(&phase).unwrap();
    let jsonl = phase.join("metrics.jsonl");
    {
        let mut log = MetricsLog::open(&jsonl, None).unwrap();
        for (s, l) in [(1, 2.0), (2, 1.5), (3, 9.0)] {
            log.append(&step(s, l)).unwrap();
        }
    }
    // Interrupted after step 2's checkpoint: step 3 is recomputed, never shown twice.
    {
        let mut log = MetricsLog::open(&jsonl, Some(2)).unwrap();
        log.append(&step(3, 1.25)).unwrap();
    }
    malt_pipeline::tracking::write_config(run.path(), "[run]\nseed = 7\n").unwrap();
    let out = Command::new(&py)
        .args(["-c", READ])
        .arg(&phase)
        .arg(run.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v[phase.display().to_string()];
    assert_eq!(
        p["scalars"]["train/loss"],
        serde_json::json!([[1, 2.0], [2, 1.5], [3, 1.25]])
    );
    assert_eq!(p["scalars"]["train/lr"].as_array().unwrap().len(), 3);
    let r = &v[run.path().display().to_string()];
    let text = r["text"]["config"][0].as_str().unwrap();
    assert!(text.contains("seed = 7"), "{text}");
}
