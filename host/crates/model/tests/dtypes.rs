//! bf16 and f16 weights on the CPU against f32: logits, cached decoding, LoRA gradients and a
//! training step agree within stated tolerances, and a bf16 checkpoint loads without an f32
//! copy of its weights (peak resident memory, measured in a child process).
//!
//! Tolerances, relative to the largest reference value:
//! - f16 weights are widened exactly and multiplied in f32: the same model in f32 (its weights
//!   read from the f16 file) agrees to 1e-4;
//! - bf16 weights on a CPU with AVX512-BF16 multiply inputs rounded to bf16 (2^-9 relative each):
//!   2e-2 for logits and 5e-2 for gradients (which sum many such products);
//! - against the original f32 weights (before rounding them to 2 bytes): 6e-2.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use malt_model::{LoraConfig, Mode, Model, SamplingParams};
use std::collections::HashMap;
use std::path::Path;

const VARIANTS: [Variant; 4] = [LLAMA, LLAMA_TIED, QWEN2, QWEN3];

/// Rewrites the checkpoint in `dir` with every floating-point tensor stored as `dtype`.
fn restore_as(dir: &Path, dtype: DType) {
    let file = dir.join("model.safetensors");
    let t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let t: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&t, &file).unwrap();
}

fn load(dir: &Path, dtype: DType) -> Model {
    Model::load_as(dir.to_str().unwrap(), &Device::Cpu, Some(dtype)).unwrap()
}

/// max |a - b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b).max(1e-12)
}

fn infer_logits(m: &Model, x: &Tensor) -> Tensor {
    m.decoder.forward(x, None, Mode::Infer).unwrap()
}

#[test]
fn weights_are_held_in_the_dtype_asked_for() {
    let d = tempfile::tempdir().unwrap();
    write_tiny(d.path(), LLAMA, 3, false);
    restore_as(d.path(), DType::BF16);
    for (asked, held) in [
        (DType::BF16, DType::BF16),
        (DType::F16, DType::F16),
        (DType::F32, DType::F32),
    ] {
        let m = load(d.path(), asked);
        assert_eq!(m.decoder.dtype(), held);
        assert_eq!(m.decoder.layers[0].proj[0].w.dtype(), held);
        assert_eq!(m.decoder.embed.dtype(), held);
        // Norms and activations stay f32 on the CPU.
        assert_eq!(m.decoder.norm.dtype(), DType::F32);
        assert_eq!(m.decoder.activation_dtype(), DType::F32);
    }
    // No dtype asked: f32 on the CPU, whatever the checkpoint stores.
    let m = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(m.decoder.dtype(), DType::F32);
}

#[test]
fn half_weights_give_the_logits_of_their_f32_widening() {
    for v in VARIANTS {
        for (dtype, tol) in [(DType::F16, 1e-4), (DType::BF16, 2e-2)] {
            let d = tempfile::tempdir().unwrap();
            write_tiny(d.path(), v, 11, false);
            restore_as(d.path(), dtype);
            let half = load(d.path(), dtype);
            let wide = load(d.path(), DType::F32);
            // 3 rows (small-batch kernels) and 40 rows (the large-product path).
            for x in [ids(&seq(3, 1)), ids(&seq(40, 2))] {
                let r = rel(&infer_logits(&half, &x), &infer_logits(&wide, &x));
                assert!(r <= tol, "{v:?} {dtype:?} {:?}: relative {r}", x.dims());
            }
        }
    }
}

#[test]
fn half_weights_stay_close_to_the_original_f32_model() {
    for v in VARIANTS {
        let d = tempfile::tempdir().unwrap();
        write_tiny(d.path(), v, 12, false);
        let f32m = load(d.path(), DType::F32);
        for dtype in [DType::BF16, DType::F16] {
            let m = load(d.path(), dtype);
            let x = ids(&seq(24, 3));
            let r = rel(&infer_logits(&m, &x), &infer_logits(&f32m, &x));
            assert!(r <= 6e-2, "{v:?} {dtype:?}: relative {r}");
        }
    }
}

#[test]
fn bf16_cached_decoding_matches_its_full_forward() {
    let d = tempfile::tempdir().unwrap();
    write_tiny(d.path(), LLAMA, 13, false);
    restore_as(d.path(), DType::BF16);
    let m = load(d.path(), DType::BF16);
    let prompt = seq(9, 4);
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 6,
        ..Default::default()
    };
    let out = m.complete(&prompt, &params, 0, None).unwrap();
    let mut all = prompt.clone();
    all.extend(&out.tokens);
    // Greedy decoding picked the argmax of the full forward at every generated position.
    let logits = infer_logits(&m, &ids(&all)).squeeze(0).unwrap();
    for (i, &tok) in out.tokens.iter().enumerate() {
        let row = logits.get(prompt.len() - 1 + i).unwrap();
        let v = row.to_vec1::<f32>().unwrap();
        let best = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            best - v[tok as usize] <= 2e-2 * best.abs().max(1.0),
            "step {i}: picked {tok} ({}) but the full forward's best is {best}",
            v[tok as usize]
        );
    }
}

fn lora_loss(m: &Model, a: &malt_model::LoraAdapter, x: &Tensor) -> Tensor {
    let mode = Mode::Train { dropout_seed: None };
    let h = m.decoder.forward_hidden(x, Some(a), mode).unwrap();
    let logits = m.decoder.logits(&h, mode).unwrap();
    let (b, s, v) = logits.dims3().unwrap();
    let targets = x.narrow(1, 1, s - 1).unwrap().flatten_all().unwrap();
    let lg = logits
        .narrow(1, 0, s - 1)
        .unwrap()
        .reshape((b * (s - 1), v))
        .unwrap();
    candle_nn::loss::cross_entropy(&lg, &targets).unwrap()
}

/// Loss, per-variable gradients, and the loss after one SGD step on the adapter.
fn step(m: &Model, seed: u64) -> (f32, Vec<Tensor>, f32) {
    let a = m
        .new_adapter(
            "t",
            LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                ..Default::default()
            },
            seed,
        )
        .unwrap();
    randomize_b(&a, seed + 1);
    let x = Tensor::from_vec([seq(12, 1), seq(12, 6)].concat(), (2, 12), &Device::Cpu).unwrap();
    let loss = lora_loss(m, &a, &x);
    let grads = loss.backward().unwrap();
    let mut gs = vec![];
    for (_, var) in a.named_vars() {
        let g = grads.get(var.as_tensor()).unwrap().clone();
        var.set(&(var.as_tensor() - (&g * 0.5).unwrap()).unwrap())
            .unwrap();
        gs.push(g);
    }
    let after = lora_loss(m, &a, &x).to_scalar::<f32>().unwrap();
    (loss.to_scalar::<f32>().unwrap(), gs, after)
}

#[test]
fn half_weights_train_like_their_f32_widening() {
    for v in VARIANTS {
        for (dtype, tol) in [(DType::F16, 1e-4), (DType::BF16, 5e-2)] {
            let d = tempfile::tempdir().unwrap();
            write_tiny(d.path(), v, 14, false);
            restore_as(d.path(), dtype);
            let (l_half, g_half, a_half) = step(&load(d.path(), dtype), 5);
            let (l_wide, g_wide, a_wide) = step(&load(d.path(), DType::F32), 5);
            assert!(
                (l_half - l_wide).abs() <= tol * l_wide.abs(),
                "{v:?} {dtype:?}: loss {l_half} vs {l_wide}"
            );
            assert!(
                (a_half - a_wide).abs() <= tol * a_wide.abs(),
                "{v:?} {dtype:?}: loss after a step {a_half} vs {a_wide}"
            );
            for (i, (a, b)) in g_half.iter().zip(&g_wide).enumerate() {
                let r = rel(a, b);
                assert!(r <= tol, "{v:?} {dtype:?}: gradient {i} relative {r}");
            }
        }
    }
}

#[test]
fn merged_export_keeps_the_base_dtype() {
    let d = tempfile::tempdir().unwrap();
    write_tiny(d.path(), LLAMA, 15, false);
    restore_as(d.path(), DType::BF16);
    let m = load(d.path(), DType::BF16);
    let a = m.new_adapter("t", LoraConfig::default(), 1).unwrap();
    randomize_b(&a, 2);
    let out = tempfile::tempdir().unwrap();
    m.export_merged(out.path(), Some(&a)).unwrap();
    let t =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        t["model.layers.0.self_attn.q_proj.weight"].dtype(),
        DType::BF16
    );
    // The merged weights are the base plus the adapter's delta.
    let back = load(out.path(), DType::BF16);
    let x = ids(&seq(8, 1));
    let with_adapter = m.decoder.forward(&x, Some(&a), Mode::Infer).unwrap();
    let merged = infer_logits(&back, &x);
    let r = rel(&merged, &with_adapter);
    assert!(r <= 3e-2, "merged vs base + adapter: relative {r}");
}

/// Set in the child process of [`bf16_checkpoint_loads_without_an_f32_copy`].
const RSS_CHILD: &str = "MALT_TEST_RSS_LOAD";

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The child: loads the checkpoint named in the environment and prints its resident memory
/// before and at the peak. A no-op in a normal test run.
#[test]
fn rss_child() {
    let Ok(spec) = std::env::var(RSS_CHILD) else {
        return;
    };
    let (dir, dtype) = spec.split_once('|').unwrap();
    let before = status_kib("VmRSS:");
    let m = Model::load_as(
        dir,
        &Device::Cpu,
        Some(malt_model::parse_dtype(dtype).unwrap()),
    )
    .unwrap();
    let peak = status_kib("VmHWM:");
    drop(m);
    println!("RSS before {before} peak {peak}");
}

fn child_peak(dir: &Path, dtype: &str) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rss_child", "--nocapture", "--test-threads", "1"])
        .env(RSS_CHILD, format!("{}|{dtype}", dir.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The harness may print "test rss_child ... " on the same line first.
    let line = text
        .lines()
        .find_map(|l| l.find("RSS before").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("child printed no RSS line: {text}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    v[1] - v[0]
}

#[test]
fn bf16_checkpoint_loads_without_an_f32_copy() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("skipped: needs /proc/self/status (Linux) to read peak memory");
        return;
    }
    // About 25 MB of bf16 weights: large against the process's own noise.
    let d = tempfile::tempdir().unwrap();
    let cfg = malt_model::ModelConfig {
        max_position_embeddings: 512,
        ..malt_model::ModelConfig::llama(8192, 256, 1024, 8, 4, 2)
    };
    let m = Model::random_as(cfg, &Device::Cpu, DType::BF16).unwrap();
    m.export_merged(d.path(), None).unwrap();
    drop(m);
    let file = std::fs::metadata(d.path().join("model.safetensors"))
        .unwrap()
        .len()
        / 1024;
    let bf16 = child_peak(d.path(), "bf16");
    let f32 = child_peak(d.path(), "f32");
    eprintln!("checkpoint {file} KiB; peak growth loading as bf16 {bf16} KiB, as f32 {f32} KiB");
    // bf16: the weights once, plus the largest tensor in flight and the tokenizer.
    assert!(
        bf16 < file * 3 / 2,
        "loading as bf16 grew resident memory by {bf16} KiB for a {file} KiB checkpoint"
    );
    // The measurement sees a copy when there is one: f32 needs twice the bytes.
    assert!(f32 > file * 9 / 5, "as f32: {f32} KiB for {file} KiB");
}
