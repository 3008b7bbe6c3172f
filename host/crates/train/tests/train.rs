mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use common::{CharTok, TinyLm};
use malt_train::data::{self, join_truncate};
use malt_train::metrics::read_metrics;
use malt_train::optim::{self, AdamW, AdamWParams};
use malt_train::reference;
use malt_train::trainer::{self, evaluate_dpo, evaluate_sft};
use malt_train::{
    AgentPlan, ChatTokenizer, DpoLossKind, DpoSettings, Method, OptimSettings, Phase, PhaseSpec,
    PolicyModel, RunOptions, ScheduleKind, TrainError,
};

fn sft_settings() -> OptimSettings {
    OptimSettings {
        lr: 0.05,
        epochs: 6,
        micro_batch: 2,
        grad_accum: 2,
        max_seq_len: 16,
        warmup_ratio: 0.1,
        schedule: ScheduleKind::Cosine,
        weight_decay: 0.01,
        save_every: 5,
        seed: 7,
        eval_ratio: 0.2,
        ..OptimSettings::default()
    }
}

fn plan(method: Method) -> AgentPlan {
    AgentPlan {
        name: "refiner".into(),
        method,
        sft: sft_settings(),
        dpo: OptimSettings {
            lr: 0.05,
            epochs: 4,
            ..sft_settings()
        },
        dpo_loss: DpoSettings::default(),
    }
}

fn opts() -> RunOptions {
    RunOptions {
        base_model: "tiny".into(),
        ..RunOptions::default()
    }
}

fn read_adapter(dir: &Path) -> Vec<f32> {
    let m = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let mut keys: Vec<_> = m.keys().cloned().collect();
    keys.sort();
    keys.iter()
        .flat_map(|k| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn sft_items(path: &Path, msl: usize) -> Vec<data::SftItem> {
    let f = data::load_sft(path).unwrap();
    data::tokenize_sft(&CharTok, &f.records, msl).unwrap()
}

#[test]
fn sft_loss_falls_and_heldout_likelihood_rises() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    common::write_sft(
        &trainer::dataset_path(run, "refiner", Phase::Sft),
        48,
        1,
        None,
    );
    // Held-out positives: other prompts, same rule.
    let held = run.join("heldout.jsonl");
    common::write_sft(&held, 24, 99, None);
    let model = TinyLm::new(3);
    let reps = malt_train::train_agent(&model, &CharTok, run, &plan(Method::Sft), &opts()).unwrap();
    assert_eq!(reps.len(), 1);
    assert!(reps[0].completed);
    let (tr, ev) = read_metrics(&run.join("train/refiner/sft/metrics.jsonl")).unwrap();
    assert_eq!(tr.len() as u64, reps[0].total_steps);
    let first: f64 = tr[..3].iter().map(|m| m.loss).sum::<f64>() / 3.0;
    let last: f64 = tr[tr.len() - 3..].iter().map(|m| m.loss).sum::<f64>() / 3.0;
    assert!(last < 0.6 * first, "loss {first} -> {last}");
    assert!(!ev.is_empty() && ev.iter().all(|e| e.eval_loss.is_finite()));
    assert!(tr.iter().all(|m| m.tokens > 0 && m.grad_norm.is_finite()));
    assert!(run.join("train/refiner/sft/loss.svg").exists());

    let items = sft_items(&held, 16);
    let base = evaluate_sft(&model, None, &items, 4, common::EOS).unwrap();
    let ad = model
        .load_adapter(&run.join("adapters/refiner/sft"), "refiner")
        .unwrap();
    let trained = evaluate_sft(&model, Some(&ad), &items, 4, common::EOS).unwrap();
    assert!(trained < base - 0.3, "held-out NLL {base} -> {trained}");
}

#[test]
fn dpo_raises_margin_and_accuracy_and_caches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let ds = trainer::dataset_path(run, "refiner", Phase::Dpo);
    common::write_dpo(&ds, 40, 2);
    let model = TinyLm::new(3);
    let mut p = plan(Method::Dpo);
    p.dpo_loss.beta = 0.2;
    let reps = malt_train::train_agent(&model, &CharTok, run, &p, &opts()).unwrap();
    assert!(reps[0].completed);
    let ev = reps[0].eval.clone().unwrap();
    assert!(ev.accuracy.unwrap() >= 0.85, "{ev:?}");
    assert!(ev.reward_margin.unwrap() > 0.2, "{ev:?}");
    let (tr, _) = read_metrics(&run.join("train/refiner/dpo/metrics.jsonl")).unwrap();
    assert!(tr
        .iter()
        .all(|m| m.accuracy.is_some() && m.reward_margin.is_some()));
    assert!(tr.last().unwrap().loss < tr[0].loss);

    // Before training (policy == reference): zero margin, no pair strictly preferred.
    let f = data::load_dpo(&ds).unwrap();
    let items = data::tokenize_dpo(&CharTok, &f.records, 16).unwrap();
    let refs = reference::compute_ref_logprobs(&model, None, &items, 4, common::EOS).unwrap();
    let fresh = model.new_adapter("x", 1).unwrap();
    let before = evaluate_dpo(
        &model,
        Some(&fresh),
        &items,
        &refs,
        &p.dpo_loss,
        4,
        common::EOS,
    )
    .unwrap();
    assert!(
        before.reward_margin.abs() < 1e-6 && before.accuracy == 0.0,
        "{before:?}"
    );
    let ad = model
        .load_adapter(&run.join("adapters/refiner/dpo"), "r")
        .unwrap();
    let after = evaluate_dpo(
        &model,
        Some(&ad),
        &items,
        &refs,
        &p.dpo_loss,
        4,
        common::EOS,
    )
    .unwrap();
    assert!(
        after.reward_margin > 0.2 && after.accuracy > 0.85,
        "{after:?}"
    );

    // The reference cache sits beside the dataset, keyed by dataset + reference ("base") hash.
    let cache = reference::ref_cache_path(&ds, &f.sha256, "base", "tiny-char-v1", 16);
    assert!(cache.exists(), "{}", cache.display());
    assert!(cache.with_extension("json").exists());
}

#[test]
fn reference_logprobs_are_computed_once_then_cached() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    common::write_dpo(&trainer::dataset_path(run, "refiner", Phase::Dpo), 12, 2);
    let mut p = plan(Method::Dpo);
    p.dpo.eval_ratio = 0.0;
    p.dpo.micro_batch = 4;
    p.dpo.max_steps = 2;
    let model = TinyLm::new(3);
    malt_train::train_agent(&model, &CharTok, run, &p, &opts()).unwrap();
    assert_eq!(model.eval_calls.get(), 3); // 12 pairs / micro-batch 4, no eval split
                                           // A fresh (not resumed) run on the same dataset and reference reuses the cache.
    malt_train::train_agent(&model, &CharTok, run, &p, &opts()).unwrap();
    assert_eq!(model.eval_calls.get(), 3);
    // Another dataset content: another key, recomputed.
    common::write_dpo(&trainer::dataset_path(run, "refiner", Phase::Dpo), 12, 5);
    malt_train::train_agent(&model, &CharTok, run, &p, &opts()).unwrap();
    assert_eq!(model.eval_calls.get(), 6);
}

#[test]
fn ipo_and_label_smoothing_train() {
    for (loss, ls) in [(DpoLossKind::Ipo, 0.0), (DpoLossKind::Sigmoid, 0.1)] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        common::write_dpo(&trainer::dataset_path(run, "refiner", Phase::Dpo), 24, 2);
        let mut p = plan(Method::Dpo);
        p.dpo_loss = DpoSettings {
            beta: 0.5,
            label_smoothing: ls,
            loss,
            ..DpoSettings::default()
        };
        let reps = malt_train::train_agent(&TinyLm::new(3), &CharTok, run, &p, &opts()).unwrap();
        let ev = reps[0].eval.clone().unwrap();
        assert!(ev.reward_margin.unwrap() > 0.0, "{loss:?}: {ev:?}");
    }
}

fn run_resume_case(method: Method, phase: Phase) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for run in [a.path(), b.path()] {
        common::write_sft(
            &trainer::dataset_path(run, "refiner", Phase::Sft),
            30,
            1,
            None,
        );
        common::write_dpo(&trainer::dataset_path(run, "refiner", Phase::Dpo), 30, 2);
    }
    let mut p = plan(method);
    for o in [&mut p.sft, &mut p.dpo] {
        o.save_every = 3;
        o.max_steps = 10;
    }
    let model = TinyLm::new(3);
    malt_train::train_agent(&model, &CharTok, a.path(), &p, &opts()).unwrap();

    // "Kill" run b after 7 steps of the phase under test: checkpoint 6 is the newest.
    let mut o = opts();
    if phase == Phase::Dpo {
        // Finish SFT first, then kill DPO.
        let mut only_sft = p.clone();
        only_sft.method = Method::Sft;
        malt_train::train_agent(&model, &CharTok, b.path(), &only_sft, &o).unwrap();
    }
    o.stop_after_steps = Some(7);
    let spec = PhaseSpec::in_run(
        b.path(),
        &p,
        phase,
        (method == Method::SftThenDpo).then(|| b.path().join("adapters/refiner/sft")),
    );
    let rep = malt_train::train_phase(&model, &CharTok, &spec, &o).unwrap();
    assert!(!rep.completed && rep.steps == 7);
    assert!(!spec.adapter_out.exists());
    let (n, _) = malt_train::checkpoint::latest_checkpoint(&spec.out_dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    assert_eq!(n, 6);

    // Resume in a fresh model instance (a new process would have one).
    let model2 = TinyLm::new(3);
    let o2 = RunOptions {
        resume: true,
        ..opts()
    };
    let reps = malt_train::train_agent(&model2, &CharTok, b.path(), &p, &o2).unwrap();
    assert!(reps.iter().all(|r| r.completed));
    assert_eq!(reps.last().unwrap().resumed_from, Some(6));

    let name = phase.name();
    let (ta, ea) =
        read_metrics(&a.path().join(format!("train/refiner/{name}/metrics.jsonl"))).unwrap();
    let (tb, eb) =
        read_metrics(&b.path().join(format!("train/refiner/{name}/metrics.jsonl"))).unwrap();
    assert_eq!(ta.len(), 10);
    assert_eq!(ta.len(), tb.len());
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!(x.step, y.step);
        assert!(
            (x.loss - y.loss).abs() <= 1e-6,
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
        assert!((x.grad_norm - y.grad_norm).abs() <= 1e-6);
    }
    assert_eq!(ea.len(), eb.len());
    let wa = read_adapter(&a.path().join(format!("adapters/refiner/{name}")));
    let wb = read_adapter(&b.path().join(format!("adapters/refiner/{name}")));
    assert_eq!(wa.len(), wb.len());
    let maxdiff = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(maxdiff <= 1e-6, "adapter max diff {maxdiff}");
}

#[test]
fn sft_resume_matches_uninterrupted() {
    run_resume_case(Method::Sft, Phase::Sft);
}

#[test]
fn dpo_after_sft_resume_matches_uninterrupted() {
    run_resume_case(Method::SftThenDpo, Phase::Dpo);
}

#[test]
fn nan_in_data_stops_cleanly_keeping_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    // Poison the record that step 3 of epoch 0 draws, so earlier checkpoints exist.
    let mut p = plan(Method::Sft);
    p.sft.save_every = 1;
    p.sft.eval_ratio = 0.0;
    p.sft.micro_batch = 1;
    p.sft.grad_accum = 2;
    let n = 20;
    let perm = data::epoch_permutation(n, p.sft.seed, 0);
    let victim = perm[5]; // step 3 (0-based 2), micro-batch 1
    common::write_sft(
        &trainer::dataset_path(run, "refiner", Phase::Sft),
        n,
        1,
        Some(victim),
    );
    let err = malt_train::train_agent(&TinyLm::new(3), &CharTok, run, &p, &opts()).unwrap_err();
    let msg = err.to_string();
    match err {
        TrainError::NonFinite {
            step,
            micro,
            examples,
            last_checkpoint,
            ..
        } => {
            assert_eq!(step, 3);
            assert_eq!(micro, 1);
            assert_eq!(examples, vec![format!("ex{victim}")]);
            let ck = last_checkpoint.unwrap();
            assert!(ck.ends_with("step-00000002"), "{}", ck.display());
            let st = malt_train::checkpoint::read_state(&ck).unwrap();
            assert_eq!(st.step, 2);
            assert!(ck.join("adapter/adapter_model.safetensors").exists());
            assert!(ck.join("optimizer.safetensors").exists());
        }
        e => panic!("unexpected {e}"),
    }
    assert!(
        msg.contains("step 3") && msg.contains(&format!("ex{victim}")),
        "{msg}"
    );
    assert!(!run.join("adapters/refiner/sft").exists());
}

#[test]
fn grad_accumulation_equals_one_big_batch() {
    let mut weights = vec![];
    for (mb, ga) in [(4u32, 1u32), (1, 4), (2, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        common::write_sft(
            &trainer::dataset_path(run, "refiner", Phase::Sft),
            8,
            1,
            None,
        );
        let mut p = plan(Method::Sft);
        p.sft.micro_batch = mb;
        p.sft.grad_accum = ga;
        p.sft.max_steps = 2;
        p.sft.warmup_ratio = 0.0;
        p.sft.eval_ratio = 0.0;
        malt_train::train_agent(&TinyLm::new(3), &CharTok, run, &p, &opts()).unwrap();
        weights.push(read_adapter(&run.join("adapters/refiner/sft")));
    }
    for w in &weights[1..] {
        let d = w
            .iter()
            .zip(&weights[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "max diff {d}");
    }
}

#[test]
fn run_schedule_sft_then_dpo_uses_sft_adapter_as_reference() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    common::write_sft(
        &trainer::dataset_path(run, "refiner", Phase::Sft),
        16,
        1,
        None,
    );
    let ds = trainer::dataset_path(run, "refiner", Phase::Dpo);
    common::write_dpo(&ds, 16, 2);
    common::write_sft(
        &trainer::dataset_path(run, "generator", Phase::Sft),
        16,
        3,
        None,
    );
    let mut g = plan(Method::Sft);
    g.name = "generator".into();
    let mut r = plan(Method::SftThenDpo);
    for o in [&mut r.sft, &mut r.dpo, &mut g.sft] {
        o.max_steps = 3;
    }
    let model = TinyLm::new(3);
    let err = malt_train::run_schedule(
        &model,
        &CharTok,
        run,
        &[g.clone(), r.clone()],
        Some("nobody"),
        &opts(),
    );
    assert!(matches!(err, Err(TrainError::Settings(_))));
    let reps = malt_train::run_schedule(&model, &CharTok, run, &[g, r], None, &opts()).unwrap();
    let got: Vec<(String, Phase)> = reps.iter().map(|r| (r.agent.clone(), r.phase)).collect();
    assert_eq!(
        got,
        vec![
            ("generator".into(), Phase::Sft),
            ("refiner".into(), Phase::Sft),
            ("refiner".into(), Phase::Dpo)
        ]
    );
    assert_eq!(
        malt_train::final_adapter_dir(run, "refiner").unwrap(),
        run.join("adapters/refiner/dpo")
    );
    let sft = model
        .load_adapter(&run.join("adapters/refiner/sft"), "r")
        .unwrap();
    let h = trainer::adapter_hash(&model.trainable_vars(&sft)).unwrap();
    let f = data::load_dpo(&ds).unwrap();
    assert!(reference::ref_cache_path(&ds, &f.sha256, &h, "tiny-char-v1", 16).exists());
}

#[test]
fn adamw_matches_hand_computed_scalar() {
    let x = Var::new(&[1.0f32], &Device::Cpu).unwrap();
    let p = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vec![("x".into(), x.clone())], p).unwrap();
    let (mut xr, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
    for (t, (g, lr)) in [(0.5f64, 0.1f64), (-0.25, 0.05), (2.0, 0.1)]
        .into_iter()
        .enumerate()
    {
        opt.step(&[Tensor::new(&[g as f32], &Device::Cpu).unwrap()], lr)
            .unwrap();
        let t = (t + 1) as i32;
        xr *= 1.0 - lr * 0.1;
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        let mh = m / (1.0 - 0.9f64.powi(t));
        let vh = v / (1.0 - 0.999f64.powi(t));
        xr -= lr * mh / (vh.sqrt() + 1e-8);
        let got = x.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - xr).abs() < 1e-6, "step {t}: {got} vs {xr}");
    }
    assert_eq!(opt.step_count(), 3);
    // Save/restore round trip keeps the moments.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("o.safetensors");
    opt.save(&f).unwrap();
    let y = Var::new(
        x.as_tensor().to_vec1::<f32>().unwrap().as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let mut o2 = AdamW::new(vec![("x".into(), y.clone())], p).unwrap();
    o2.load(&f, 3).unwrap();
    let g = Tensor::new(&[0.3f32], &Device::Cpu).unwrap();
    opt.step(std::slice::from_ref(&g), 0.1).unwrap();
    o2.step(std::slice::from_ref(&g), 0.1).unwrap();
    assert_eq!(
        x.as_tensor().to_vec1::<f32>().unwrap(),
        y.as_tensor().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn schedules_match_hand_computed() {
    let (total, warm) = (10, optim::warmup_steps(10, 0.2));
    assert_eq!(warm, 2);
    assert_eq!(optim::warmup_steps(10, 0.15), 2); // ceil
    let lr = |k, s| optim::lr_at(k, 1.0, s, total, warm);
    for k in [
        ScheduleKind::Linear,
        ScheduleKind::Cosine,
        ScheduleKind::Constant,
    ] {
        assert_eq!(lr(k, 0), 0.0);
        assert!((lr(k, 1) - 0.5).abs() < 1e-12);
        assert!((lr(k, 2) - 1.0).abs() < 1e-12);
    }
    assert!((lr(ScheduleKind::Linear, 6) - 0.5).abs() < 1e-12);
    assert!((lr(ScheduleKind::Linear, 9) - 0.125).abs() < 1e-12);
    assert!((lr(ScheduleKind::Cosine, 6) - 0.5).abs() < 1e-12);
    assert!((lr(ScheduleKind::Cosine, 4) - 0.853_553_390_593_273_7).abs() < 1e-12);
    assert!((lr(ScheduleKind::Constant, 9) - 1.0).abs() < 1e-12);
    assert_eq!(optim::lr_at(ScheduleKind::Linear, 1.0, 0, 5, 0), 1.0);
}

#[test]
fn grad_clipping_by_global_norm() {
    let d = Device::Cpu;
    let mut g = vec![
        Tensor::new(&[3.0f32], &d).unwrap(),
        Tensor::new(&[[4.0f32]], &d).unwrap(),
    ];
    let n = optim::clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((n - 5.0).abs() < 1e-9);
    let a = g[0].to_vec1::<f32>().unwrap()[0];
    let b = g[1].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((a - 0.6).abs() < 1e-6 && (b - 0.8).abs() < 1e-6, "{a} {b}");
    assert!((optim::global_norm(&g).unwrap() - 1.0).abs() < 1e-6);
    // Below the limit (or disabled): untouched.
    let mut g = vec![Tensor::new(&[3.0f32, 4.0], &d).unwrap()];
    assert!((optim::clip_grad_norm(&mut g, 10.0).unwrap() - 5.0).abs() < 1e-9);
    assert_eq!(g[0].to_vec1::<f32>().unwrap(), vec![3.0, 4.0]);
    optim::clip_grad_norm(&mut g, 0.0).unwrap();
    assert_eq!(g[0].to_vec1::<f32>().unwrap(), vec![3.0, 4.0]);
}

#[test]
fn fused_logprob_matches_composed_value_and_gradient() {
    let d = Device::Cpu;
    let v: Vec<f32> = (0..5 * 7)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
        .collect();
    let targets = [0u32, 6, 3, 3, 1];
    let w = Var::from_vec(v, (5, 7), &d).unwrap();
    let coef = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, 1.5], &d).unwrap();
    let f = malt_train::loss::token_logprobs(w.as_tensor(), &targets).unwrap();
    let c = malt_train::loss::token_logprobs_composed(w.as_tensor(), &targets).unwrap();
    let (fv, cv) = (f.to_vec1::<f32>().unwrap(), c.to_vec1::<f32>().unwrap());
    for (a, b) in fv.iter().zip(&cv) {
        assert!((a - b).abs() < 1e-5);
    }
    let gf = (f * &coef).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (c * &coef).unwrap().sum_all().unwrap().backward().unwrap();
    let a = gf
        .get(w.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = gc
        .get(w.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn dpo_losses_match_hand_computed() {
    let d = Device::Cpu;
    let t = |x: f32| Tensor::new(&[x], &d).unwrap();
    let val = |x: &Tensor| x.to_vec1::<f32>().unwrap()[0] as f64;
    let ls = |x: f64| -(1.0 + (-x).exp()).ln();
    // h = (pc - pr) - (rc - rr) = (-1 - -3) - (-2 - -2.5) = 1.5
    let (pc, pr, rc, rr) = (t(-1.0), t(-3.0), t(-2.0), t(-2.5));
    let s = DpoSettings {
        beta: 0.2,
        label_smoothing: 0.0,
        loss: DpoLossKind::Sigmoid,
        ..DpoSettings::default()
    };
    let o = malt_train::loss::dpo_terms(&pc, &pr, &rc, &rr, &s).unwrap();
    assert!((val(&o.losses) + ls(0.3)).abs() < 1e-6);
    assert!((val(&o.chosen_rewards) - 0.2).abs() < 1e-6);
    assert!((val(&o.rejected_rewards) + 0.1).abs() < 1e-6);
    let s = DpoSettings {
        label_smoothing: 0.1,
        ..s
    };
    let o = malt_train::loss::dpo_terms(&pc, &pr, &rc, &rr, &s).unwrap();
    assert!((val(&o.losses) - (-0.9 * ls(0.3) - 0.1 * ls(-0.3))).abs() < 1e-6);
    let s = DpoSettings {
        beta: 0.2,
        label_smoothing: 0.0,
        loss: DpoLossKind::Ipo,
        ..DpoSettings::default()
    };
    let o = malt_train::loss::dpo_terms(&pc, &pr, &rc, &rr, &s).unwrap();
    assert!((val(&o.losses) - (1.5f64 - 2.5).powi(2)).abs() < 1e-6);
}

#[test]
fn truncation_keeps_completion_and_drops_prompt_left() {
    let s = join_truncate(&[1, 2, 3, 4, 5], &[7, 8, 0], 6);
    assert_eq!(s.ids, vec![3, 4, 5, 7, 8, 0]);
    assert_eq!(s.prompt_len, 3);
    let s = join_truncate(&[1, 2], &[7, 8, 0], 10);
    assert_eq!((s.ids.clone(), s.prompt_len), (vec![1, 2, 7, 8, 0], 2));
    // Completion longer than the window: keep one prompt token, cut the completion's right end.
    let s = join_truncate(&[1, 2, 3], &[7, 8, 9, 0], 3);
    assert_eq!((s.ids.clone(), s.prompt_len), (vec![3, 7, 8], 1));
    let b = malt_train::TokenBatch::new(&[&s], 0);
    assert_eq!(b.targets, vec![7, 8]);
    assert_eq!(b.positions, vec![0, 1]);
}

#[test]
fn split_and_shuffle_are_deterministic() {
    let (tr, ev) = data::split_indices(50, 0.2, 5);
    assert_eq!(ev.len(), 10);
    assert_eq!(tr.len(), 40);
    assert_eq!(data::split_indices(50, 0.2, 5), (tr.clone(), ev.clone()));
    assert_ne!(data::split_indices(50, 0.2, 6).1, ev);
    assert_eq!(data::split_indices(1, 0.5, 5).1.len(), 0);
    assert_eq!(
        data::epoch_permutation(30, 1, 2),
        data::epoch_permutation(30, 1, 2)
    );
    assert_ne!(
        data::epoch_permutation(30, 1, 2),
        data::epoch_permutation(30, 1, 3)
    );
}

#[test]
fn bad_dataset_line_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p: PathBuf = dir.path().join("sft.jsonl");
    std::fs::write(&p, "{\"prompt\":[],\"completion\":[{\"role\":\"assistant\",\"content\":\"a\"}]}\n{\"prompt\":[]}\n").unwrap();
    match data::load_sft(&p) {
        Err(TrainError::Dataset { line, msg, .. }) => {
            assert!(line == 2 && msg.contains("completion"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&p, "").unwrap();
    assert!(matches!(
        data::load_sft(&p),
        Err(TrainError::EmptyDataset { .. })
    ));
}

/// A finished phase is reused on resume only for the data it was trained on: after the
/// dataset changes, `complete.json` no longer matches and the stale run is not passed off as
/// done (its checkpoints are refused too).
#[test]
fn finished_phase_is_reused_only_for_the_same_data() {
    let run = tempfile::tempdir().unwrap();
    let ds = trainer::dataset_path(run.path(), "refiner", Phase::Sft);
    common::write_sft(&ds, 30, 1, None);
    let mut p = plan(Method::Sft);
    p.sft.max_steps = 4;
    let resume = RunOptions {
        resume: true,
        ..opts()
    };
    let model = TinyLm::new(3);
    let first = malt_train::train_agent(&model, &CharTok, run.path(), &p, &resume).unwrap();
    let again = malt_train::train_agent(&model, &CharTok, run.path(), &p, &resume).unwrap();
    assert_eq!(first, again, "same data: the stored report is returned");

    common::write_sft(&ds, 30, 2, None);
    let err = malt_train::train_agent(&model, &CharTok, run.path(), &p, &resume).unwrap_err();
    assert!(
        err.to_string().contains("differ from the checkpointed run"),
        "{err}"
    );
}

/// An output cut at the sampling length limit is trained on without an EOS after it (an EOS
/// would teach the model to stop mid-solution); whole outputs, sampled or re-encoded, end with
/// one.
#[test]
fn cut_outputs_get_no_eos() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sft.jsonl");
    let rec = |content: &str, extra: &str| {
        format!(
            "{{\"prompt\":[{{\"role\":\"user\",\"content\":\"ab\"}}],\"completion\":[{{\"role\":\"assistant\",\"content\":\"{content}\"}}]{extra}}}\n"
        )
    };
    let text = [
        rec("cde", ""),
        rec("cde", ",\"completion_truncated\":true"),
        rec(
            "cde",
            ",\"completion_ids\":[4,5,6],\"completion_truncated\":true",
        ),
        rec("cde", ",\"completion_ids\":[4,5,6]"),
    ]
    .concat();
    std::fs::write(&p, text).unwrap();
    let recs = data::load_sft(&p).unwrap().records;
    assert_eq!(
        recs.iter()
            .map(|r| r.completion_truncated)
            .collect::<Vec<_>>(),
        [false, true, true, false]
    );
    let items = data::tokenize_sft(&CharTok, &recs, 64).unwrap();
    let eos = CharTok.eos_id();
    let completion = |i: usize| items[i].seq.ids[items[i].seq.prompt_len..].to_vec();
    assert_eq!(completion(0), vec![4, 5, 6, eos]);
    assert_eq!(completion(1), vec![4, 5, 6]);
    assert_eq!(completion(2), vec![4, 5, 6]);
    assert_eq!(completion(3), vec![4, 5, 6, eos]);

    let p = dir.path().join("dpo.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\":[{\"role\":\"user\",\"content\":\"ab\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"cd\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"ef\"}],\"rejected_truncated\":true}\n",
    )
    .unwrap();
    let recs = data::load_dpo(&p).unwrap().records;
    let pair = &data::tokenize_dpo(&CharTok, &recs, 64).unwrap()[0];
    assert_eq!(pair.chosen.ids.last(), Some(&eos));
    assert_eq!(pair.rejected.ids.last(), Some(&7));
}
