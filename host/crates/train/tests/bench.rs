//! `bench_train` on a tiny model (always) and on SmolLM2-135M (ignored; run with
//! `MALT_BENCH_MODEL=smollm2-135m-instruct cargo test -p malt-train --test bench -- --ignored --nocapture`).

mod common;

use candle_core::Device;
use malt_model::{LoraConfig, Model, Proj};
use malt_train::{bench_train, BenchSettings};

#[test]
fn bench_runs_and_both_implementations_agree() {
    let md = tempfile::tempdir().unwrap();
    common::hf::write_tiny_llama(md.path(), 5);
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

#[test]
#[ignore]
fn bench_real_model() {
    let src = std::env::var("MALT_BENCH_MODEL").unwrap_or_else(|_| "smollm2-135m-instruct".into());
    let model = Model::load(&src, &Device::Cpu).unwrap();
    let s = BenchSettings {
        micro_batch: std::env::var("MALT_BENCH_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        ..BenchSettings::default()
    };
    let rows = bench_train(&model, &s).unwrap();
    for r in rows {
        println!("{}", serde_json::to_string(&r).unwrap());
    }
}
