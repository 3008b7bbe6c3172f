//! Gradient checkpointing (`Decoder::forward_hidden_checkpointed`): the same loss and the same
//! LoRA gradients as the plain training forward, with dropout on, for every architecture; and
//! less peak memory for one training step (measured in a child process).
//!
//! Tolerance: the recomputed layer repeats the forward exactly, so the loss is bit-equal; the
//! gradients differ only by float reassociation (a layer input's gradient is summed in another
//! order), so each variable's gradient agrees to 1e-5 relative to its largest entry.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use malt_model::{LoraAdapter, LoraConfig, Mode, Model};
use std::path::Path;

const VARIANTS: [Variant; 4] = [LLAMA, LLAMA_TIED, QWEN2, QWEN3];

fn adapter_with_dropout(m: &Model, seed: u64) -> LoraAdapter {
    let a = m
        .new_adapter(
            "test",
            LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.2,
                ..Default::default()
            },
            seed,
        )
        .unwrap();
    randomize_b(&a, seed + 1);
    a
}

/// Next-token cross-entropy over `x` (b, s).
fn loss(m: &Model, a: &LoraAdapter, x: &Tensor, checkpointed: bool) -> Tensor {
    let seed = Some(42);
    let h = if checkpointed {
        m.decoder.forward_hidden_checkpointed(x, Some(a), seed)
    } else {
        m.decoder
            .forward_hidden(x, Some(a), Mode::Train { dropout_seed: seed })
    }
    .unwrap();
    let logits = m
        .decoder
        .logits(&h, Mode::Train { dropout_seed: seed })
        .unwrap();
    let (b, s, v) = logits.dims3().unwrap();
    let targets = x.narrow(1, 1, s - 1).unwrap().flatten_all().unwrap();
    let lg = logits
        .narrow(1, 0, s - 1)
        .unwrap()
        .reshape((b * (s - 1), v))
        .unwrap();
    candle_nn::loss::cross_entropy(&lg, &targets).unwrap()
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones_with_dropout() {
    for v in VARIANTS {
        let (_d, m) = load_tiny(v, 21);
        let a = adapter_with_dropout(&m, 5);
        let x = Tensor::from_vec([seq(12, 1), seq(12, 7)].concat(), (2, 12), &Device::Cpu).unwrap();
        let plain = loss(&m, &a, &x, false);
        let ckpt = loss(&m, &a, &x, true);
        assert_eq!(
            plain.to_scalar::<f32>().unwrap(),
            ckpt.to_scalar::<f32>().unwrap(),
            "{v:?}: loss"
        );
        let (gp, gc) = (plain.backward().unwrap(), ckpt.backward().unwrap());
        for (name, var) in a.named_vars() {
            let p = gp.get(var.as_tensor()).unwrap();
            let c = gc
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{v:?}: no checkpointed gradient for {name}"));
            let scale = max_abs(p);
            assert!(scale > 0.0, "{v:?}: {name} has a zero gradient");
            let r = max_abs_diff(c, p) / scale;
            assert!(r <= 1e-5, "{v:?}: {name} differs by {r} (relative)");
        }
    }
}

#[test]
fn without_dropout_seed_or_adapter_it_is_the_plain_forward() {
    let (_d, m) = load_tiny(LLAMA, 3);
    let x = ids(&seq(9, 2));
    let plain = m
        .decoder
        .forward_hidden(&x, None, Mode::Train { dropout_seed: None })
        .unwrap();
    let ckpt = m
        .decoder
        .forward_hidden_checkpointed(&x, None, None)
        .unwrap();
    assert_eq!(max_abs_diff(&plain, &ckpt), 0.0);
}

/// Set in the child process of [`checkpointing_lowers_the_peak_memory_of_a_step`].
const STEP_CHILD: &str = "MALT_TEST_CHECKPOINT_STEP";

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A model whose activations dwarf its weights: 8 layers, hidden 128, vocab 256.
fn memory_model() -> Model {
    let cfg = malt_model::ModelConfig {
        max_position_embeddings: 2048,
        ..malt_model::ModelConfig::llama(256, 128, 384, 8, 4, 2)
    };
    Model::random_as(cfg, &Device::Cpu, candle_core::DType::F32).unwrap()
}

/// The child: one training step (forward, loss, backward) at 2 x 1024 tokens, printing resident
/// memory before the step and at its peak. A no-op in a normal test run.
#[test]
fn step_child() {
    let Ok(which) = std::env::var(STEP_CHILD) else {
        return;
    };
    let m = memory_model();
    let a = adapter_with_dropout(&m, 1);
    let x = Tensor::from_vec(
        [seq(1024, 3), seq(1024, 4)].concat(),
        (2, 1024),
        &Device::Cpu,
    )
    .unwrap();
    let before = status_kib("VmRSS:");
    let l = loss(&m, &a, &x, which == "checkpointed");
    let grads = l.backward().unwrap();
    let peak = status_kib("VmHWM:");
    assert!(grads.get(a.named_vars()[0].1.as_tensor()).is_some());
    println!("RSS before {before} peak {peak}");
}

fn child_growth(which: &str) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "step_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(STEP_CHILD, which)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("RSS before").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "child printed no RSS line: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    v[1] - v[0]
}

#[test]
fn checkpointing_lowers_the_peak_memory_of_a_step() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("skipped: needs /proc/self/status (Linux) to read peak memory");
        return;
    }
    let plain = child_growth("plain");
    let ckpt = child_growth("checkpointed");
    eprintln!(
        "one step at 2 x 1024 tokens, 8 layers: peak growth {plain} KiB plain, {ckpt} KiB \
         checkpointed ({:.2}x)",
        ckpt as f64 / plain as f64
    );
    // Eight layers' intermediates against one layer's plus eight hidden states: the saving is
    // several-fold; asserting half leaves room for allocator noise.
    assert!(
        ckpt * 2 < plain,
        "checkpointed step grew memory by {ckpt} KiB, plain by {plain} KiB"
    );
}
