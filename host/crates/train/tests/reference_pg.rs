//! Agreement of malt's policy-gradient loss (`malt_train::pg`) with TRL's GRPO loss, on the tiny
//! random Llama and Qwen2 of `tests/fixtures/reference/` and the fixture
//! `tiny_*/pg_reference.{json,safetensors}` (`scripts/reference_golden.py --only pg`, which
//! checked its own numbers against `GRPOTrainer._compute_loss` of TRL 1.16 to 1e-6):
//!
//! one sibling group (a prompt, three completions, the last cut before its EOS), advantages
//! `[1, -1.25, 0.25]`, log-probs of `logits / 0.7`, "old" log-probs shifted so that tokens fall
//! on both sides of both clips, the KL penalty (beta 0.04) to the base model:
//! - the policy's and the reference's per-token log-probs at the temperature;
//! - the loss and every LoRA gradient for the token norm (TRL's `bnpo`) and the sequence norm
//!   (TRL's `grpo`), with the step's three completions in one micro-batch and in three, each
//!   weighted by `pg::step_weights` as the online trainer accumulates them.
//!
//! Tolerances as in `reference.rs`: losses 1e-5 relative, gradients 1e-4 of each tensor's
//! largest entry, log-probs 1e-4 absolute.
//!
//! With MALT_REFERENCE_PYTHON (a Python with torch, transformers, peft, trl) one test runs the
//! script's `tiny` and `pg` groups into a temporary folder (TRL checked there again) and repeats
//! the checks against it.

#[path = "../../model/tests/reference_env/mod.rs"]
mod reference_env;
mod tiny_fixture;

use std::path::Path;

use candle_core::{DType, Device};
use malt_train::pg::{self, LossNorm, PgSettings, TokenInputs};
use malt_train::{Mode, PolicyModel, Sequence, TokenBatch};
use reference_env::{figure, on_device};
use tiny_fixture::*;

const LOGP_TOL: f64 = 1e-4;

/// Row `r`'s first `n` entries of a `(rows, cols)` fixture tensor.
fn row(t: &candle_core::Tensor, r: usize, n: usize) -> Vec<f32> {
    t.get(r)
        .unwrap()
        .narrow(0, 0, n)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn check_logps(what: &str, got: &[f32], want: &[f32], fails: &mut Vec<String>) {
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() as f64)
        .fold(0.0, f64::max);
    figure(
        &reference_env::device(),
        what,
        "max |malt - reference| per token",
        worst,
        LOGP_TOL,
    );
    if worst > LOGP_TOL || got.iter().any(|g| g.is_nan()) || got.len() != want.len() {
        fails.push(format!(
            "{what}: max difference {worst:.2e} > {LOGP_TOL:e} ({} vs {} tokens)",
            got.len(),
            want.len()
        ));
    }
}

fn check_pg(fixtures: &Path, arch: &'static str) -> Vec<String> {
    let mut t = tiny(fixtures, arch);
    let file = format!("tiny_{arch}/pg_reference.json");
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.dir.join("pg_reference.json"))
            .unwrap_or_else(|e| panic!("{file}: {e} (run scripts/reference_golden.py --only pg)")),
    )
    .unwrap();
    t.t = candle_core::safetensors::load(t.dir.join("pg_reference.safetensors"), &Device::Cpu)
        .unwrap();
    let seqs = fixture_sequences(&r["sequences"]);
    let temperature = r["temperature"].as_f64().unwrap();
    let advantages: Vec<f32> = f64s(&r["advantages"]).iter().map(|&a| a as f32).collect();
    let lens: Vec<usize> = seqs.iter().map(Sequence::completion_len).collect();
    let policy = t.policy();
    let adapter = t.adapter();
    let pad = t.pad();
    let mut fails = vec![];

    // Per-token inputs of the whole step, in the batch's target order (row-major).
    let (mut old, mut reference) = (vec![], vec![]);
    for (b, &n) in lens.iter().enumerate() {
        old.extend(row(&t.t["old_logps"], b, n));
        reference.extend(row(&t.t["ref_logps"], b, n));
    }
    let all: Vec<&Sequence> = seqs.iter().collect();
    let batch = TokenBatch::new(&all, pad);
    let logits = policy
        .target_logits(&batch, Some(&adapter), Mode::Eval)
        .unwrap();
    let lp: Vec<f32> = pg::sampling_logprobs(&logits, &batch.targets, temperature)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = (0..seqs.len())
        .flat_map(|b| row(&t.t["logps"], b, lens[b]))
        .collect();
    check_logps(
        &format!("tiny {arch} pg: policy log-probs at T {temperature}"),
        &lp,
        &want,
        &mut fails,
    );
    let base = policy.target_logits(&batch, None, Mode::Eval).unwrap();
    let got_ref: Vec<f32> = pg::sampling_logprobs(&base, &batch.targets, temperature)
        .unwrap()
        .to_vec1()
        .unwrap();
    check_logps(
        &format!("tiny {arch} pg: reference (base) log-probs"),
        &got_ref,
        &reference,
        &mut fails,
    );

    let vars = adapter.named_vars();
    for (norm, key) in [
        (LossNorm::Token, "pg_token"),
        (LossNorm::Sequence, "pg_sequence"),
    ] {
        let settings = PgSettings {
            clip_low: r["epsilon"].as_f64().unwrap(),
            clip_high: r["epsilon"].as_f64().unwrap(),
            kl_beta: r["beta"].as_f64().unwrap(),
            temperature,
            norm,
            is_cap: None,
        };
        // The last: the trainer's path for siblings, their prompt computed once per pass.
        for (micro, shared) in [(3usize, false), (1, false), (3, true)] {
            let mut sums = vec![None; vars.len()];
            let (mut total, mut clipped) = (0f64, 0usize);
            let mut at = 0;
            for (c, chunk) in seqs.chunks(micro).enumerate() {
                let rows: Vec<usize> = (c * micro..c * micro + chunk.len()).collect();
                let refs: Vec<&Sequence> = chunk.iter().collect();
                let batch = TokenBatch::new(&refs, pad);
                let n = batch.num_targets();
                let train = Mode::Train { dropout_seed: None };
                let logits = if shared {
                    policy.shared_prompt_logits(&refs, pad, Some(&adapter), train)
                } else {
                    policy.target_logits(&batch, Some(&adapter), train)
                }
                .unwrap();
                let lp = pg::sampling_logprobs(&logits, &batch.targets, temperature).unwrap();
                let adv: Vec<f32> = batch
                    .target_rows
                    .iter()
                    .map(|&r| advantages[rows[r as usize]])
                    .collect();
                let weights = pg::step_weights(&batch, &rows, &lens, norm);
                let inputs = TokenInputs {
                    old: &old[at..at + n],
                    reference: Some(&reference[at..at + n]),
                    sampled: None,
                    advantages: &adv,
                    weights: &weights,
                };
                at += n;
                let (l, stats) = pg::micro_loss(&lp, &inputs, &settings).unwrap();
                total += l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                clipped += stats.clipped;
                accumulate(&mut sums, &vars, &l);
            }
            let what = format!(
                "tiny {arch} {key}, micro-batches of {micro}{}",
                if shared { ", the prompt shared" } else { "" }
            );
            close(
                &format!("{what}: loss"),
                total,
                r[key]["loss"].as_f64().unwrap(),
                &mut fails,
            );
            if clipped as u64 != r["clipped_tokens"].as_u64().unwrap() {
                fails.push(format!(
                    "{what}: {clipped} clipped tokens, the fixture {}",
                    r["clipped_tokens"]
                ));
            }
            fails.extend(compare_grads(&t, key, &vars, &into_grads(sums, &vars)));
        }
    }
    fails
}

#[test]
fn policy_gradient_loss_and_lora_gradients_match_trl_grpo() {
    let mut fails = vec![];
    for arch in ARCHS {
        fails.extend(on_device(&format!("tiny {arch} pg"), || {
            check_pg(&committed(), arch)
        }));
    }
    finish("policy-gradient loss against TRL's GRPO", fails);
}

#[test]
fn live_policy_gradient_reference_agreement() {
    let Some(python) = std::env::var_os("MALT_REFERENCE_PYTHON").filter(|p| !p.is_empty()) else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: MALT_REFERENCE_PYTHON is not set: the policy-gradient fixture \
             is not regenerated live (the committed one is checked by the other tests) !!!!!!!!\n"
        );
        return;
    };
    let fresh = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../scripts/reference_golden.py"))
        .arg("--out")
        .arg(fresh.path())
        .args(["--only", "tiny,pg"])
        .status()
        .expect("running scripts/reference_golden.py");
    assert!(st.success(), "scripts/reference_golden.py failed: {st}");
    let mut fails = vec![];
    for arch in ARCHS {
        fails.extend(on_device(&format!("live tiny {arch} pg"), || {
            check_pg(fresh.path(), arch)
        }));
    }
    finish("live policy-gradient loss against TRL's GRPO", fails);
}

/// `online::update` on the fixture's sibling group: after two epochs the completion with the
/// positive advantage is likelier and the most negative one less likely (per token, at the
/// sampling temperature), and the first epoch's ratio of 1 left nothing clipped.
#[test]
fn online_update_moves_log_probs_with_the_advantages() {
    use malt_train::online::{self, Rollout, UpdateSettings};
    use malt_train::optim::{AdamW, AdamWParams};
    let t = tiny(&committed(), "llama");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.dir.join("pg_reference.json")).unwrap())
            .unwrap();
    let seqs = fixture_sequences(&r["sequences"]);
    let advantages = f64s(&r["advantages"]);
    let rollouts: Vec<Rollout> = seqs
        .iter()
        .zip(&advantages)
        .enumerate()
        .map(|(i, (s, &a))| Rollout {
            seq: s.clone(),
            advantage: a as f32,
            sampled: None,
            id: format!("completion {i}"),
        })
        .collect();
    let policy = t.policy();
    let adapter = t.adapter();
    let pad = t.pad();
    let mean_logp = |i: usize| -> f64 {
        let batch = TokenBatch::new(&[&seqs[i]], pad);
        let logits = policy
            .target_logits(&batch, Some(&adapter), Mode::Eval)
            .unwrap();
        let lp: Vec<f32> = pg::sampling_logprobs(&logits, &batch.targets, 0.7)
            .unwrap()
            .to_vec1()
            .unwrap();
        lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64
    };
    let before: Vec<f64> = (0..seqs.len()).map(mean_logp).collect();
    let mut opt = AdamW::new(adapter.named_vars(), AdamWParams::default()).unwrap();
    let s = UpdateSettings {
        pg: PgSettings {
            temperature: 0.7,
            ..PgSettings::default()
        },
        epochs: 1,
        micro_batch: 2,
        lr: 1e-3,
        max_grad_norm: 1.0,
    };
    let first = online::update(&policy, &adapter, &mut opt, &rollouts, &s, pad).unwrap();
    assert_eq!((first.pg.clipped, first.optimizer_steps), (0, 1));
    assert!(
        (first.pg.ratio_sum - first.tokens as f64).abs() < 1e-3,
        "{first:?}"
    );
    let second = online::update(&policy, &adapter, &mut opt, &rollouts, &s, pad).unwrap();
    assert_eq!(opt.step_count(), 2);
    assert!(second.entropy > 0.0 && second.tokens == first.tokens);
    let after: Vec<f64> = (0..seqs.len()).map(mean_logp).collect();
    assert!(
        after[0] > before[0],
        "advantage +1: {before:?} -> {after:?}"
    );
    assert!(
        after[1] < before[1],
        "advantage -1.25: {before:?} -> {after:?}"
    );
}
