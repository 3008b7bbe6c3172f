//! Run store: records, torn tails, locking, resume checks, datasets, bad input.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use malt_tree::credit::PairMode;
use malt_tree::fake::{fake_examples, FakeSampler, FakeScorer};
use malt_tree::store::{read_trees, Manifest, RunWriter, TREES};
use malt_tree::{
    generate_run, generate_tree, load_examples, recredit, AgentSpec, ChainSpec, CreditSettings,
    TreeError,
};

fn manifest(chain: &ChainSpec, seed: u64) -> Manifest {
    Manifest::new(
        "[run]\nseed = 1\n",
        [("fake".to_string(), "00".repeat(32))].into(),
        "fake-model",
        seed,
        chain.clone(),
        CreditSettings::default(),
    )
}

fn generate(dir: &Path, n: usize) -> malt_tree::GenerateSummary {
    let chain = common::gvr(3);
    let mut run = RunWriter::open(dir, manifest(&chain, 11)).unwrap();
    generate_run(
        &mut run,
        &chain,
        &fake_examples(n),
        &mut FakeSampler::default(),
        &mut FakeScorer::default(),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn roundtrip_and_resume_skips_finished() {
    let d = tempfile::tempdir().unwrap();
    let s = generate(d.path(), 5);
    assert_eq!((s.generated, s.skipped, s.samples), (5, 0, 5 * 39));
    let s = generate(d.path(), 8);
    assert_eq!((s.generated, s.skipped), (3, 5));
    let loaded = read_trees(&d.path().join(TREES)).unwrap();
    let ids: Vec<_> = loaded
        .trees
        .iter()
        .map(|t| t.question_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["q0000", "q0001", "q0002", "q0003", "q0004", "q0005", "q0006", "q0007"]
    );
    assert!(loaded.dropped_tail.is_none());
    // Lines are JSON objects other tools can read: {"crc32": "...", "tree": {...}}.
    let text = fs::read_to_string(d.path().join(TREES)).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["tree"]["question_id"], "q0000");
    assert_eq!(first["tree"]["nodes"].as_array().unwrap().len(), 39);
}

#[test]
fn torn_last_line_is_dropped_and_regenerated() {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 4);
    let path = d.path().join(TREES);
    let full = fs::read(&path).unwrap();
    // Cut the last record in the middle.
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let cut = last_start + (full.len() - last_start) / 2;
    fs::write(&path, &full[..cut]).unwrap();
    let loaded = read_trees(&path).unwrap();
    assert_eq!(loaded.trees.len(), 3);
    let why = loaded.dropped_tail.expect("torn tail detected");
    assert!(why.contains("trees.jsonl:4:"), "{why}");
    // Resume regenerates exactly the dropped question, byte-identical.
    let s = generate(d.path(), 4);
    assert_eq!((s.generated, s.skipped), (1, 3));
    assert_eq!(fs::read(&path).unwrap(), full);
}

#[test]
fn corrupt_checksum_on_last_line_dropped_but_in_middle_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 3);
    let path = d.path().join(TREES);
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Flip one payload character of the last line (keep the newline): dropped.
    let flip = |s: &mut String| *s = s.replacen("\"q000", "\"q900", 1);
    flip(&mut lines[2]);
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    let loaded = read_trees(&path).unwrap();
    assert_eq!(loaded.trees.len(), 2);
    assert!(loaded.dropped_tail.unwrap().contains("checksum mismatch"));
    // The same in the middle: an error naming file and line.
    flip(&mut lines[1]);
    let good = fs::read_to_string(&path).unwrap();
    let last_good = good.lines().next().unwrap().to_owned();
    fs::write(
        &path,
        format!("{}\n{}\n{}\n", last_good, lines[1], last_good),
    )
    .unwrap();
    let err = read_trees(&path).unwrap_err().to_string();
    assert!(
        err.contains("trees.jsonl:2:") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn second_writer_is_locked_out() {
    let d = tempfile::tempdir().unwrap();
    let chain = common::gvr(2);
    let _a = RunWriter::open(d.path(), manifest(&chain, 1)).unwrap();
    let err = RunWriter::open(d.path(), manifest(&chain, 1)).unwrap_err();
    assert!(matches!(err, TreeError::Locked { .. }), "{err}");
    drop(_a);
    RunWriter::open(d.path(), manifest(&chain, 1)).unwrap();
}

#[test]
fn resume_with_other_chain_or_seed_is_refused() {
    let d = tempfile::tempdir().unwrap();
    drop(RunWriter::open(d.path(), manifest(&common::gvr(3), 1)).unwrap());
    let e = RunWriter::open(d.path(), manifest(&common::gvr(2), 1)).unwrap_err();
    assert!(e.to_string().contains("chain"), "{e}");
    let e = RunWriter::open(d.path(), manifest(&common::gvr(3), 2)).unwrap_err();
    assert!(e.to_string().contains("seed"), "{e}");
    // Thresholds may change freely.
    let mut c = common::gvr(3);
    c.agents[1].theta = Some(0.9);
    RunWriter::open(d.path(), manifest(&c, 1)).unwrap();
}

/// Trees sampled with another tokenization (or before malt recorded it) are refused, never
/// resumed into; a run whose tokenizer cannot be read now resumes without the check.
#[test]
fn resume_with_another_tokenization_is_refused() {
    let chain = common::gvr(3);
    let with = |fp: Option<&str>| manifest(&chain, 1).with_tokenizer(fp.map(str::to_owned));
    let d = tempfile::tempdir().unwrap();
    drop(RunWriter::open(d.path(), with(Some("aaaa"))).unwrap());
    drop(RunWriter::open(d.path(), with(Some("aaaa"))).unwrap());
    drop(RunWriter::open(d.path(), with(None)).unwrap());
    let e = RunWriter::open(d.path(), with(Some("bbbb"))).unwrap_err();
    assert!(e.to_string().contains("another tokenization"), "{e}");
    assert!(
        e.to_string()
            .contains("tokenizer fingerprint aaaa; now bbbb"),
        "{e}"
    );
    // A run created before manifests recorded the tokenizer.
    let old = tempfile::tempdir().unwrap();
    drop(RunWriter::open(old.path(), with(None)).unwrap());
    let e = RunWriter::open(old.path(), with(Some("bbbb"))).unwrap_err();
    assert!(
        e.to_string().contains("before malt recorded the tokenizer"),
        "{e}"
    );
}

#[test]
fn duplicate_append_refused() {
    let d = tempfile::tempdir().unwrap();
    let chain = common::gvr(2);
    let mut run = RunWriter::open(d.path(), manifest(&chain, 1)).unwrap();
    let ex = &fake_examples(1)[0];
    let (tree, _) = generate_tree(
        &chain,
        ex,
        1,
        &mut FakeSampler::default(),
        &mut FakeScorer::default(),
        &mut Default::default(),
    )
    .unwrap();
    run.append(&tree).unwrap();
    assert!(run
        .append(&tree)
        .unwrap_err()
        .to_string()
        .contains("already stored"));
}

#[test]
fn recredit_writes_trl_datasets_and_stats() {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 20);
    let chain = common::gvr(3);
    let all = recredit(d.path(), &chain, &CreditSettings::default(), None).unwrap();
    let s = &all.stats;
    assert_eq!((s.trees, s.leaves), (20, 540));
    for (a, agent) in s.agents.iter().zip(["generator", "verifier", "refiner"]) {
        let dir = d.path().join("datasets").join(agent);
        let sft = fs::read_to_string(dir.join("sft.jsonl")).unwrap();
        let dpo = fs::read_to_string(dir.join("dpo.jsonl")).unwrap();
        assert_eq!(sft.lines().count() as u64, a.positives);
        assert_eq!(sft.lines().count() as u64, a.sft);
        assert_eq!(dpo.lines().count() as u64, a.pairs);
        for l in sft.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["prompt"].as_array().unwrap().len() >= 2);
            assert_eq!(v["completion"][0]["role"], "assistant");
            assert!(v["meta"]["question_id"].is_string());
        }
        for l in dpo.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["chosen"][0]["role"], "assistant");
            assert_eq!(v["rejected"][0]["role"], "assistant");
            assert_eq!(v["meta"]["agent"], agent);
        }
    }
    assert!(s.agents[2].pairs > 0);
    // Records carry exactly the stored prompt and outputs.
    let trees = read_trees(&d.path().join(TREES)).unwrap().trees;
    let find = |q: &serde_json::Value| {
        trees
            .iter()
            .find(|t| t.question_id == q.as_str().unwrap())
            .unwrap()
    };
    let dir = d.path().join("datasets").join("refiner");
    let sft = fs::read_to_string(dir.join("sft.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(sft.lines().next().unwrap()).unwrap();
    let t = find(&v["meta"]["question_id"]);
    let i = v["meta"]["node"].as_u64().unwrap() as usize;
    assert_eq!(
        v["prompt"],
        serde_json::to_value(t.prompt_of(i).unwrap()).unwrap()
    );
    assert_eq!(v["completion"][0]["content"], t.nodes[i].output.as_str());
    let dpo = fs::read_to_string(dir.join("dpo.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(dpo.lines().next().unwrap()).unwrap();
    let t = find(&v["meta"]["question_id"]);
    let (c, r) = (
        v["meta"]["chosen_node"].as_u64().unwrap() as usize,
        v["meta"]["rejected_node"].as_u64().unwrap() as usize,
    );
    assert_eq!(t.nodes[c].parent, t.nodes[r].parent);
    assert_eq!(
        v["prompt"],
        serde_json::to_value(t.prompt_of(r).unwrap()).unwrap()
    );
    assert_eq!(v["chosen"][0]["content"], t.nodes[c].output.as_str());
    assert_eq!(v["rejected"][0]["content"], t.nodes[r].output.as_str());
    let stats: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.path().join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["trees"], 20);
    // G -> R flips: verifiers give no answer, so one flip row, 27 per tree.
    assert_eq!(s.flips.len(), 1);
    let f = &s.flips[0];
    assert_eq!(
        f.wrong_to_right + f.right_to_wrong + f.right_to_right + f.wrong_to_wrong,
        540
    );

    // one-per-parent yields at most one pair per sibling group; raising theta fewer positives.
    let one = recredit(
        d.path(),
        &chain,
        &CreditSettings {
            pairs: PairMode::OnePerParent,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert!(one.stats.agents[2].pairs <= 20 * 9 && one.stats.agents[2].pairs <= s.agents[2].pairs);
    let strict = recredit(
        d.path(),
        &chain,
        &CreditSettings {
            theta: 0.9,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    for (a, b) in strict.stats.agents.iter().zip(&s.agents) {
        assert!(a.positives <= b.positives);
    }
    // What `--watch` prints: positives and pairs per agent, before -> after.
    let diff = malt_tree::Stats::diff(s, &strict.stats);
    let gen_row = diff.lines().find(|l| l.starts_with("generator")).unwrap();
    assert!(
        gen_row.contains(&format!(
            "{} -> {}",
            s.agents[0].positives, strict.stats.agents[0].positives
        )),
        "{diff}"
    );
    // Re-scoring with a changed plugin (every reward out of range) excludes every leaf.
    let mut broken = FakeScorer {
        reward_offset: 2.0,
        ..Default::default()
    };
    let r = recredit(
        d.path(),
        &chain,
        &CreditSettings::default(),
        Some(&mut broken),
    )
    .unwrap();
    assert_eq!(r.stats.errored_leaves, 540);
    assert_eq!(r.stats.agents.iter().map(|a| a.positives).sum::<u64>(), 0);
    assert!(r.stats.errors["fake"] >= 540);
}

#[test]
fn recredit_scores_again_only_the_trees_other_plugins_scored() {
    let d = tempfile::tempdir().unwrap();
    let chain = common::gvr(3);
    let v1 = |reward_offset| FakeScorer {
        identity: Some("v1".into()),
        reward_offset,
        ..Default::default()
    };
    let mut run = RunWriter::open(d.path(), manifest(&chain, 11)).unwrap();
    generate_run(
        &mut run,
        &chain,
        &fake_examples(6),
        &mut FakeSampler::default(),
        &mut v1(0.0),
        &mut |_| {},
    )
    .unwrap();
    drop(run);
    let trees = read_trees(&d.path().join(TREES)).unwrap().trees;
    assert!(trees
        .iter()
        .all(|t| t.scored_with.as_deref() == Some("fake=v1")));
    let settings = CreditSettings::default();
    let stored = recredit(d.path(), &chain, &settings, None).unwrap();
    assert_eq!(stored.rescored, 0);

    // The plugins that scored the trees: their stored scores stand, nothing is called. (This
    // scorer would put every reward out of range if it were called.)
    let same = recredit(d.path(), &chain, &settings, Some(&mut v1(2.0))).unwrap();
    assert_eq!(same.rescored, 0);
    assert_eq!(same.stats.errored_leaves, 0);
    assert_eq!(same.stats.agents, stored.stats.agents);

    // Another plugin (or options), or one that does not say: every tree is scored again.
    for mut other in [
        FakeScorer {
            identity: Some("v2".into()),
            reward_offset: 2.0,
            ..Default::default()
        },
        FakeScorer {
            reward_offset: 2.0,
            ..Default::default()
        },
    ] {
        let r = recredit(d.path(), &chain, &settings, Some(&mut other)).unwrap();
        assert_eq!(r.rescored, 6);
        assert_eq!(r.stats.errored_leaves, 6 * 27);
    }

    // A tree with a failed item (a trap, perhaps a timeout) is scored again, even by the same
    // plugins; the others keep their scores.
    let d = tempfile::tempdir().unwrap();
    let mut run = RunWriter::open(d.path(), manifest(&chain, 11)).unwrap();
    let mut trapping = FakeScorer {
        trap_grade_on: Some("0".into()),
        ..v1(0.0)
    };
    generate_run(
        &mut run,
        &chain,
        &fake_examples(6),
        &mut FakeSampler::default(),
        &mut trapping,
        &mut |_| {},
    )
    .unwrap();
    drop(run);
    let trees = read_trees(&d.path().join(TREES)).unwrap().trees;
    let failed = trees
        .iter()
        .filter(|t| t.nodes.iter().any(|n| n.score_error.is_some()))
        .count();
    assert!(failed > 0);
    let r = recredit(d.path(), &chain, &settings, Some(&mut v1(0.0))).unwrap();
    assert_eq!(r.rescored, failed);
    assert_eq!(r.stats.errored_leaves, 0);
}

#[test]
fn recredit_with_other_branches_names_the_line() {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 2);
    let e = recredit(d.path(), &common::gvr(2), &CreditSettings::default(), None).unwrap_err();
    assert!(e.to_string().contains("trees.jsonl:1:"), "{e}");
}

// ---- bad input: clear errors naming file and line ----

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

#[test]
fn malformed_dataset_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "q.jsonl",
        "{\"id\":\"a\",\"question\":\"?\",\"answer\":\"1\"}\n\n{oops\n",
    );
    let e = load_examples(&p, "fake", &mut FakeScorer::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("q.jsonl:3: invalid JSON"), "{e}");
}

#[test]
fn missing_field_in_dataset() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "q.jsonl",
        "{\"id\":\"a\",\"question\":\"?\",\"answer\":\"1\"}\n{\"id\":\"b\",\"question\":\"?\"}\n",
    );
    let e = load_examples(&p, "fake", &mut FakeScorer::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("q.jsonl:2: missing field \"answer\""), "{e}");
}

#[test]
fn duplicate_id_in_dataset() {
    let d = tempfile::tempdir().unwrap();
    let line = "{\"id\":\"a\",\"question\":\"?\",\"answer\":\"1\"}\n";
    let p = write(d.path(), "q.jsonl", &format!("{line}{line}"));
    let e = load_examples(&p, "fake", &mut FakeScorer::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("q.jsonl:2: duplicate id \"a\" (first on line 1)"),
        "{e}"
    );
}

#[test]
fn empty_dataset() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "q.jsonl", "\n  \n");
    let e = load_examples(&p, "fake", &mut FakeScorer::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("q.jsonl: dataset is empty"), "{e}");
    let e = load_examples(
        &d.path().join("nope.jsonl"),
        "fake",
        &mut FakeScorer::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope.jsonl"), "{e}");
}

#[test]
fn theta_outside_unit_interval() {
    let e = CreditSettings {
        theta: 1.5,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("[credit] theta = 1.5 is outside [0, 1]"), "{e}");
    let e = CreditSettings {
        theta: f64::NAN,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("outside"));
    let mut a = AgentSpec::new("verifier", "verifier", "fake", 3);
    a.theta = Some(-0.1);
    let e = ChainSpec::new(vec![a]).unwrap_err().to_string();
    assert!(
        e.contains("agent \"verifier\": theta = -0.1 is outside [0, 1]"),
        "{e}"
    );
}

#[test]
fn chain_of_zero_agents() {
    let e = ChainSpec::new(vec![]).unwrap_err().to_string();
    assert!(e.contains("zero agents"), "{e}");
    let e = ChainSpec::new(vec![AgentSpec::new("g", "generator", "fake", 0)]).unwrap_err();
    assert!(e.to_string().contains("branches must be at least 1"));
    let g = AgentSpec::new("g", "generator", "fake", 2);
    let e = ChainSpec::new(vec![g.clone(), g]).unwrap_err();
    assert!(e.to_string().contains("appears twice"));
}
