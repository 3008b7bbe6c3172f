//! End to end: `malt run` on a tiny random model, a tiny generated dataset and the `parity`
//! fixture plugin (reward 1 when the output's hash is even, so noise yields positives and
//! negatives at every agent and every training phase has data).
//!
//! - A: one uninterrupted run; B: killed (SIGKILL) during generation and again during training,
//!   then resumed to completion. Every tree is stored once and B's report equals A's.
//! - report.json: every system, per-turn accuracy, flips, per-seed values, and figures that
//!   agree with each other and with the logged attempts.
//! - A second `malt run` skips every stage; an edited theta re-runs credit, train and eval
//!   but keeps the trees.
//! - Hot reload: a plugin option edited while a run is going applies before evaluation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use malt_eval::{AttemptRecord, Outcome, Report};
use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};
use serde_json::Value;

const MALT: &str = env!("CARGO_BIN_EXE_malt");

fn tiny_model(dir: &Path) {
    let cfg = ModelConfig {
        max_position_embeddings: 512,
        eos_token_ids: vec![1],
        ..ModelConfig::llama(256, 32, 64, 2, 4, 2)
    };
    let mut m = Model::random(cfg, &Device::Cpu).expect("random model");
    // Training appends an end-of-turn token: give the synthetic vocabulary one.
    m.tokenizer.eos_token = Some("t1".into());
    m.export_merged(dir, None).expect("export tiny model");
}

/// The config; `[run] name` is fixed so that every variant writes `runs/pipeline` under the
/// working directory, and the config text (hence the manifest) is the same for A and B.
fn config(model: &Path, plugin: &Path, theta: f64, target: &str) -> String {
    format!(
        r#"[run]
name = "pipeline"
seed = 3

[model]
source = "{model}"

[dataset]
plugin = "parity"
generate = {{ seed = 1, count = 40 }}
train = 8
test = 8

[plugins.parity]
path = "{plugin}"
options = {{ target = "{target}" }}

[[agents]]
name = "generator"
branches = 3
max_new_tokens = 24
temperature = 1.0

[[agents]]
name = "verifier"
branches = 3
max_new_tokens = 24
temperature = 1.0

[[agents]]
name = "refiner"
branches = 3
max_new_tokens = 24
temperature = 1.0

[credit]
theta = {theta}

[train.lora]
rank = 4
alpha = 8
dropout = 0.0

[train.sft]
max_steps = 12
save_every = 1
grad_accum = 1
max_seq_len = 96

[train.dpo]
max_steps = 12
save_every = 1
grad_accum = 1
max_seq_len = 96

[eval]
questions = 4
seeds = [0, 1]
majority_k = 3
"#,
        model = model.display(),
        plugin = plugin.display(),
    )
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    plugin: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("model");
    tiny_model(&model);
    Fixture {
        _tmp: tmp,
        root,
        model,
        plugin: common::fixture("parity"),
    }
}

impl Fixture {
    /// Writes a config into its own directory (the hot reload watches the config's directory).
    fn write_config(&self, name: &str, theta: f64, target: &str) -> PathBuf {
        let dir = self.root.join(format!("cfg-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, config(&self.model, &self.plugin, theta, target)).unwrap();
        path
    }

    /// Writes `text` as a config into its own directory.
    fn write_text(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.root.join(format!("cfg-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn workdir(&self, name: &str) -> PathBuf {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

fn spawn(config: &Path, cwd: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(MALT)
        .args(["--log", "info", "run"])
        .arg(config)
        .current_dir(cwd)
        .env("MALT_CACHE", common::repo().join("target/malt-cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn malt")
}

/// Runs `malt run` to completion; returns its log (stderr).
fn run_to_end(config: &Path, cwd: &Path, log: &Path) -> String {
    let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let status = spawn(config, cwd, log).wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    let new = text[start..].to_string();
    assert!(status.success(), "malt run failed:\n{new}");
    new
}

/// Polls until `ready` holds, then SIGKILLs the child. Panics if the child ends first.
fn kill_when(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ready() {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("malt run ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(agents) = std::fs::read_dir(run.join("train")) else {
        return out;
    };
    for agent in agents.flatten() {
        for phase in std::fs::read_dir(agent.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let ck = phase.path().join("checkpoints");
            for step in std::fs::read_dir(&ck).into_iter().flatten().flatten() {
                if step.file_name().to_string_lossy().starts_with("step-") {
                    out.push(step.path());
                }
            }
        }
    }
    out
}

fn question_ids(run: &Path) -> Vec<String> {
    let trees = malt_tree::read_trees(&run.join("trees.jsonl")).unwrap();
    assert!(trees.dropped_tail.is_none(), "{:?}", trees.dropped_tail);
    trees.trees.into_iter().map(|t| t.question_id).collect()
}

fn report(run: &Path) -> Report {
    let text = std::fs::read_to_string(run.join("eval/report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn attempts(run: &Path) -> Vec<AttemptRecord> {
    std::fs::read_to_string(run.join("eval/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn final_answer(r: &AttemptRecord) -> Option<(&str, bool)> {
    match r.final_outcome()? {
        Outcome::Answer {
            answer,
            key,
            correct,
        } => Some((key.as_deref().unwrap_or(answer.trim()), *correct)),
        _ => None,
    }
}

fn stage_status(run: &Path, stage: &str) -> Value {
    let text = std::fs::read_to_string(run.join("stages").join(format!("{stage}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The systems of the default `[eval] systems` for the G -> V -> R chain.
const SYSTEMS: [&str; 7] = [
    "single",
    "untrained_chain",
    "star",
    "trained_chain",
    "trained_generator",
    "trained_generator_verifier",
    "trained_generator_refiner_skip_verifier",
];

/// Structure and internal consistency of a finished run's report.
fn check_report(run: &Path) {
    check_report_of(run, &run.join("eval"), &SYSTEMS);
}

fn check_report_of(run: &Path, eval: &Path, systems: &[&str]) {
    let rep: Report =
        serde_json::from_str(&std::fs::read_to_string(eval.join("report.json")).unwrap()).unwrap();
    let plan = &rep.plan;
    let ids: BTreeSet<&str> = rep.systems.iter().map(|s| s.id.as_str()).collect();
    for v in systems {
        let plain: Vec<_> = rep
            .systems
            .iter()
            .filter(|s| s.system == *v && s.majority_k.is_none())
            .collect();
        let mv: Vec<_> = rep
            .systems
            .iter()
            .filter(|s| s.system == *v && s.majority_k == Some(plan.majority_k))
            .collect();
        assert_eq!((plain.len(), mv.len()), (1, 1), "{v:?} in {ids:?}");
    }
    assert_eq!(rep.systems.len(), 2 * systems.len(), "{ids:?}");

    let records: Vec<AttemptRecord> = std::fs::read_to_string(eval.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_key: BTreeMap<_, _> = records.iter().map(|r| (r.key(), r)).collect();
    let per_system = plan.seeds.len() * plan.questions * plan.majority_k as usize;
    assert_eq!(
        records.len(),
        systems.len() * per_system,
        "one record per attempt"
    );
    assert_eq!(rep.subsets.len(), plan.seeds.len());

    for s in &rep.systems {
        assert_eq!(s.per_seed.len(), plan.seeds.len(), "{}", s.id);
        let mut pcts = Vec::new();
        for (ps, sub) in s.per_seed.iter().zip(&rep.subsets) {
            assert_eq!(ps.seed, sub.seed);
            assert_eq!(ps.total, plan.questions, "{}", s.id);
            assert!(ps.correct <= ps.total);
            let acc = 100.0 * ps.correct as f64 / ps.total as f64;
            assert!((ps.accuracy_pct - acc).abs() < 1e-9, "{}: {ps:?}", s.id);
            // Recompute from the logged attempts: attempt 0, or a majority vote over k.
            let mut correct = 0;
            for &q in &sub.example_idx {
                let rec = |a: u32| {
                    by_key[&malt_eval::AttemptKey {
                        seed: sub.seed,
                        system: s.system.clone(),
                        example_idx: q,
                        attempt: a,
                    }]
                };
                let ok = match s.majority_k {
                    None => final_answer(rec(0)).is_some_and(|(_, c)| c),
                    Some(k) => {
                        let answers: Vec<Option<(&str, bool)>> =
                            (0..k).map(|a| final_answer(rec(a))).collect();
                        let votes: Vec<Option<&str>> =
                            answers.iter().map(|a| a.map(|(x, _)| x)).collect();
                        malt_eval::majority_vote(&votes)
                            .is_some_and(|w| answers[w].is_some_and(|(_, c)| c))
                    }
                };
                correct += ok as usize;
            }
            assert_eq!(ps.correct, correct, "{} seed {}", s.id, sub.seed);
            pcts.push(acc);
        }
        let mean = pcts.iter().sum::<f64>() / pcts.len() as f64;
        assert!((s.mean_pct - mean).abs() < 1e-9, "{}", s.id);
        let var = pcts.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (pcts.len() - 1) as f64;
        let std = s.std_pct.expect("two seeds give a std");
        assert!(
            (std - var.sqrt()).abs() < 1e-9,
            "{}: {std} vs {}",
            s.id,
            var.sqrt()
        );
    }

    // Per-turn accuracy: one entry per agent of each chain, one for the single agents.
    for vt in &rep.per_turn {
        let want = if matches!(vt.system.as_str(), "single" | "star") {
            1
        } else {
            3
        };
        assert_eq!(vt.turns.len(), want, "{:?}", vt.system);
        for t in &vt.turns {
            if let Some(a) = &t.accuracy {
                assert_eq!(a.per_seed_pct.len(), plan.seeds.len());
            }
            // The G+R ablation skips the verifier: an empty turn that answers nothing.
            assert_eq!(
                t.skipped,
                vt.system.ends_with("skip_verifier") && t.agent == "verifier",
                "{} turn {}",
                vt.system,
                t.turn
            );
        }
    }
    assert_eq!(rep.per_turn.len(), systems.len());
    for r in records
        .iter()
        .filter(|r| r.system.ends_with("skip_verifier"))
    {
        if let Some(v) = r.turns.get(1) {
            assert!(v.skipped && v.output.is_empty(), "{r:?}");
        }
    }

    // Paired comparisons: every row against MALT + MV@k, counts from the logged attempts.
    let reference = format!("trained_chain_mv{}", plan.majority_k);
    if systems.contains(&"trained_chain") {
        assert_eq!(rep.comparisons.len(), rep.systems.len() - 1);
    } else {
        assert!(rep.comparisons.is_empty());
    }
    for c in &rep.comparisons {
        assert_eq!(c.reference, reference);
        assert_eq!(c.pairs, plan.seeds.len() * plan.questions);
        let p = malt_eval::significance::sign_test(c.reference_only as u64, c.row_only as u64);
        assert!(
            (c.sign_test_p - p).abs() < 1e-12,
            "{} vs {p}",
            c.sign_test_p
        );
        let row = rep.systems.iter().find(|s| s.id == c.row).unwrap();
        let refr = rep.systems.iter().find(|s| s.id == reference).unwrap();
        let net: i64 = refr.per_seed.iter().map(|a| a.correct as i64).sum::<i64>()
            - row.per_seed.iter().map(|a| a.correct as i64).sum::<i64>();
        assert_eq!(
            net,
            c.reference_only as i64 - c.row_only as i64,
            "{}",
            c.row
        );
    }

    // Flip matrix: every transition's cells add up to the pooled question count.
    let questions = plan.seeds.len() * plan.questions;
    for f in &rep.flips {
        let errored = records
            .iter()
            .filter(|r| r.system == f.system && r.attempt == 0 && r.is_errored())
            .count();
        assert_eq!(f.items, questions - errored, "{:?}", f.system);
        for t in &f.transitions {
            let sum = t.wrong_to_right + t.right_to_wrong + t.right_to_right + t.wrong_to_wrong;
            assert_eq!(
                sum, f.items,
                "{:?} {}->{}",
                f.system, t.from_agent, t.to_agent
            );
        }
    }

    // STaR: the report states the data its adapter was trained on, as the files hold it.
    if systems.contains(&"star") {
        let star = rep.star.as_ref().expect("the report describes STaR's data");
        let sft = lines(&run.join("star/datasets/generator/sft.jsonl"));
        assert!(sft > 0, "STaR kept no sample");
        assert_eq!(star.kept, sft);
        assert_eq!(star.data, "sampled");
        assert_eq!(star.questions, 8);
        // As many samples per question as one 3-3-3 tree holds.
        assert_eq!(star.samples, 8 * 39);
        assert!(
            star.source.contains("39 samples per question"),
            "{}",
            star.source
        );
        // As many optimiser steps as the MALT generator's SFT.
        let complete: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("train/generator/sft/complete.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(Some(star.steps), complete["steps"].as_u64());
        assert!(malt_train::final_adapter_dir(&run.join("star"), "generator").is_some());
    }
    let manifest = &rep.manifest;
    for key in [
        "config_hash",
        "config_sha256",
        "plugins",
        "model_sha256",
        "malt_commit",
    ] {
        assert!(
            !manifest[key].is_null(),
            "the report's manifest lacks {key}: {manifest}"
        );
    }

    // The human-readable outputs exist and say something.
    let md = std::fs::read_to_string(eval.join("report.md")).unwrap();
    for s in &rep.systems {
        assert!(md.contains(&s.label), "report.md lacks {}:\n{md}", s.label);
    }
    assert_eq!(md, malt_eval::render_markdown(&rep));
    let ablations = rep
        .systems
        .iter()
        .any(|s| s.table == malt_eval::Table::Ablation);
    let svgs: &[&str] = if ablations {
        &["accuracy.svg", "per_turn.svg", "ablations.svg"]
    } else {
        &["accuracy.svg", "per_turn.svg"]
    };
    for svg in svgs {
        let text = std::fs::read_to_string(eval.join(svg)).unwrap();
        assert!(text.starts_with("<svg") || text.contains("<svg"), "{svg}");
        assert!(text.len() > 500, "{svg} is almost empty");
    }
}

/// Every agent has SFT data, and the agents after the generator have DPO pairs.
fn check_datasets(run: &Path) {
    for agent in ["generator", "verifier", "refiner"] {
        let d = run.join("datasets").join(agent);
        assert!(lines(&d.join("sft.jsonl")) > 0, "{agent}: no SFT examples");
        if agent != "generator" {
            assert!(lines(&d.join("dpo.jsonl")) > 0, "{agent}: no DPO pairs");
        }
        assert!(
            malt_train::final_adapter_dir(run, agent).is_some(),
            "{agent}: no trained adapter"
        );
    }
}

#[test]
fn pipeline_runs_resumes_skips_and_matches() {
    let t0 = Instant::now();
    let fx = fixture();
    let cfg = fx.write_config("main", 0.5, "even");

    // A: uninterrupted.
    let a = fx.workdir("a");
    let a_run = a.join("runs/pipeline");
    let a_log = fx.root.join("a.log");
    run_to_end(&cfg, &a, &a_log);
    let a_ids = question_ids(&a_run);
    assert_eq!(a_ids.len(), 8);
    check_datasets(&a_run);
    check_report(&a_run);
    let t_a = t0.elapsed();

    // Common random numbers: a system with no agent trained, evaluated alone by another
    // process (so nothing of the untrained chain's computation is shared with it), gives
    // exactly the untrained chain's attempts.
    let crn = fx.write_text(
        "crn",
        &format!(
            "{}systems = [{{ trained = [], name = \"none\" }}]\n",
            config(&fx.model, &fx.plugin, 0.5, "even")
        ),
    );
    let c = fx.workdir("crn");
    let out = Command::new(MALT)
        .args(["--log", "warn", "eval"])
        .arg(&crn)
        .current_dir(&c)
        .env("MALT_CACHE", common::repo().join("target/malt-cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c_run = c.join("runs/pipeline");
    check_report_of(&c_run, &c_run.join("eval"), &["none"]);
    let untrained: BTreeMap<_, _> = attempts(&a_run)
        .into_iter()
        .filter(|r| r.system == "untrained_chain")
        .map(|r| ((r.seed, r.example_idx, r.attempt), r))
        .collect();
    let none = attempts(&c_run);
    assert_eq!(none.len(), untrained.len());
    for r in &none {
        let u = &untrained[&(r.seed, r.example_idx, r.attempt)];
        assert_eq!((&r.turns, &r.error), (&u.turns, &u.error), "{r:?}");
    }
    let (ra, rc) = (report(&a_run), report(&c_run));
    for mv in [None, Some(3)] {
        let row = |rep: &Report, id: &str| {
            rep.systems
                .iter()
                .find(|s| s.system == id && s.majority_k == mv)
                .unwrap()
                .per_seed
                .clone()
        };
        assert_eq!(row(&rc, "none"), row(&ra, "untrained_chain"));
    }

    // B: killed in the middle of generation, then in the middle of training, then resumed.
    let b = fx.workdir("b");
    let b_run = b.join("runs/pipeline");
    let b_log = fx.root.join("b.log");
    let mut child = spawn(&cfg, &b, &b_log);
    kill_when(&mut child, "trees were written", || {
        lines(&b_run.join("trees.jsonl")) >= 2
    });
    let stored = lines(&b_run.join("trees.jsonl"));
    assert!(
        stored < 8,
        "generation was not interrupted ({stored} trees)"
    );
    assert_eq!(stage_status(&b_run, "generate")["status"], "running");

    let mut child = spawn(&cfg, &b, &b_log);
    kill_when(&mut child, "a training checkpoint", || {
        !checkpoints(&b_run).is_empty()
    });
    assert_eq!(stage_status(&b_run, "train")["status"], "running");
    assert_eq!(stage_status(&b_run, "generate")["status"], "done");

    let resumed = run_to_end(&cfg, &b, &b_log);
    assert!(resumed.contains("generate: current, skipped"), "{resumed}");
    assert!(
        resumed.contains("train: interrupted earlier, resuming"),
        "{resumed}"
    );

    // Every tree exactly once (read_trees also refuses a repeated question).
    let b_ids = question_ids(&b_run);
    assert_eq!(
        b_ids.iter().collect::<BTreeSet<_>>(),
        a_ids.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(b_ids.len(), 8);
    check_datasets(&b_run);
    check_report(&b_run);
    // Determinism: the interrupted run reports exactly what the uninterrupted one did.
    assert_eq!(report(&b_run), report(&a_run));
    assert_eq!(
        std::fs::read(b_run.join("eval/results.jsonl")).unwrap(),
        std::fs::read(a_run.join("eval/results.jsonl")).unwrap()
    );

    // A finished run: every stage current, the model not even loaded.
    let t = Instant::now();
    let again = run_to_end(&cfg, &a, &a_log);
    let quick = t.elapsed();
    for stage in ["generate", "credit", "train", "eval"] {
        assert!(
            again.contains(&format!("{stage}: current, skipped")),
            "{again}"
        );
    }
    assert!(!again.contains("loaded model"), "{again}");
    assert!(quick < Duration::from_secs(20), "took {quick:?}");

    // A new theta: the trees stay, credit, training and evaluation follow.
    let theta = fx.write_config("theta", 0.7, "even");
    let edited = run_to_end(&theta, &a, &a_log);
    assert!(edited.contains("generate: current, skipped"), "{edited}");
    assert!(
        edited.contains("credit: inputs changed (agents theta, config [credit])"),
        "{edited}"
    );
    assert!(
        edited.contains("train: inputs changed (datasets)"),
        "{edited}"
    );
    assert!(
        edited.contains("eval: inputs changed (adapters)"),
        "{edited}"
    );
    assert_eq!(question_ids(&a_run), a_ids);
    check_report(&a_run);
    eprintln!(
        "pipeline test: run A {:.1} s, total {:.1} s, no-op rerun {:.2} s",
        t_a.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        quick.as_secs_f64()
    );
}

#[test]
fn hot_reload_applies_a_plugin_option_before_evaluation() {
    let fx = fixture();
    // Longer training than the other test: the edit must land before evaluation starts.
    let text = |target: &str| {
        config(&fx.model, &fx.plugin, 0.5, target).replace("max_steps = 12", "max_steps = 30")
    };
    let cfg = fx.write_config("reload", 0.5, "even");
    std::fs::write(&cfg, text("even")).unwrap();
    let c = fx.workdir("c");
    let c_run = c.join("runs/pipeline");
    let log = fx.root.join("c.log");
    let mut child = spawn(&cfg, &c, &log);
    // Edit while the run is generating: flip the rewarded parity.
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(&c_run.join("trees.jsonl")) < 1 {
        assert!(child.try_wait().unwrap().is_none(), "run ended early");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // First a change the run cannot take mid-way: refused and named.
    let seed4 = text("even").replace("seed = 3", "seed = 4");
    std::fs::write(&cfg, seed4).unwrap();
    let refused = "run seed or directory cannot change during a run";
    while !std::fs::read_to_string(&log).unwrap().contains(refused) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before the refusal"
        );
        assert!(Instant::now() < deadline, "no refusal logged");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Then the seed back and the rewarded parity flipped: applies.
    std::fs::write(&cfg, text("odd")).unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    if std::env::var_os("MALT_TEST_SHOW_LOG").is_some() {
        eprintln!("{text}");
    }
    assert!(text.contains("reloaded plugins (generation 2)"), "{text}");
    assert!(!text.contains("reloaded plugins (generation 1)"), "{text}");
    // Evaluation graded with the new option: "odd" is right, "even" wrong.
    let records = attempts(&c_run);
    let mut seen = BTreeSet::new();
    for r in &records {
        for t in &r.turns {
            if let Outcome::Answer {
                answer, correct, ..
            } = &t.outcome
            {
                assert_eq!(*correct, answer == "odd", "{r:?}");
                seen.insert(answer.clone());
            }
        }
    }
    assert_eq!(seen.len(), 2, "both parities occur: {seen:?}");
}

/// Waits for `path` to have at least `n` lines, or panics when the child ends first.
fn kill_at_lines(child: &mut Child, path: &Path, n: usize) {
    kill_when(child, &format!("{} lines in {}", n, path.display()), || {
        lines(path) >= n
    });
}

#[test]
fn rounds_keep_every_round_and_resume_after_a_kill() {
    let fx = fixture();
    let text = format!(
        "{}systems = [\"single\", \"untrained\", \"star\", \"malt\"]\n\n[rounds]\ncount = 2\ntheta = [0.5, 0.6]\n",
        config(&fx.model, &fx.plugin, 0.5, "even")
    );
    let cfg = fx.write_text("rounds", &text);
    let systems = ["single", "untrained_chain", "star", "trained_chain"];

    let a = fx.workdir("a");
    let a_run = a.join("runs/pipeline");
    let a_log = fx.root.join("a.log");
    let first = run_to_end(&cfg, &a, &a_log);
    assert!(first.contains("generate (round 2)"), "{first}");
    let a2 = a_run.join("rounds/2");
    for (dir, eval) in [(&a_run, a_run.join("eval")), (&a2, a2.join("eval"))] {
        check_report_of(dir, &eval, &systems);
        assert_eq!(question_ids(dir).len(), 8);
        for agent in ["generator", "verifier", "refiner"] {
            assert!(
                malt_train::final_adapter_dir(dir, agent).is_some(),
                "{agent}"
            );
        }
        assert!(dir.join("stages/eval.json").is_file());
    }
    // Round 2 sampled its own trees, with round 1's adapters.
    let trees = |d: &Path| malt_tree::read_trees(&d.join("trees.jsonl")).unwrap().trees;
    assert_ne!(trees(&a_run), trees(&a2));
    let manifest = malt_tree::Manifest::load(&a2).unwrap();
    assert!(
        manifest.model.contains("adapters of round 1"),
        "{}",
        manifest.model
    );
    // Round 2's report shows both rounds; the systems without adapters are round 1's attempts.
    let r1 = report(&a_run);
    let r2: Report =
        serde_json::from_str(&std::fs::read_to_string(a2.join("eval/report.json")).unwrap())
            .unwrap();
    let rounds: Vec<(u32, f64)> = r2.rounds.iter().map(|r| (r.round, r.theta)).collect();
    assert_eq!(rounds, [(1, 0.5), (2, 0.6)]);
    assert_eq!(r1.rounds.len(), 1);
    for id in [
        "single",
        "single_mv3",
        "untrained_chain",
        "untrained_chain_mv3",
    ] {
        let row = |r: &Report| {
            r.systems
                .iter()
                .find(|s| s.id == id)
                .unwrap()
                .per_seed
                .clone()
        };
        assert_eq!(row(&r1), row(&r2), "{id}");
        assert_eq!(
            r2.rounds[0]
                .rows
                .iter()
                .find(|x| x.id == id)
                .unwrap()
                .mean_pct,
            r1.systems.iter().find(|s| s.id == id).unwrap().mean_pct
        );
    }
    let md = std::fs::read_to_string(a2.join("eval/report.md")).unwrap();
    assert!(md.contains("## Accuracy by round"), "{md}");
    assert!(a2.join("eval/rounds.svg").is_file());

    // B: killed while round 2 samples its trees, again while it trains, then resumed.
    let b = fx.workdir("b");
    let b_run = b.join("runs/pipeline");
    let b2 = b_run.join("rounds/2");
    let b_log = fx.root.join("b.log");
    let mut child = spawn(&cfg, &b, &b_log);
    kill_at_lines(&mut child, &b2.join("trees.jsonl"), 2);
    assert!(
        lines(&b2.join("trees.jsonl")) < 8,
        "round 2 was not interrupted"
    );
    assert_eq!(stage_status(&b2, "generate")["status"], "running");
    assert_eq!(stage_status(&b_run, "eval")["status"], "done");
    let mut child = spawn(&cfg, &b, &b_log);
    kill_when(&mut child, "a round 2 training checkpoint", || {
        !checkpoints(&b2).is_empty()
    });
    assert_eq!(stage_status(&b2, "train")["status"], "running");
    let resumed = run_to_end(&cfg, &b, &b_log);
    assert!(
        resumed.contains("train: interrupted earlier, resuming"),
        "{resumed}"
    );
    for stage in ["generate", "credit", "train", "star", "eval"] {
        assert_eq!(stage_status(&b_run, stage)["status"], "done", "{stage}");
        assert_eq!(stage_status(&b2, stage)["status"], "done", "{stage}");
    }
    assert_eq!(question_ids(&b2).len(), 8);
    // Every round's outputs equal the uninterrupted run's.
    for (x, y) in [(&a_run, &b_run), (&a2, &b2)] {
        assert_eq!(trees(x), trees(y));
        for f in ["eval/report.json", "eval/results.jsonl", "eval/report.md"] {
            assert_eq!(
                std::fs::read(x.join(f)).unwrap(),
                std::fs::read(y.join(f)).unwrap(),
                "{} differs after the kills",
                y.join(f).display()
            );
        }
    }
    // Once finished, every stage of every round is current.
    let again = run_to_end(&cfg, &b, &b_log);
    assert_eq!(again.matches("current, skipped").count(), 10, "{again}");
}
