//! Agreement of malt's LoRA training with PEFT + TRL (issue 26, item 4), on the tiny random
//! Llama and Qwen2 of `tests/fixtures/reference/` (written by `scripts/reference_golden.py`,
//! committed, so CI needs no torch):
//!
//! - one SFT step's loss and the gradient of every lora_A / lora_B on a batch of two sequences
//!   of different lengths (loss on completion tokens only), from PEFT's adapter with B != 0:
//!   the loss is the mean over all completion tokens of the batch, TRL's normalisation
//!   (`num_items_in_batch`); the script checked its numbers against TRL's SFTTrainer. malt's
//!   gradients are computed with one micro-batch of two and with two micro-batches of one,
//!   each loss divided by the step's token count as `trainer/step.rs` does;
//! - the DPO sigmoid loss (beta 0.1, sequence log-prob = sum over completion tokens) and its
//!   gradients, with the reference = the base model (a DPO phase without an initial adapter,
//!   TRL with a new PEFT adapter) and = the initial adapter (DPO after SFT, TRL with a PEFT
//!   model, which it copies as "ref"), checked by the script against TRL's DPOTrainer;
//! - the trainer's real step (`train_phase`, micro-batch 1, gradient accumulation 2): its
//!   logged loss and pre-clip gradient norm for the same SFT and DPO data;
//! - with MALT_REFERENCE_WRITE_ADAPTER=1 the adapter that SFT step writes (`save_peft`) is
//!   copied to `tests/fixtures/reference/tiny_*/malt_sft_adapter/`; the script's
//!   `malt_adapter` group computes PEFT's logits for it, which `malt-model`'s
//!   `tests/reference.rs` compares with malt's.
//!
//! Tolerances: losses within 1e-5 relative; each gradient tensor within 1e-4 of its largest
//! entry. f32 forward and backward passes in candle and in torch sum in different orders: the
//! script's own formula and TRL's trainers agree to ~1e-6 relative, candle and torch to
//! ~2e-6 (measured here, printed by the tests), so 1e-4 leaves fifty-fold room, while a wrong
//! normalisation (per-sequence instead of per-token means: the two completions have 8 and 31
//! tokens; the SFT test checks that this moves some gradient by more than 100 x the
//! tolerance), a dropped or doubled term, or a wrong LoRA scale is off by percents or more.
//!
//! With MALT_REFERENCE_PYTHON (a Python with torch, transformers, peft, trl) one test runs the
//! script's `tiny` group into a temporary folder and repeats every check against it.
//!
//! MALT_REFERENCE_DEVICE (default `cpu`; `cuda:0` from `scripts/gpu-check` on a GPU machine)
//! is the device every check here runs on, MALT_REFERENCE_FIXTURES the fixture folder, and
//! each check prints a `check [DEVICE] ...` line with its largest difference: see
//! `malt-model`'s `tests/reference_env/mod.rs`, which this file includes. The tolerances above
//! are f32's on every device (no TF32, checked there).

#[path = "../../model/tests/reference_env/mod.rs"]
mod reference_env;
mod tiny_fixture;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Tensor, Var};
use malt_train::data::{self, DpoItem};
use malt_train::{
    loss, reference, trainer, DpoSettings, MaltTokenizer, Mode, OptimSettings, Phase, PhaseSpec,
    PolicyModel, RunOptions, ScheduleKind, Sequence, TokenBatch,
};
use reference_env::{figure, on_device, to_cpu};
use serde_json::Value;
use tiny_fixture::*;

fn check_sft(fixtures: &Path, arch: &'static str) -> Vec<String> {
    let t = tiny(fixtures, arch);
    let sft = &t.r["sft"];
    let want = fixture_sequences(&sft["sequences"]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sft.jsonl");
    write_jsonl(&path, &sft["records"]);
    let tok = MaltTokenizer::new(&t.model).unwrap();
    let items = data::tokenize_sft(&tok, &data::load_sft(&path).unwrap().records, 1024).unwrap();
    let got: Vec<&Sequence> = items.iter().map(|i| &i.seq).collect();
    let mut fails = check_tokenisation(&t, "sft.sequences", &got, &want);

    let policy = t.policy();
    let adapter = t.adapter();
    let vars = adapter.named_vars();
    let pad = t.pad();
    // The step's normaliser (trainer/step.rs `loss_denominator`): all completion tokens of the
    // step, whatever the micro-batches.
    let denom: usize = want.iter().map(|s| s.ids.len() - s.prompt_len.max(1)).sum();
    assert_eq!(
        denom as u64,
        sft["tokens"].as_u64().unwrap(),
        "completion tokens"
    );
    for micro in [2, 1] {
        let mut sums = vec![None; vars.len()];
        let mut total = 0f64;
        for chunk in want.chunks(micro) {
            let refs: Vec<&Sequence> = chunk.iter().collect();
            let batch = TokenBatch::new(&refs, pad);
            let logits = policy
                .target_logits(
                    &batch,
                    Some(&adapter),
                    Mode::Train {
                        dropout_seed: Some(0),
                    },
                )
                .unwrap();
            let lp = loss::token_logprobs(&logits, &batch.targets).unwrap();
            let l = (lp.sum_all().unwrap().neg().unwrap() / denom as f64).unwrap();
            total += l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            accumulate(&mut sums, &vars, &l);
        }
        let what = format!("tiny {arch} sft, micro-batches of {micro}");
        close(
            &format!("{what}: loss"),
            total,
            sft["loss"].as_f64().unwrap(),
            &mut fails,
        );
        fails.extend(compare_grads(&t, "sft", &vars, &into_grads(sums, &vars)));
    }
    // The test tells normalisations apart: the mean of per-sequence means (8 and 31 completion
    // tokens) moves the gradients by far more than the tolerance.
    let mut sums = vec![None; vars.len()];
    for s in &want {
        let batch = TokenBatch::new(&[s], pad);
        let logits = policy
            .target_logits(
                &batch,
                Some(&adapter),
                Mode::Train {
                    dropout_seed: Some(0),
                },
            )
            .unwrap();
        let lp = loss::token_logprobs(&logits, &batch.targets).unwrap();
        let per_seq = (batch.num_targets() * want.len()) as f64;
        accumulate(
            &mut sums,
            &vars,
            &(lp.sum_all().unwrap().neg().unwrap() / per_seq).unwrap(),
        );
    }
    let other = into_grads(sums, &vars);
    let apart = vars.iter().zip(&other).any(|((name, _), g)| {
        let w = &t.t[&format!("sft.{name}")];
        max_abs(&(to_cpu(g) - w).unwrap()) > 100.0 * GRAD_TOL * max_abs(w)
    });
    if !apart {
        fails.push(format!(
            "tiny {arch} sft: per-sequence means give gradients within 100 x the tolerance of \
             the token mean's: the fixture's batch does not test the normalisation"
        ));
    }
    // The held-out SFT loss (no graph, the inference path) is the same token mean.
    let items: Vec<data::SftItem> = items;
    let eval = trainer::evaluate_sft(&policy, Some(&adapter), &items, 1, pad).unwrap();
    close(
        &format!("tiny {arch} evaluate_sft"),
        eval,
        sft["loss"].as_f64().unwrap(),
        &mut fails,
    );
    fails
}

fn dpo_items(t: &Tiny, tmp: &Path) -> (Vec<DpoItem>, Vec<String>) {
    let path = tmp.join("dpo.jsonl");
    write_jsonl(&path, &Value::Array(dpo_records(&t.r)));
    let tok = MaltTokenizer::new(&t.model).unwrap();
    let items = data::tokenize_dpo(&tok, &data::load_dpo(&path).unwrap().records, 1024).unwrap();
    let d = &t.r["dpo_sequences"];
    let mut fails = vec![];
    let chosen: Vec<&Sequence> = items.iter().map(|i| &i.chosen).collect();
    let rejected: Vec<&Sequence> = items.iter().map(|i| &i.rejected).collect();
    fails.extend(check_tokenisation(
        t,
        "dpo_sequences.chosen",
        &chosen,
        &fixture_sequences(&d["chosen"]),
    ));
    fails.extend(check_tokenisation(
        t,
        "dpo_sequences.rejected",
        &rejected,
        &fixture_sequences(&d["rejected"]),
    ));
    (items, fails)
}

fn dpo_records(r: &Value) -> Vec<Value> {
    r["dpo_records"].as_array().expect("dpo_records").clone()
}

/// One DPO loss and its gradients, `key` = `dpo_ref_base` or `dpo_ref_init`.
fn check_dpo(fixtures: &Path, arch: &'static str, key: &str) -> Vec<String> {
    let t = tiny(fixtures, arch);
    let tmp = tempfile::tempdir().unwrap();
    let (items, mut fails) = dpo_items(&t, tmp.path());
    let e = &t.r[key];
    let policy = t.policy();
    let adapter = t.adapter();
    let pad = t.pad();
    let settings = DpoSettings {
        beta: e["beta"].as_f64().unwrap(),
        ..DpoSettings::default()
    };
    // The reference log-probs as the trainer computes them (no graph, cached per dataset).
    let ref_adapter = (key == "dpo_ref_init").then_some(&adapter);
    let refs = reference::compute_ref_logprobs(&policy, ref_adapter, &items, 2, pad).unwrap();
    for (name, got, want) in [
        (
            "ref_chosen_logps",
            &refs.chosen,
            f64s(&e["ref_chosen_logps"]),
        ),
        (
            "ref_rejected_logps",
            &refs.rejected,
            f64s(&e["ref_rejected_logps"]),
        ),
    ] {
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            close(
                &format!("tiny {arch} {key}.{name}[{i}]"),
                *g as f64,
                *w,
                &mut fails,
            );
        }
    }
    // The policy's forward and loss as `dpo_forward` + `dpo_chunk_loss` compute them: chosen
    // and rejected in one batch, per-row sums, the sigmoid loss, the mean over pairs.
    let b = items.len();
    let seqs: Vec<&Sequence> = items
        .iter()
        .map(|i| &i.chosen)
        .chain(items.iter().map(|i| &i.rejected))
        .collect();
    let batch = TokenBatch::new(&seqs, pad);
    let logits = policy
        .target_logits(
            &batch,
            Some(&adapter),
            Mode::Train {
                dropout_seed: Some(0),
            },
        )
        .unwrap();
    let lp = loss::token_logprobs(&logits, &batch.targets).unwrap();
    let sums = loss::sequence_sums(&batch, &lp).unwrap();
    let pol: Vec<f32> = sums.to_vec1().unwrap();
    for (i, w) in f64s(&e["policy_chosen_logps"]).iter().enumerate() {
        close(
            &format!("tiny {arch} {key}.policy_chosen_logps[{i}]"),
            pol[i] as f64,
            *w,
            &mut fails,
        );
    }
    for (i, w) in f64s(&e["policy_rejected_logps"]).iter().enumerate() {
        close(
            &format!("tiny {arch} {key}.policy_rejected_logps[{i}]"),
            pol[b + i] as f64,
            *w,
            &mut fails,
        );
    }
    let dev = t.model.device();
    let terms = loss::dpo_terms(
        &sums.narrow(0, 0, b).unwrap(),
        &sums.narrow(0, b, b).unwrap(),
        &Tensor::from_vec(refs.chosen.clone(), b, dev).unwrap(),
        &Tensor::from_vec(refs.rejected.clone(), b, dev).unwrap(),
        &settings,
    )
    .unwrap();
    let l = (terms.losses.sum_all().unwrap() / b as f64).unwrap();
    let want_loss = e["loss"].as_f64().unwrap();
    close(
        &format!("tiny {arch} {key}: loss"),
        l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(),
        want_loss,
        &mut fails,
    );
    let vars = adapter.named_vars();
    let mut acc = vec![None; vars.len()];
    accumulate(&mut acc, &vars, &l);
    fails.extend(compare_grads(&t, key, &vars, &into_grads(acc, &vars)));
    // The held-out DPO evaluation runs the trainer's own `dpo_chunk_loss`.
    let eval =
        trainer::evaluate_dpo(&policy, Some(&adapter), &items, &refs, &settings, 2, pad).unwrap();
    close(
        &format!("tiny {arch} {key}: evaluate_dpo loss"),
        eval.loss,
        want_loss,
        &mut fails,
    );
    fails
}

/// One optimiser step of `train_phase` from the fixture's initial adapter on the fixture's
/// records (micro-batch 1, gradient accumulation 2, no clipping): its logged loss and
/// pre-clip gradient norm. Returns the failures and the adapter folder it wrote.
fn trainer_step(
    fixtures: &Path,
    arch: &'static str,
    phase: Phase,
    tmp: &Path,
) -> (Vec<String>, PathBuf) {
    let t = tiny(fixtures, arch);
    let dataset = tmp.join(format!("{}.jsonl", phase.name()));
    let (records, key) = match phase {
        Phase::Sft => (t.r["sft"]["records"].clone(), "sft"),
        Phase::Dpo => (Value::Array(dpo_records(&t.r)), "dpo_ref_init"),
    };
    write_jsonl(&dataset, &records);
    let spec = PhaseSpec {
        agent: "reference".into(),
        phase,
        dataset,
        out_dir: tmp.join("train"),
        adapter_out: tmp.join("adapter"),
        init_adapter: Some(t.dir.join("adapter_init")),
        optim: OptimSettings {
            lr: 1e-2,
            epochs: 1,
            max_steps: 1,
            micro_batch: 1,
            grad_accum: 2,
            max_seq_len: 1024,
            warmup_ratio: 0.0,
            schedule: ScheduleKind::Constant,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            save_every: 0,
            seed: 0,
            eval_ratio: 0.0,
            eval_every: 0,
        },
        dpo: DpoSettings::default(),
    };
    let opts = RunOptions {
        base_model: format!("tests/fixtures/reference/tiny_{arch}"),
        ..RunOptions::default()
    };
    let policy = t.policy();
    let tok = MaltTokenizer::new(&t.model).unwrap();
    let report = malt_train::train_phase(&policy, &tok, &spec, &opts).unwrap();
    assert!(report.completed && report.steps == 1, "{report:?}");
    let text = std::fs::read_to_string(spec.out_dir.join("metrics.jsonl")).unwrap();
    let step: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "train")
        .expect("a train record");
    let e = &t.r[key];
    let mut fails = vec![];
    let what = format!("tiny {arch} train_phase {} step 1", phase.name());
    close(
        &format!("{what}: loss"),
        step["loss"].as_f64().unwrap(),
        e["loss"].as_f64().unwrap(),
        &mut fails,
    );
    // The norm of all gradients; its tolerance follows the per-tensor one.
    let (g, w) = (
        step["grad_norm"].as_f64().unwrap(),
        e["grad_norm"].as_f64().unwrap(),
    );
    figure(
        t.model.device(),
        &format!("{what}: pre-clip gradient norm (malt {g:.7}, reference {w:.7})"),
        "|malt - reference| / reference",
        (g - w).abs() / w,
        GRAD_TOL as f64,
    );
    if (g - w).abs() > GRAD_TOL as f64 * w {
        fails.push(format!(
            "{what}: pre-clip gradient norm {g}, reference {w} (|diff| {:.2e})",
            (g - w).abs()
        ));
    }
    (fails, spec.adapter_out)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn sft_loss_and_lora_gradients_match_peft() {
    let mut fails = vec![];
    for arch in ARCHS {
        fails.extend(on_device(&format!("tiny {arch} sft"), || {
            check_sft(&committed(), arch)
        }));
    }
    finish("SFT against PEFT", fails);
}

#[test]
fn dpo_loss_and_lora_gradients_match_trl_with_base_reference() {
    let mut fails = vec![];
    for arch in ARCHS {
        fails.extend(on_device(&format!("tiny {arch} dpo_ref_base"), || {
            check_dpo(&committed(), arch, "dpo_ref_base")
        }));
    }
    finish("DPO (reference = base) against TRL's formula", fails);
}

#[test]
fn dpo_loss_and_lora_gradients_match_trl_with_adapter_reference() {
    let mut fails = vec![];
    for arch in ARCHS {
        fails.extend(on_device(&format!("tiny {arch} dpo_ref_init"), || {
            check_dpo(&committed(), arch, "dpo_ref_init")
        }));
    }
    finish(
        "DPO (reference = initial adapter) against TRL's formula",
        fails,
    );
}

/// The trainer's own step; with MALT_REFERENCE_WRITE_ADAPTER set, the SFT adapter it writes
/// becomes the fixture's `malt_sft_adapter/` (then run the script's `malt_adapter` group).
#[test]
fn trainer_step_matches_reference_and_writes_the_exported_adapter() {
    let write = std::env::var_os("MALT_REFERENCE_WRITE_ADAPTER").is_some();
    let mut fails = vec![];
    for arch in ARCHS {
        for phase in [Phase::Sft, Phase::Dpo] {
            let tmp = tempfile::tempdir().unwrap();
            let mut adapter = None;
            let what = format!("tiny {arch} train_phase {}", phase.name());
            fails.extend(on_device(&what, || {
                let (f, a) = trainer_step(&committed(), arch, phase, tmp.path());
                adapter = Some(a);
                f
            }));
            let Some(adapter) = adapter else { continue };
            if write && phase == Phase::Sft {
                let dest = committed().join(format!("tiny_{arch}/malt_sft_adapter"));
                let _ = std::fs::remove_dir_all(&dest);
                std::fs::create_dir_all(&dest).unwrap();
                for f in ["adapter_config.json", "adapter_model.safetensors"] {
                    std::fs::copy(adapter.join(f), dest.join(f)).unwrap();
                }
                eprintln!(
                    "wrote {}: now run `scripts/reference_golden.py --only malt_adapter`",
                    dest.display()
                );
            }
        }
    }
    finish("the trainer's step", fails);
}

#[test]
fn live_training_reference_agreement() {
    let Some(python) = std::env::var_os("MALT_REFERENCE_PYTHON").filter(|p| !p.is_empty()) else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: MALT_REFERENCE_PYTHON is not set: the training fixtures are not \
             regenerated live (the committed ones are checked by the other tests) !!!!!!!!\n"
        );
        return;
    };
    let fresh = tempfile::tempdir().unwrap();
    let st = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../scripts/reference_golden.py"))
        .arg("--out")
        .arg(fresh.path())
        .args(["--only", "tiny"])
        .status()
        .expect("running scripts/reference_golden.py");
    assert!(st.success(), "scripts/reference_golden.py failed: {st}");
    let mut fails = vec![];
    for arch in ARCHS {
        fails.extend(check_sft(fresh.path(), arch));
        fails.extend(check_dpo(fresh.path(), arch, "dpo_ref_base"));
        fails.extend(check_dpo(fresh.path(), arch, "dpo_ref_init"));
        for phase in [Phase::Sft, Phase::Dpo] {
            let tmp = tempfile::tempdir().unwrap();
            fails.extend(trainer_step(fresh.path(), arch, phase, tmp.path()).0);
        }
    }
    finish("live training reference agreement", fails);
}

/// The DPO loss's `log_sigmoid` has the gradient `sigmoid(-x)` everywhere, also at exactly 0,
/// where DPO's first step puts every pair whose policy still equals its reference.
#[test]
fn log_sigmoid_gradient_is_sigmoid_of_minus_x_also_at_zero() {
    let xs = [-3.0f32, -1e-6, 0.0, 1e-6, 2.0];
    let v = Var::from_tensor(&Tensor::new(&xs, &reference_env::device()).unwrap()).unwrap();
    let y = loss::log_sigmoid(v.as_tensor()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let g = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    let y = y.to_vec1::<f32>().unwrap();
    let worst = xs
        .iter()
        .zip(&g)
        .zip(&y)
        .map(|((&x, &gy), &yy)| {
            let want = -(1.0 + (-x).exp()).ln();
            (gy - 1.0 / (1.0 + x.exp())).abs().max((yy - want).abs())
        })
        .fold(0f32, f32::max);
    figure(
        &reference_env::device(),
        "log_sigmoid and its gradient at -3, -1e-6, 0, 1e-6, 2",
        "max |malt - formula|",
        worst as f64,
        1e-6,
    );
    for ((&x, &gy), &yy) in xs.iter().zip(&g).zip(&y) {
        let s = 1.0 / (1.0 + x.exp()); // sigmoid(-x)
        assert!(
            (gy - s).abs() < 1e-6,
            "d/dx log sigmoid({x}) = {gy}, expected {s}"
        );
        let want = -(1.0 + (-x).exp()).ln();
        assert!(
            (yy - want).abs() < 1e-6,
            "log sigmoid({x}) = {yy}, expected {want}"
        );
    }
}
