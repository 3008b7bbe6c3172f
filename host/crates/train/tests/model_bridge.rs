//! The training loop on malt-model's decoder (tiny random Llama written in HF format).

mod common;

use candle_core::Device;
use malt_model::{LoraConfig, Model, Proj};
use malt_train::metrics::read_metrics;
use malt_train::trainer::{self, evaluate_sft};
use malt_train::{
    AgentPlan, DpoSettings, MaltPolicy, MaltTokenizer, Method, OptimSettings, Phase, PolicyModel,
    RunOptions, ScheduleKind,
};

fn settings() -> OptimSettings {
    OptimSettings {
        lr: 0.02,
        epochs: 3,
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

/// With dropout on: its masks are seeded per micro-batch, so resume must still be bit-exact.
fn lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: Proj::ALL.to_vec(),
    }
}

fn read_adapter(dir: &std::path::Path) -> Vec<f32> {
    let m = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let mut keys: Vec<_> = m.keys().cloned().collect();
    keys.sort();
    keys.iter()
        .flat_map(|k| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn malt_model_sft_then_dpo_learns_and_resumes_bit_exact() {
    let md = tempfile::tempdir().unwrap();
    common::hf::write_tiny_llama(md.path(), 11);
    let model = Model::load(md.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let policy = MaltPolicy::new(&model, lora());
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
    for r in &runs {
        common::hf::write_sft(
            &trainer::dataset_path(r.path(), "verifier", Phase::Sft),
            24,
            1,
        );
        common::hf::write_dpo(
            &trainer::dataset_path(r.path(), "verifier", Phase::Dpo),
            24,
            2,
        );
    }
    let a = runs[0].path();
    let reps = malt_train::train_agent(&policy, &tok, a, &plan, &opts).unwrap();
    assert_eq!(reps.len(), 2);

    // SFT: loss falls, held-out likelihood rises, every LoRA variable moved.
    let (tr, _) = read_metrics(&a.join("train/verifier/sft/metrics.jsonl")).unwrap();
    assert!(
        tr.last().unwrap().loss < tr[0].loss * 0.8,
        "{} -> {}",
        tr[0].loss,
        tr.last().unwrap().loss
    );
    let held = a.join("held.jsonl");
    common::hf::write_sft(&held, 12, 77);
    let f = malt_train::data::load_sft(&held).unwrap();
    let items = malt_train::data::tokenize_sft(&tok, &f.records, 64).unwrap();
    let sft = policy
        .load_adapter(&a.join("adapters/verifier/sft"), "v")
        .unwrap();
    let base = evaluate_sft(&policy, None, &items, 4, tok_eos(&tok)).unwrap();
    let trained = evaluate_sft(&policy, Some(&sft), &items, 4, tok_eos(&tok)).unwrap();
    assert!(trained < base, "held-out NLL {base} -> {trained}");
    for (name, v) in sft.named_vars() {
        if name.contains("lora_B") {
            let s = v
                .as_tensor()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s > 0.0, "{name} never received a gradient");
        }
    }
    // The saved adapter is PEFT.
    let cfg = std::fs::read_to_string(a.join("adapters/verifier/sft/adapter_config.json")).unwrap();
    assert!(cfg.contains("\"peft_type\": \"LORA\""));

    // DPO: margin and accuracy up on eval.
    let ev = reps[1].eval.clone().unwrap();
    assert!(ev.reward_margin.unwrap() > 0.0, "{ev:?}");

    // Kill + resume of the DPO phase matches the uninterrupted run.
    let b = runs[1].path();
    let mut only_sft = plan.clone();
    only_sft.method = Method::Sft;
    malt_train::train_agent(&policy, &tok, b, &only_sft, &opts).unwrap();
    let spec =
        malt_train::PhaseSpec::in_run(b, &plan, Phase::Dpo, Some(b.join("adapters/verifier/sft")));
    let killed = RunOptions {
        stop_after_steps: Some(4),
        ..opts.clone()
    };
    let rep = malt_train::train_phase(&policy, &tok, &spec, &killed).unwrap();
    assert!(!rep.completed);
    let resume = RunOptions {
        resume: true,
        ..opts.clone()
    };
    let reps_b = malt_train::train_agent(&policy, &tok, b, &plan, &resume).unwrap();
    assert_eq!(reps_b[1].resumed_from, Some(3));
    let (ta, _) = read_metrics(&a.join("train/verifier/dpo/metrics.jsonl")).unwrap();
    let (tb, _) = read_metrics(&b.join("train/verifier/dpo/metrics.jsonl")).unwrap();
    assert_eq!(ta.len(), tb.len());
    for (x, y) in ta.iter().zip(&tb) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-6,
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
    let (wa, wb) = (
        read_adapter(&a.join("adapters/verifier/dpo")),
        read_adapter(&b.join("adapters/verifier/dpo")),
    );
    let d = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-6, "adapter diff {d}");
}

/// DPO trains without LoRA dropout unless `lora_dropout` asks for it (its reference pass has
/// none, as in TRL): by default the adapter after DPO is the same whatever the dropout rate,
/// and with `lora_dropout` it is not.
#[test]
fn dpo_trains_without_lora_dropout_by_default() {
    let md = tempfile::tempdir().unwrap();
    common::hf::write_tiny_llama(md.path(), 11);
    let model = Model::load(md.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let tok = MaltTokenizer::new(&model).unwrap();
    let opts = RunOptions {
        base_model: "tiny-llama".into(),
        ..RunOptions::default()
    };
    let dpo_adapter = |dropout: f32, lora_dropout: bool| {
        let policy = MaltPolicy::new(&model, LoraConfig { dropout, ..lora() });
        let run = tempfile::tempdir().unwrap();
        common::hf::write_dpo(
            &trainer::dataset_path(run.path(), "verifier", Phase::Dpo),
            12,
            2,
        );
        let plan = AgentPlan {
            name: "verifier".into(),
            method: Method::Dpo,
            sft: settings(),
            dpo: OptimSettings {
                lr: 0.01,
                epochs: 1,
                ..settings()
            },
            dpo_loss: DpoSettings {
                beta: 0.2,
                lora_dropout,
                ..DpoSettings::default()
            },
        };
        malt_train::train_agent(&policy, &tok, run.path(), &plan, &opts).unwrap();
        read_adapter(&run.path().join("adapters/verifier/dpo"))
    };
    let off = dpo_adapter(0.0, false);
    assert_eq!(dpo_adapter(0.3, false), off);
    assert_ne!(dpo_adapter(0.3, true), off);
}

fn tok_eos(t: &MaltTokenizer) -> u32 {
    use malt_train::ChatTokenizer;
    t.eos_id()
}

/// SmolLM2-135M end to end (ignored: ~1 min): real chat template, tokenizer and EOS, 2 SFT steps
/// and 1 DPO step with reference log-probs, adapters in PEFT format.
#[test]
#[ignore]
fn smollm2_sft_then_dpo_smoke() {
    use malt_train::ChatTokenizer;
    let model = Model::load("smollm2-135m-instruct", &Device::Cpu).unwrap();
    let tok = MaltTokenizer::new(&model).unwrap();
    assert_eq!(
        model.tokenizer.token_to_id("<|im_end|>"),
        Some(tok.eos_id())
    );
    let policy = MaltPolicy::new(
        &model,
        malt_train::lora_config(8, 16.0, 0.0, &["all-linear".into()]).unwrap(),
    );
    let run = tempfile::tempdir().unwrap();
    let m = |r: &str, c: &str| serde_json::json!([{"role": r, "content": c}]);
    let q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";
    let sft = (0..2)
        .map(|i| format!("{}\n", serde_json::json!({"prompt": m("user", q), "completion": m("assistant", "48 / 2 = 24 in May, 48 + 24 = 72.\nFinal Answer: 72"), "meta": {"id": i}})))
        .collect::<String>();
    let dpo = format!(
        "{}\n",
        serde_json::json!({"prompt": m("user", q), "chosen": m("assistant", "48 + 24 = 72.\nFinal Answer: 72"), "rejected": m("assistant", "48 + 48 = 96.\nFinal Answer: 96"), "meta": {"id": 0}})
    );
    for (ph, text) in [(Phase::Sft, sft), (Phase::Dpo, dpo)] {
        let p = trainer::dataset_path(run.path(), "refiner", ph);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let o = OptimSettings {
        lr: 1e-3,
        max_steps: 2,
        micro_batch: 1,
        grad_accum: 1,
        max_seq_len: 256,
        eval_ratio: 0.0,
        warmup_ratio: 0.0,
        ..OptimSettings::default()
    };
    let plan = AgentPlan {
        name: "refiner".into(),
        method: Method::SftThenDpo,
        sft: o.clone(),
        dpo: OptimSettings { max_steps: 1, ..o },
        dpo_loss: DpoSettings::default(),
    };
    let opts = RunOptions {
        progress: true,
        ..RunOptions::default()
    };
    let reps = malt_train::train_agent(&policy, &tok, run.path(), &plan, &opts).unwrap();
    println!("{}", serde_json::to_string_pretty(&reps).unwrap());
    let (tr, _) = read_metrics(&run.path().join("train/refiner/sft/metrics.jsonl")).unwrap();
    assert!(tr[1].loss < tr[0].loss, "{tr:?}");
    let ad = policy
        .load_adapter(&run.path().join("adapters/refiner/dpo"), "r")
        .unwrap();
    assert_eq!(ad.named_vars().len(), 30 * 7 * 2);
}
