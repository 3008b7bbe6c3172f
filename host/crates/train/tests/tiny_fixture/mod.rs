//! The tiny reference models and their fixtures, and the comparisons every training reference
//! test makes (`reference.rs`: SFT and DPO; `reference_pg.rs`: the policy-gradient loss).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use malt_model::{LoraAdapter, LoraConfig, Model};
use malt_train::{ChatTokenizer, MaltPolicy, MaltTokenizer, Sequence};
use serde_json::Value;

use crate::reference_env::{self, figure, to_cpu};

pub const LOSS_TOL: f64 = 1e-5;
pub const GRAD_TOL: f32 = 1e-4;
pub const ARCHS: [&str; 2] = ["llama", "qwen2"];

/// The fixture folder: the committed one, or MALT_REFERENCE_FIXTURES (a copy of it).
pub fn committed() -> PathBuf {
    reference_env::fixtures()
}

pub fn finish(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected numbers, found {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub struct Tiny {
    pub arch: &'static str,
    pub dir: PathBuf,
    pub model: Model,
    pub r: Value,
    pub t: HashMap<String, Tensor>,
}

/// A tiny model in f32 on the reference device, with its fixtures (tensors on the CPU).
pub fn tiny(fixtures: &Path, arch: &'static str) -> Tiny {
    let dir = fixtures.join(format!("tiny_{arch}"));
    let model = Model::load_as(
        dir.to_str().unwrap(),
        &reference_env::device(),
        Some(DType::F32),
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let r = serde_json::from_str(&text).unwrap();
    let t =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Tiny {
        arch,
        dir,
        model,
        r,
        t,
    }
}

impl Tiny {
    pub fn policy(&self) -> MaltPolicy<'_> {
        MaltPolicy::new(&self.model, LoraConfig::default())
    }

    pub fn adapter(&self) -> LoraAdapter {
        self.model
            .load_adapter(&self.dir.join("adapter_init"), "init")
            .unwrap()
    }

    pub fn pad(&self) -> u32 {
        // The trainer pads with EOS (`train_phase`: `pad_id = tok.eos_id()`).
        MaltTokenizer::new(&self.model).unwrap().eos_id()
    }

    pub fn file(&self) -> String {
        format!("tiny_{}/reference.json", self.arch)
    }
}

pub fn write_jsonl(path: &Path, records: &Value) {
    let lines: Vec<String> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

pub fn fixture_sequences(v: &Value) -> Vec<Sequence> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| Sequence {
            ids: s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            prompt_len: s["prompt_len"].as_u64().unwrap() as usize,
        })
        .collect()
}

/// malt's data path (`data::load_*` + `tokenize_*`, what `train_phase` runs) on the fixture's
/// records must give the fixture's sequences (malt's tokenisation as the script computed it
/// with transformers); a failure here explains any loss difference below.
pub fn check_tokenisation(
    t: &Tiny,
    what: &str,
    got: &[&Sequence],
    want: &[Sequence],
) -> Vec<String> {
    let mut fails = vec![];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.ids != w.ids || g.prompt_len != w.prompt_len {
            fails.push(format!(
                "{} {what}[{i}]: malt's data path gives {} ids (prompt {}), the fixture {} \
                 (prompt {}): {:?} vs {:?}",
                t.file(),
                g.ids.len(),
                g.prompt_len,
                w.ids.len(),
                w.prompt_len,
                g.ids,
                w.ids
            ));
        }
    }
    figure(
        t.model.device(),
        &format!("tiny {} {what}: malt's data path on the records", t.arch),
        &format!("sequences differing of {}", want.len()),
        fails.len() as f64,
        0.0,
    );
    fails
}

/// Each gradient against `<prefix>.<PEFT name>` of reference.safetensors.
pub fn compare_grads(
    t: &Tiny,
    prefix: &str,
    vars: &[(String, Var)],
    grads: &[Tensor],
) -> Vec<String> {
    let mut fails = vec![];
    let mut worst = 0f32;
    assert_eq!(
        vars.len(),
        2 * 7 * 2,
        "every projection of both layers has lora_A and lora_B"
    );
    for ((name, _), g) in vars.iter().zip(grads) {
        let g = &to_cpu(g);
        let key = format!("{prefix}.{name}");
        let Some(want) = t.t.get(&key) else {
            fails.push(format!(
                "tiny_{}/reference.safetensors has no {key}",
                t.arch
            ));
            continue;
        };
        let scale = max_abs(want);
        let diff = max_abs(&(g - want).unwrap());
        worst = worst.max(diff / scale);
        if diff > GRAD_TOL * scale || diff.is_nan() {
            let (i, gv, wv) = first_bad(g, want, GRAD_TOL * scale);
            fails.push(format!(
                "tiny_{}/reference.safetensors {key}: max difference {diff:.3e} > {GRAD_TOL:e} x \
                 max |reference| {scale:.3e}; first at flat index {i}: malt {gv}, reference {wv}",
                t.arch
            ));
        }
    }
    figure(
        t.model.device(),
        &format!(
            "tiny {} {prefix} LoRA gradients ({} tensors)",
            t.arch,
            vars.len()
        ),
        "max over tensors of max |malt - reference| / max |reference|",
        worst as f64,
        GRAD_TOL as f64,
    );
    fails
}

pub fn max_abs(x: &Tensor) -> f32 {
    x.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn first_bad(g: &Tensor, w: &Tensor, tol: f32) -> (usize, f32, f32) {
    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    g.iter()
        .zip(&w)
        .enumerate()
        .find(|(_, (a, b))| (*a - *b).abs() > tol || a.is_nan())
        .map(|(i, (a, b))| (i, *a, *b))
        .unwrap_or((0, g[0], w[0]))
}

pub fn close(what: &str, got: f64, want: f64, fails: &mut Vec<String>) {
    let tol = LOSS_TOL * want.abs().max(1.0);
    figure(
        &reference_env::device(),
        &format!("{what} (malt {got:.7}, reference {want:.7})"),
        "|malt - reference| / max(|reference|, 1)",
        (got - want).abs() / want.abs().max(1.0),
        LOSS_TOL,
    );
    if (got - want).abs() > tol || got.is_nan() {
        fails.push(format!(
            "{what}: malt {got}, reference {want} (|diff| {:.2e} > {tol:.1e})",
            (got - want).abs()
        ));
    }
}

/// Sums each variable's gradients over backward passes (as the trainer's accumulator does).
pub fn accumulate(sums: &mut [Option<Tensor>], vars: &[(String, Var)], loss: &Tensor) {
    let grads = loss.backward().unwrap();
    for (sum, (_, v)) in sums.iter_mut().zip(vars) {
        if let Some(g) = grads.get(v.as_tensor()) {
            *sum = Some(match sum.take() {
                Some(s) => (s + g).unwrap(),
                None => g.clone(),
            });
        }
    }
}

pub fn into_grads(sums: Vec<Option<Tensor>>, vars: &[(String, Var)]) -> Vec<Tensor> {
    sums.into_iter()
        .zip(vars)
        .map(|(g, (n, _))| g.unwrap_or_else(|| panic!("{n}: no gradient")))
        .collect()
}
