//! Gradient checkpointing through the trainer (`MaltPolicy::with_gradient_checkpointing`) on a
//! tiny random Llama with LoRA dropout on: an SFT step's and a DPO step's gradients equal the
//! plain ones, and a whole SFT-then-DPO schedule gives the same loss curve (the bench that
//! measures it beside malt: malt-bench's tests/train.rs).
//!
//! Tolerances: losses and gradients differ only by float reassociation (the recomputed layers
//! repeat the forward exactly; a layer input's gradient is summed in another order): 1e-5
//! relative per variable for one step's gradients, 1e-4 relative per logged loss over a
//! schedule (AdamW compounds the rounding over the steps).

mod common;

use candle_core::{Device, Tensor};
use malt_model::{LoraAdapter, LoraConfig, Model, Proj};
use malt_train::metrics::read_metrics;
use malt_train::{
    loss, trainer, AgentPlan, DpoSettings, MaltPolicy, MaltTokenizer, Method, Mode, OptimSettings,
    Phase, PolicyModel, RunOptions, ScheduleKind, Sequence, TokenBatch,
};

fn lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: Proj::ALL.to_vec(),
    }
}

fn tiny_model() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    common::hf::write_tiny_llama(dir.path(), 17);
    let model = Model::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    (dir, model)
}

/// A trained-looking adapter: B is zero in a fresh one, which would make A's gradients zero.
fn adapter(policy: &MaltPolicy) -> LoraAdapter {
    let a = policy.new_adapter("ckpt", 3).unwrap();
    for (i, (name, v)) in a.named_vars().into_iter().enumerate() {
        if name.contains("lora_B") {
            let t = Tensor::randn(0f32, 0.2, v.as_tensor().shape().clone(), &Device::Cpu).unwrap();
            let t = (t + i as f64 * 1e-3).unwrap();
            v.set(&t).unwrap();
        }
    }
    a
}

/// Token ids cycle through the tiny vocabulary's words (ids 4 and up; its size is 21).
fn sequences(n: usize, len: usize, prompt_len: usize, salt: u32) -> Vec<Sequence> {
    (0..n as u32)
        .map(|r| Sequence {
            ids: (0..len as u32)
                .map(|t| (t * 7 + r * 5 + salt) % 17 + 4)
                .collect(),
            prompt_len,
        })
        .collect()
}

/// Every LoRA variable's gradient of `loss_of(policy)`, plain and checkpointed, agrees.
fn assert_same_gradients(model: &Model, loss_of: impl Fn(&MaltPolicy, &LoraAdapter) -> Tensor) {
    let plain = MaltPolicy::new(model, lora());
    let checkpointed = MaltPolicy::new(model, lora()).with_gradient_checkpointing(true);
    let a = adapter(&plain);
    let (lp, lc) = (loss_of(&plain, &a), loss_of(&checkpointed, &a));
    let (vp, vc) = (
        lp.to_scalar::<f32>().unwrap(),
        lc.to_scalar::<f32>().unwrap(),
    );
    assert!(
        (vp - vc).abs() <= 1e-6 * vp.abs().max(1.0),
        "loss {vp} vs {vc}"
    );
    let (gp, gc) = (lp.backward().unwrap(), lc.backward().unwrap());
    for (name, var) in plain.trainable_vars(&a) {
        let p = gp.get(var.as_tensor()).unwrap();
        let c = gc
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no checkpointed gradient for {name}"));
        let scale = p
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 0.0, "{name}: zero gradient");
        let diff = (c - p)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-5 * scale,
            "{name}: differs by {diff} (max {scale})"
        );
    }
}

#[test]
fn an_sft_step_has_the_same_gradients_checkpointed() {
    let (_dir, model) = tiny_model();
    let seqs = sequences(3, 20, 8, 1);
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let batch = TokenBatch::new(&refs, 2);
    assert_same_gradients(&model, |policy, a| {
        let mode = Mode::Train {
            dropout_seed: Some(99),
        };
        let logits = policy.target_logits(&batch, Some(a), mode).unwrap();
        let lp = loss::token_logprobs(&logits, &batch.targets).unwrap();
        (lp.sum_all().unwrap().neg().unwrap() / batch.num_targets() as f64).unwrap()
    });
}

#[test]
fn a_dpo_step_has_the_same_gradients_checkpointed() {
    let (_dir, model) = tiny_model();
    // Chosen ++ rejected in one forward, as the trainer runs them.
    let chosen = sequences(2, 18, 6, 3);
    let rejected = sequences(2, 14, 6, 11);
    let refs: Vec<&Sequence> = chosen.iter().chain(&rejected).collect();
    let batch = TokenBatch::new(&refs, 2);
    let settings = DpoSettings {
        beta: 0.2,
        ..DpoSettings::default()
    };
    assert_same_gradients(&model, |policy, a| {
        let mode = Mode::Train {
            dropout_seed: Some(5),
        };
        let logits = policy.target_logits(&batch, Some(a), mode).unwrap();
        let lp = loss::token_logprobs(&logits, &batch.targets).unwrap();
        let sums = loss::sequence_sums(&batch, &lp).unwrap();
        let reference = Tensor::new(&[-30f32, -25.0], &Device::Cpu).unwrap();
        let terms = loss::dpo_terms(
            &sums.narrow(0, 0, 2).unwrap(),
            &sums.narrow(0, 2, 2).unwrap(),
            &reference,
            &(&reference - 3.0).unwrap(),
            &settings,
        )
        .unwrap();
        terms.losses.mean_all().unwrap()
    });
}

fn settings() -> OptimSettings {
    OptimSettings {
        lr: 0.02,
        epochs: 2,
        micro_batch: 2,
        grad_accum: 2,
        max_seq_len: 64,
        warmup_ratio: 0.1,
        schedule: ScheduleKind::Cosine,
        save_every: 3,
        seed: 3,
        eval_ratio: 0.2,
        ..OptimSettings::default()
    }
}

/// (step, loss) of every train record and (step, eval_loss) of every eval record of a phase.
type Curve = (Vec<(u64, f64)>, Vec<(u64, f64)>);

fn curve(run: &std::path::Path, phase: &str) -> Curve {
    let (train, eval) =
        read_metrics(&run.join(format!("train/verifier/{phase}/metrics.jsonl"))).unwrap();
    (
        train.iter().map(|m| (m.step, m.loss)).collect(),
        eval.iter().map(|m| (m.step, m.eval_loss)).collect(),
    )
}

fn assert_close(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for ((sa, la), (sb, lb)) in a.iter().zip(b) {
        assert_eq!(sa, sb, "{what}");
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs().max(1.0),
            "{what} at step {sa}: {la} vs {lb}"
        );
    }
}

#[test]
fn a_schedule_trained_checkpointed_has_the_same_loss_curve() {
    let (_dir, model) = tiny_model();
    let tok = MaltTokenizer::new(&model).unwrap();
    let plan = AgentPlan {
        name: "verifier".into(),
        method: Method::SftThenDpo,
        sft: settings(),
        dpo: OptimSettings {
            lr: 0.01,
            ..settings()
        },
        dpo_loss: DpoSettings {
            beta: 0.2,
            ..DpoSettings::default()
        },
    };
    let opts = RunOptions {
        base_model: "tiny-llama".into(),
        ..RunOptions::default()
    };
    let runs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (run, checkpointing) in runs.iter().zip([false, true]) {
        let r = run.path();
        common::hf::write_sft(&trainer::dataset_path(r, "verifier", Phase::Sft), 16, 1);
        common::hf::write_dpo(&trainer::dataset_path(r, "verifier", Phase::Dpo), 16, 2);
        let policy = MaltPolicy::new(&model, lora()).with_gradient_checkpointing(checkpointing);
        let reports = malt_train::train_agent(&policy, &tok, r, &plan, &opts).unwrap();
        assert_eq!(reports.len(), 2);
        assert!(reports.iter().all(|p| p.completed && p.steps > 0));
    }
    for phase in ["sft", "dpo"] {
        let (plain_train, plain_eval) = curve(runs[0].path(), phase);
        let (ckpt_train, ckpt_eval) = curve(runs[1].path(), phase);
        assert!(plain_train.len() >= 4, "{phase}: {plain_train:?}");
        assert_close(&plain_train, &ckpt_train, &format!("{phase} train loss"));
        assert_close(&plain_eval, &ckpt_eval, &format!("{phase} eval loss"));
    }
}
