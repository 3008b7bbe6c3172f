//! What the pipeline tests share: a tiny random model, the parity fixture plugin, a config,
//! `malt run` as a child process (to kill it), and the checks of a finished run's report.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use malt_eval::{AttemptRecord, Outcome, Report};
use malt_model::candle_core::{DType, Device};
use malt_model::random::DrawOn;
use malt_model::{Model, ModelConfig};
use serde_json::Value;

use crate::common;

pub const MALT: &str = env!("CARGO_BIN_EXE_malt");

pub fn tiny_model(dir: &Path) {
    let cfg = ModelConfig {
        max_position_embeddings: 512,
        eos_token_ids: vec![1],
        ..ModelConfig::llama(256, 32, 64, 2, 4, 2)
    };
    // Seeded: the same weights in every run of the tests, so that what they sample (and which
    // agents have positives at each theta) does not change from one run to the next.
    let mut m = Model::random_seeded(cfg, &Device::Cpu, DType::F32, 11, DrawOn::Host)
        .expect("random model");
    // Training appends an end-of-turn token: give the synthetic vocabulary one.
    m.tokenizer.eos_token = Some("t1".into());
    m.export_merged(dir, None).expect("export tiny model");
}

/// The config; `[run] name` is fixed so that every variant writes `runs/pipeline` under the
/// working directory, and the config text (hence the manifest) is the same for A and B.
pub fn config(model: &Path, plugin: &Path, theta: f64, target: &str) -> String {
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
# The random model rarely samples its end token: nearly every output stops at max_new_tokens.
# Kept (without an EOS) so that every agent has data; the default leaves cut outputs out.
truncated = "keep"

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

pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub model: PathBuf,
    pub plugin: PathBuf,
}

pub fn fixture() -> Fixture {
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
    pub fn write_config(&self, name: &str, theta: f64, target: &str) -> PathBuf {
        let dir = self.root.join(format!("cfg-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, config(&self.model, &self.plugin, theta, target)).unwrap();
        path
    }

    /// Writes `text` as a config into its own directory.
    pub fn write_text(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.root.join(format!("cfg-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn workdir(&self, name: &str) -> PathBuf {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

pub fn spawn(config: &Path, cwd: &Path, log: &Path) -> Child {
    spawn_command("run", config, cwd, log)
}

/// `malt --log info COMMAND CONFIG` in `cwd`, its log appended to `log`.
pub fn spawn_command(command: &str, config: &Path, cwd: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(MALT)
        .args(["--log", "info", command])
        .arg(config)
        .current_dir(cwd)
        .env("MALT_CACHE", common::repo().join("target/malt-cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn malt")
}

/// Runs `malt run` to completion; returns its log (stderr).
pub fn run_to_end(config: &Path, cwd: &Path, log: &Path) -> String {
    let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let status = spawn(config, cwd, log).wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    let new = text[start..].to_string();
    assert!(status.success(), "malt run failed:\n{new}");
    new
}

/// Polls until `ready` holds, then SIGKILLs the child. Panics if the child ends first.
pub fn kill_when(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
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

pub fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

pub fn checkpoints(run: &Path) -> Vec<PathBuf> {
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

pub fn question_ids(run: &Path) -> Vec<String> {
    let trees = malt_tree::read_trees(&run.join("trees.jsonl")).unwrap();
    assert!(trees.dropped_tail.is_none(), "{:?}", trees.dropped_tail);
    trees.trees.into_iter().map(|t| t.question_id).collect()
}

pub fn report(run: &Path) -> Report {
    let text = std::fs::read_to_string(run.join("eval/report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn attempts(run: &Path) -> Vec<AttemptRecord> {
    std::fs::read_to_string(run.join("eval/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn final_answer(r: &AttemptRecord) -> Option<(&str, bool)> {
    match r.final_outcome()? {
        Outcome::Answer {
            answer,
            key,
            correct,
        } => Some((key.as_deref().unwrap_or(answer.trim()), *correct)),
        _ => None,
    }
}

pub fn stage_status(run: &Path, stage: &str) -> Value {
    let text = std::fs::read_to_string(run.join("stages").join(format!("{stage}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The systems of the default `[eval] systems` for the G -> V -> R chain: the paper's Table 1,
/// Table 4 (one agent on the base model) and Table 5 (roles removed).
pub const SYSTEMS: [&str; 11] = [
    "single",
    "untrained_chain",
    "star",
    "star_chain",
    "trained_chain",
    "untrained_generator",
    "untrained_verifier",
    "untrained_refiner",
    "only_generator",
    "generator_verifier",
    "generator_refiner",
];

/// The agents a default system removes from the chain.
fn skipped_agents(system: &str) -> &'static [&'static str] {
    match system {
        "only_generator" => &["verifier", "refiner"],
        "generator_verifier" => &["refiner"],
        "generator_refiner" => &["verifier"],
        _ => &[],
    }
}

/// Structure and internal consistency of a finished run's report.
pub fn check_report(run: &Path) {
    check_report_of(run, &run.join("eval"), &SYSTEMS);
}

pub fn check_report_of(run: &Path, eval: &Path, systems: &[&str]) {
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

    // Row id, seed, question -> right, as recomputed from the logged attempts.
    let mut right: BTreeMap<(String, u64, usize), bool> = BTreeMap::new();
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
                right.insert((s.id.clone(), sub.seed, q), ok);
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
            // Table 5's systems remove agents: an empty turn that answers nothing.
            assert_eq!(
                t.skipped,
                skipped_agents(&vt.system).contains(&t.agent.as_str()),
                "{} turn {}",
                vt.system,
                t.turn
            );
        }
    }
    assert_eq!(rep.per_turn.len(), systems.len());
    // Cut outputs per system and turn, as the logged attempts mark them.
    for vt in &rep.per_turn {
        for t in &vt.turns {
            let cut = records
                .iter()
                .filter(|r| r.system == vt.system)
                .filter(|r| r.turns.get(t.turn).is_some_and(|x| x.truncated))
                .count();
            assert_eq!(t.truncated, Some(cut), "{} turn {}", vt.system, t.turn);
        }
    }
    // The random model stops at max_new_tokens almost always: the counts are not all zero.
    assert!(rep
        .per_turn
        .iter()
        .flat_map(|v| &v.turns)
        .any(|t| t.truncated > Some(0)));
    // Every evaluated system has a training budget; the trained ones sampled the trees.
    assert_eq!(rep.budgets.len(), systems.len());
    for b in &rep.budgets {
        let trains = !matches!(b.system.as_str(), "single" | "untrained_chain" | "none");
        assert_eq!(b.optimizer_steps > 0, trains, "{b:?}");
        assert_eq!(b.sampled_tokens > 0, trains, "{b:?}");
    }
    for r in &records {
        for t in r
            .turns
            .iter()
            .filter(|t| skipped_agents(&r.system).contains(&t.agent.as_str()))
        {
            assert!(t.skipped && t.output.is_empty(), "{r:?}");
        }
    }

    // Paired comparisons: every row against MALT + MV@k, the test over distinct questions
    // recomputed from the logged attempts, Holm's correction over the rows.
    let reference = format!("trained_chain_mv{}", plan.majority_k);
    if systems.contains(&"trained_chain") {
        assert_eq!(rep.comparisons.len(), rep.systems.len() - 1);
    } else {
        assert!(rep.comparisons.is_empty());
    }
    for c in &rep.comparisons {
        assert_eq!(c.reference, reference);
        assert_eq!(c.pairs, plan.seeds.len() * plan.questions);
        let pairs = rep.subsets.iter().flat_map(|sub| {
            let right = &right;
            sub.example_idx.iter().map(move |&q| {
                let of = |id: &str| right[&(id.to_string(), sub.seed, q)];
                (q, of(&c.reference), of(&c.row))
            })
        });
        let want = malt_eval::significance::question_test(pairs);
        let t = c.test.as_ref().expect("a test over distinct questions");
        assert_eq!(
            (t.questions, t.reference_wins, t.row_wins, t.p),
            (want.questions, want.reference_wins, want.row_wins, want.p),
            "{}",
            c.row
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
    let p: Vec<f64> = rep
        .comparisons
        .iter()
        .filter_map(|c| c.test.as_ref().map(|t| t.p))
        .collect();
    for (c, h) in rep
        .comparisons
        .iter()
        .zip(malt_eval::significance::holm(&p))
    {
        assert_eq!(c.test.as_ref().map(|t| t.holm_p), Some(h), "{}", c.row);
    }
    // report.json alone gives the same report back.
    assert!(
        malt_eval::rerender(&rep).unwrap() == rep,
        "re-rendered report differs"
    );

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
        // The paper's STaR: the generator's tree outputs whose value exceeds theta, exactly
        // the MALT generator's SFT set, as many as stats.json counts.
        assert_eq!(star.data, "trees");
        assert_eq!(sft, lines(&run.join("datasets/generator/sft.jsonl")));
        let stats: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("stats.json")).unwrap())
                .unwrap();
        let g = &stats["agents"][0];
        assert_eq!(Some(sft as u64), g["sft"].as_u64());
        // The test config keeps cut outputs: every positive is in the set.
        assert_eq!(g["sft"], g["positives"]);
        assert_eq!(star.questions, 8);
        // Multi-agent STaR trains on each agent's positives: its budget's examples are those of
        // the agents' SFT phases, whose sets hold every positive stats.json counts.
        if let Some(b) = rep.budgets.iter().find(|b| b.system == "star_chain") {
            let (mut examples, mut sets) = (0, 0);
            for (i, agent) in ["generator", "verifier", "refiner"].iter().enumerate() {
                let complete: Value = serde_json::from_str(
                    &std::fs::read_to_string(run.join(format!("train/{agent}/sft/complete.json")))
                        .unwrap(),
                )
                .unwrap();
                examples += complete["train_examples"].as_u64().unwrap()
                    + complete["eval_examples"].as_u64().unwrap();
                let lines = lines(&run.join(format!("datasets/{agent}/sft.jsonl"))) as u64;
                assert_eq!(
                    Some(lines),
                    stats["agents"][i]["positives"].as_u64(),
                    "{agent}"
                );
                sets += lines;
            }
            assert_eq!(examples, sets);
            let trained: u64 = ["generator", "verifier", "refiner"]
                .iter()
                .map(|agent| {
                    let c: Value = serde_json::from_str(
                        &std::fs::read_to_string(
                            run.join(format!("train/{agent}/sft/complete.json")),
                        )
                        .unwrap(),
                    )
                    .unwrap();
                    c["train_examples"].as_u64().unwrap()
                })
                .sum();
            assert_eq!(b.train_examples, trained, "{b:?}");
            assert_eq!(b.phases, ["generator/sft", "verifier/sft", "refiner/sft"]);
        }
        // The generator's outputs it chose from: 3 per question.
        assert_eq!(star.samples, 8 * 3);
        assert!(star.source.contains("propagated value"), "{}", star.source);
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
pub fn check_datasets(run: &Path) {
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

/// The turns of system `id`'s attempts, by (seed, question, attempt).
fn turns_of(
    records: &[AttemptRecord],
    id: &str,
) -> BTreeMap<(u64, usize, u32), Vec<malt_eval::Turn>> {
    records
        .iter()
        .filter(|r| r.system == id)
        .map(|r| ((r.seed, r.example_idx, r.attempt), r.turns.clone()))
        .collect()
}

/// Common random numbers across the paper's tables: every system samples with the same seeds,
/// so two systems that run the same weights on the same history produce the same turn. Each
/// default system is checked against the one it must equal there:
/// - STaR (SA, from the trees) trains on the MALT generator's SFT set for as many steps: its
///   adapter and every attempt equal Table 5's "generator only";
/// - multi-agent STaR's generator turn is MALT's (an SFT-only generator has one adapter);
/// - Table 4: the turns before the untrained agent are MALT's, an untrained generator's is the
///   untrained chain's;
/// - Table 5: G + V's turns are MALT's first two (its verifier's stated answer aside), G + R's
///   generator turn is MALT's.
pub fn check_common_random_numbers(run: &Path) {
    let records: Vec<AttemptRecord> = std::fs::read_to_string(run.join("eval/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let adapter = |dir: &Path| std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        adapter(&run.join("star/adapters/generator/sft")),
        adapter(&run.join("adapters/generator/sft")),
        "STaR from the trees is not the MALT generator's SFT"
    );
    let same_turns = |a: &str, b: &str, turns: std::ops::Range<usize>, outcome: bool| {
        let (x, y) = (turns_of(&records, a), turns_of(&records, b));
        assert!(!x.is_empty() && x.len() == y.len(), "{a} vs {b}");
        for (k, tx) in &x {
            let ty = &y[k];
            for t in turns.clone() {
                assert_eq!(tx[t].output, ty[t].output, "{a} vs {b}, turn {t} of {k:?}");
                if outcome {
                    assert_eq!(
                        tx[t].outcome, ty[t].outcome,
                        "{a} vs {b}, turn {t} of {k:?}"
                    );
                }
            }
        }
    };
    same_turns("star", "only_generator", 0..1, true);
    same_turns("star_chain", "trained_chain", 0..1, true);
    same_turns("untrained_generator", "untrained_chain", 0..1, true);
    same_turns("untrained_verifier", "trained_chain", 0..1, true);
    same_turns("untrained_refiner", "trained_chain", 0..2, true);
    same_turns("generator_verifier", "trained_chain", 0..2, false);
    same_turns("generator_refiner", "trained_chain", 0..1, true);
    // The multi-agent STaR's later agents have an SFT adapter apart from MALT's final (DPO)
    // one; which of them a system runs is `system_setup`'s unit test.
    for agent in ["verifier", "refiner"] {
        assert_ne!(
            adapter(&run.join(format!("adapters/{agent}/sft"))),
            adapter(&run.join(format!("adapters/{agent}/dpo"))),
            "{agent}"
        );
    }
}

/// `malt serve`'s engine and HTTP server in this process, on a free port of 127.0.0.1, serving
/// the model at `model_dir` as `tiny` (and `base`) with no adapter: what the remote backend's
/// tests sample through. Returns the server (dropping it stops it) and its `/v1` URL.
pub fn serve_in_process(model_dir: &Path) -> (malt_serve::Server, String) {
    use malt_engine::serve_backend::{Batching, EngineSettings, ModelServeBackend};
    let model = Model::load_hf_dir(model_dir, &Device::Cpu, None).expect("load the tiny model");
    let backend = ModelServeBackend::start(
        model,
        "tiny",
        vec![],
        None,
        EngineSettings {
            batching: Batching::Continuous,
            max_batch: 64,
            timeout_s: 120.0,
        },
    )
    .expect("serve backend");
    let server = malt_serve::Server::start(
        "127.0.0.1:0",
        std::sync::Arc::new(backend),
        malt_serve::Limits::default(),
    )
    .expect("server");
    let url = format!("http://{}/v1", server.addr());
    (server, url)
}

/// The ids of the models `GET {url}/models` lists (`url` ends in `/v1`).
pub fn served_models(url: &str) -> Vec<String> {
    let body = ureq::get(format!("{url}/models"))
        .call()
        .expect("GET /v1/models")
        .into_body()
        .read_to_string()
        .expect("body");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}
