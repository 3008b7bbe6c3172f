//! `bench_train` on a tiny model (always) and on SmolLM2-135M (ignored; run with
//! `MALT_BENCH_MODEL=smollm2-135m-instruct cargo test -p malt-bench --test train -- --ignored --nocapture`).

#[path = "../../host/crates/train/tests/common/hf.rs"]
#[allow(dead_code)]
mod hf;

use candle_core::Device;
use malt_bench::train::{bench_train, BenchSettings};
use malt_model::{LoraConfig, Model, Proj};

#[test]
fn bench_runs_and_both_implementations_agree() {
    let md = tempfile::tempdir().unwrap();
    hf::write_tiny_llama(md.path(), 5);
    let model = Model::load(md.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let s = BenchSettings {
        micro_batch: 2,
        prompt_len: 12,
        completion_len: 6,
        steps: 2,
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        ..BenchSettings::default()
    };
    let rows = bench_train(&model, &s).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert!(r.tokens_per_s > 0.0 && r.first_loss.is_finite(), "{r:?}");
        assert_eq!(r.tokens_per_step, if r.phase == "sft" { 36 } else { 72 });
    }
    // Same weights, adapter and batch: the fused/frozen path and plain autograd give one loss.
    for ph in ["sft", "dpo"] {
        let l: Vec<f64> = rows
            .iter()
            .filter(|r| r.phase == ph)
            .map(|r| r.first_loss)
            .collect();
        assert!((l[0] - l[1]).abs() < 1e-4, "{ph}: {l:?}");
    }
}

fn real_settings() -> BenchSettings {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    BenchSettings {
        micro_batch: env("MALT_BENCH_MB").unwrap_or(1),
        prompt_len: env("MALT_BENCH_PROMPT").unwrap_or(192),
        completion_len: env("MALT_BENCH_COMPLETION").unwrap_or(64),
        steps: env("MALT_BENCH_STEPS").unwrap_or(2),
        ..BenchSettings::default()
    }
}

/// Each (phase, implementation) in a fresh child process (this test binary re-run on
/// `bench_child`), so every peak-memory figure is that phase's own.
#[test]
#[ignore]
fn bench_real_model() {
    let exe = std::env::current_exe().unwrap();
    for phase in ["sft", "dpo"] {
        for imp in ["malt", "plain-candle"] {
            let out = std::process::Command::new(&exe)
                .args([
                    "bench_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("MALT_BENCH_PHASE", phase)
                .env("MALT_BENCH_IMPL", imp)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let row = text
                .lines()
                .find_map(|l| l.split_once("BENCHROW ").map(|(_, r)| r));
            assert!(
                out.status.success() && row.is_some(),
                "{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{}", row.unwrap_or_default());
        }
    }
}

#[test]
#[ignore]
fn bench_child() {
    let (Ok(phase), Ok(imp)) = (
        std::env::var("MALT_BENCH_PHASE"),
        std::env::var("MALT_BENCH_IMPL"),
    ) else {
        return; // only meaningful when spawned by bench_real_model
    };
    let src = std::env::var("MALT_BENCH_MODEL").unwrap_or_else(|_| "smollm2-135m-instruct".into());
    let model = Model::load(&src, &Device::Cpu).unwrap();
    let row = malt_bench::train::bench_phase(&model, &real_settings(), &phase, &imp).unwrap();
    println!("BENCHROW {}", serde_json::to_string(&row).unwrap());
}

/// Gradient checkpointing (malt-train's tests/grad_checkpoint.rs) measured beside malt: the
/// same first loss.
#[test]
fn the_bench_measures_checkpointing_beside_malt() {
    let dir = tempfile::tempdir().unwrap();
    hf::write_tiny_llama(dir.path(), 17);
    let model = Model::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let s = BenchSettings {
        micro_batch: 2,
        prompt_len: 12,
        completion_len: 6,
        steps: 1,
        baseline: false,
        gradient_checkpointing: true,
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: Proj::ALL.to_vec(),
        },
        ..BenchSettings::default()
    };
    let rows = bench_train(&model, &s).unwrap();
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.phase.as_str(), r.implementation.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("sft", "malt"),
            ("sft", "malt-checkpointed"),
            ("dpo", "malt"),
            ("dpo", "malt-checkpointed")
        ]
    );
    for pair in rows.chunks(2) {
        let (m, c) = (pair[0].first_loss, pair[1].first_loss);
        assert!((m - c).abs() <= 1e-5 * m.abs().max(1.0), "{m} vs {c}");
    }
}
