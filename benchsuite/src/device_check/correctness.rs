//! Device against CPU on one tiny random checkpoint (the same weights on both, drawn on the
//! host from a seed): logits in f32 and bf16, the LoRA gradients of one SFT and one DPO step,
//! and the tree sampler run twice with one seed on the device. On the CPU itself every
//! comparison is trivially exact; the report says so (`compared_with`).

use candle_core::{DType, Device, Tensor};
use malt_model::random::DrawOn;
use malt_model::{LoraAdapter, LoraConfig, Model, Proj};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::compare::Agreement;
use super::shape::correctness_model;
use super::tree::{sample_tree, synthetic_tokens, TreeSpec};
use malt_train::batch::{Sequence, TokenBatch};
use malt_train::error::{Result, TrainError};
use malt_train::loss;
use malt_train::model_bridge::MaltPolicy;
use malt_train::policy::{Mode, PolicyModel};
use malt_train::settings::DpoSettings;

/// Largest `||device - cpu|| / ||cpu||` that passes. f32 differs only by summation order; bf16
/// on a GPU also rounds every activation to 8 mantissa bits (the CPU keeps f32 activations), and
/// gradients compound that through the backward.
pub const LOGITS_F32: f64 = 1e-4;
pub const LOGITS_BF16: f64 = 2e-2;
pub const GRADS_F32: f64 = 1e-3;
pub const GRADS_BF16: f64 = 5e-2;

#[derive(Debug, Clone, Serialize)]
pub struct ValueCheck {
    pub what: String,
    pub dtype: String,
    #[serde(flatten)]
    pub agreement: Option<Agreement>,
    /// Loss of the step on the device and on the CPU (gradient checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<[f64; 2]>,
    /// Trainable tensors with a gradient / of the adapter (both must be equal to pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors_with_gradient: Option<[usize; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TreeCheck {
    pub dtype: String,
    pub sequences: usize,
    /// Both runs on the device with one seed produced the same tokens everywhere.
    pub runs_equal: bool,
    /// Sequences identical to the CPU's run (not a pass criterion: near-uniform random logits
    /// let rounding differences pick other tokens).
    pub identical_to_cpu: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Correctness {
    /// `cpu`, or `cpu (same device)` when the checked device is the CPU itself.
    pub compared_with: String,
    pub model: String,
    pub seed: u64,
    pub logits: Vec<ValueCheck>,
    pub gradients: Vec<ValueCheck>,
    pub tree: Vec<TreeCheck>,
    pub pass: bool,
}

const DTYPES: [(DType, &str); 2] = [(DType::F32, "f32"), (DType::BF16, "bf16")];

/// Runs every check of `device` against the CPU.
pub fn check(device: &Device, seed: u64) -> Result<Correctness> {
    let cfg = correctness_model();
    let model = format!(
        "random, hidden {}, {} layers, {}/{} heads, vocab {}, untied",
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size
    );
    let (mut logits, mut gradients, mut tree) = (vec![], vec![], vec![]);
    for (dtype, name) in DTYPES {
        let build = |dev: &Device| {
            Model::random_seeded(cfg.clone(), dev, dtype, seed, DrawOn::Host)
                .map_err(TrainError::model)
        };
        let cpu = build(&Device::Cpu)?;
        let dev = build(device)?;
        let (lt, gt) = match dtype {
            DType::F32 => (LOGITS_F32, GRADS_F32),
            _ => (LOGITS_BF16, GRADS_BF16),
        };
        logits.push(value_check("logits", name, || {
            let ids = logits_input(cfg.vocab_size);
            Ok((logits_of(&dev, &ids)?, logits_of(&cpu, &ids)?, lt))
        }));
        for phase in ["sft", "dpo"] {
            gradients.push(gradient_check(phase, name, &dev, &cpu, seed, gt));
        }
        tree.push(tree_check(name, &dev, &cpu, seed));
    }
    let pass = logits.iter().chain(&gradients).all(|c| c.pass) && tree.iter().all(|t| t.pass);
    Ok(Correctness {
        compared_with: if device.is_cpu() {
            "cpu (same device)".into()
        } else {
            "cpu".into()
        },
        model,
        seed,
        logits,
        gradients,
        tree,
        pass,
    })
}

fn value_check(
    what: &str,
    dtype: &str,
    f: impl FnOnce() -> Result<(Vec<f32>, Vec<f32>, f64)>,
) -> ValueCheck {
    let (agreement, error) = match f() {
        Ok((got, reference, tol)) => (Some(Agreement::of(&got, &reference, tol)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    ValueCheck {
        what: what.into(),
        dtype: dtype.into(),
        pass: agreement.as_ref().is_some_and(|a| a.pass),
        agreement,
        loss: None,
        tensors_with_gradient: None,
        error,
    }
}

/// Two rows of 24 tokens.
fn logits_input(vocab: usize) -> Vec<u32> {
    synthetic_tokens(48, 11, vocab)
}

fn logits_of(m: &Model, ids: &[u32]) -> Result<Vec<f32>> {
    let ids = Tensor::from_vec(ids.to_vec(), (2, ids.len() / 2), m.device())?;
    let l = m
        .decoder
        .forward(&ids, None, malt_model::Mode::Infer)
        .map_err(TrainError::model)?;
    Ok(l.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Rank 4 on all seven projections, no dropout (masks are drawn per device), and `B` set to
/// seeded values: a fresh adapter's zero `B` would leave `A` without a gradient to compare.
fn adapter(m: &Model, seed: u64) -> Result<(MaltPolicy<'_>, LoraAdapter)> {
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    };
    let policy = MaltPolicy::new(m, lora);
    let a = policy.new_adapter("check", seed)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xb);
    for layer in 0..m.config().num_hidden_layers {
        for p in Proj::ALL {
            if let Some(pair) = a.get(layer, p) {
                let shape = pair.b.as_tensor().dims().to_vec();
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.05..0.05)).collect();
                pair.b.set(&Tensor::from_vec(v, shape, m.device())?)?;
            }
        }
    }
    Ok((policy, a))
}

/// Sequences of unequal lengths (so padding is exercised): `(prompt, completion)` lengths.
fn sequences(vocab: usize, lens: &[(usize, usize)], salt: u64) -> Vec<Sequence> {
    lens.iter()
        .enumerate()
        .map(|(i, &(p, c))| Sequence {
            ids: synthetic_tokens(p + c, salt + i as u64, vocab),
            prompt_len: p,
        })
        .collect()
}

/// The step's loss and the gradient of every adapter tensor, flattened in the adapter's order
/// (a missing gradient contributes zeros and is counted).
fn lora_step(m: &Model, phase: &str, seed: u64) -> Result<(f64, Vec<f32>, [usize; 2])> {
    let (policy, a) = adapter(m, seed)?;
    let vocab = m.config().vocab_size;
    let l = if phase == "sft" {
        let seqs = sequences(vocab, &[(5, 11), (8, 6)], 21);
        let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0);
        let logits = policy.target_logits(
            &batch,
            Some(&a),
            Mode::Train {
                dropout_seed: Some(0),
            },
        )?;
        let lp = loss::token_logprobs(&logits, &batch.targets)?;
        (lp.sum_all()?.neg()? / batch.num_targets() as f64)?
    } else {
        // Two pairs: chosen rows first, then rejected, as the trainer batches them; the reference
        // is the base model without the adapter (the trainer's reference for a first DPO phase).
        let seqs = sequences(vocab, &[(6, 7), (6, 9), (6, 5), (6, 8)], 31);
        let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0);
        let sums = |adapter: Option<&LoraAdapter>, mode: Mode| -> Result<Tensor> {
            let logits = policy.target_logits(&batch, adapter, mode)?;
            loss::sequence_sums(&batch, &loss::token_logprobs(&logits, &batch.targets)?)
        };
        let pi = sums(
            Some(&a),
            Mode::Train {
                dropout_seed: Some(0),
            },
        )?;
        let reference = sums(None, Mode::Eval)?.detach();
        let s = DpoSettings {
            beta: 0.2,
            ..DpoSettings::default()
        };
        loss::dpo_terms(
            &pi.narrow(0, 0, 2)?,
            &pi.narrow(0, 2, 2)?,
            &reference.narrow(0, 0, 2)?,
            &reference.narrow(0, 2, 2)?,
            &s,
        )?
        .losses
        .mean_all()?
    };
    let loss_value = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let grads = l.backward()?;
    let vars = a.named_vars();
    let mut flat = vec![];
    let mut with_grad = 0;
    for (_, v) in &vars {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => {
                with_grad += 1;
                g.clone()
            }
            None => v.as_tensor().zeros_like()?,
        };
        flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok((loss_value, flat, [with_grad, vars.len()]))
}

fn gradient_check(
    phase: &str,
    dtype: &str,
    dev: &Model,
    cpu: &Model,
    seed: u64,
    tol: f64,
) -> ValueCheck {
    let run = || -> Result<_> { Ok((lora_step(dev, phase, seed)?, lora_step(cpu, phase, seed)?)) };
    match run() {
        Ok(((dl, dg, dn), (cl, cg, _))) => {
            let agreement = Agreement::of(&dg, &cg, tol);
            ValueCheck {
                what: format!("lora gradients, one {phase} step"),
                dtype: dtype.into(),
                pass: agreement.pass && dn[0] == dn[1],
                agreement: Some(agreement),
                loss: Some([dl, cl]),
                tensors_with_gradient: Some(dn),
                error: None,
            }
        }
        Err(e) => ValueCheck {
            what: format!("lora gradients, one {phase} step"),
            dtype: dtype.into(),
            agreement: None,
            loss: None,
            tensors_with_gradient: None,
            error: Some(e.to_string()),
            pass: false,
        },
    }
}

fn tree_check(dtype: &str, dev: &Model, cpu: &Model, seed: u64) -> TreeCheck {
    let spec = TreeSpec {
        branching: 3,
        depth: 3,
        root_prompt: 12,
        level_prompt: 6,
        new_tokens: 6,
        seed,
    };
    let run = || -> Result<_> {
        let a = sample_tree(dev, &spec)?.sequences;
        let b = sample_tree(dev, &spec)?.sequences;
        let c = sample_tree(cpu, &spec)?.sequences;
        Ok((a, b, c))
    };
    match run() {
        Ok((a, b, c)) => TreeCheck {
            dtype: dtype.into(),
            sequences: a.len(),
            runs_equal: a == b,
            identical_to_cpu: a.iter().zip(&c).filter(|(x, y)| x == y).count(),
            error: None,
            pass: a == b && a.len() == 39,
        },
        Err(e) => TreeCheck {
            dtype: dtype.into(),
            sequences: 0,
            runs_equal: false,
            identical_to_cpu: 0,
            error: Some(e.to_string()),
            pass: false,
        },
    }
}
