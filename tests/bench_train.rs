//! `malt bench train` end to end on a tiny random model: every (batch, phase, implementation)
//! row is measured in its own child process, malt and plain candle agree on the first loss, and
//! the ratio lines are printed for each batch size.

use std::process::Command;

use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};

const MALT: &str = env!("CARGO_BIN_EXE_malt");

fn write_tiny_model(dir: &std::path::Path) {
    let cfg = ModelConfig {
        max_position_embeddings: 128,
        eos_token_ids: vec![1],
        ..ModelConfig::llama(64, 16, 32, 2, 4, 2)
    };
    Model::random(cfg, &Device::Cpu)
        .unwrap()
        .export_merged(dir, None)
        .unwrap();
}

/// `(batch, phase, implementation, first loss)` of each measured row.
fn rows(stdout: &str) -> Vec<(usize, String, String, f64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("b=") && l.contains("s/step"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let b = f[0].trim_start_matches("b=").parse().unwrap();
            let loss = f.last().unwrap().parse().unwrap();
            (b, f[1].to_string(), f[2].to_string(), loss)
        })
        .collect()
}

#[test]
fn bench_train_measures_each_batch_and_both_implementations_agree() {
    let md = tempfile::tempdir().unwrap();
    write_tiny_model(md.path());
    let out = Command::new(MALT)
        .args(["bench", "train", "--model", md.path().to_str().unwrap()])
        .args([
            "--batch-sizes",
            "1,3",
            "--prompt-len",
            "10",
            "--completion-len",
            "5",
        ])
        .args(["--steps", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 8, "{stdout}");
    for b in [1, 3] {
        for phase in ["sft", "dpo"] {
            let l: Vec<f64> = rows
                .iter()
                .filter(|r| r.0 == b && r.1 == phase)
                .map(|r| r.3)
                .collect();
            assert_eq!(l.len(), 2, "{stdout}");
            assert!(
                l[0].is_finite() && (l[0] - l[1]).abs() < 1e-4,
                "b={b} {phase}: {l:?}"
            );
            assert!(
                stdout.contains(&format!("b={b} {phase}: malt / plain candle = ")),
                "{stdout}"
            );
        }
    }
}
