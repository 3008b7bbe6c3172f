//! End to end: `malt run` on a tiny random model, a tiny generated dataset and the `parity`
//! fixture plugin (reward 1 when the output's hash is even, so noise yields positives and
//! negatives at every agent and every training phase has data).
//!
//! - A: one uninterrupted run; B: killed (SIGKILL) during generation and again during training,
//!   then resumed to completion. Every tree is stored once and B's report equals A's.
//! - report.json: every default system (the paper's Tables 1, 4 and 5), per-turn accuracy,
//!   flips, per-seed values, paired comparisons, and figures that agree with each other and
//!   with the logged attempts; STaR's data count as its files and stats.json hold it; each
//!   table's rows equal by common random numbers the turns they must share.
//! - Common random numbers: a no-agents-trained system evaluated alone by another process
//!   gives the untrained chain's attempts exactly.
//! - A second `malt run` skips every stage; an edited theta re-runs credit, train and eval
//!   but keeps the trees.
//! - Hot reload: a plugin option edited while a run is going applies before evaluation.

mod common;
#[path = "pipeline_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use malt_eval::{Outcome, Report};
use support::*;

#[test]
fn pipeline_runs_resumes_skips_and_matches() {
    let t0 = Instant::now();
    let fx = fixture();
    let cfg = fx.write_config("main", 0.5, "even");

    // A: uninterrupted.
    let a = fx.workdir("a");
    let a_run = a.join("runs/pipeline");
    let a_log = fx.root.join("a.log");
    let a_said = run_to_end(&cfg, &a, &a_log);
    // Evaluation logs its progress into a file (no progress bar there), as generation does.
    assert!(
        a_said.lines().any(|l| l.contains("eval: ")
            && l.contains(" questions, ")
            && l.contains("attempts/s, ETA ")),
        "{a_said}"
    );
    // Credit keeps the scores generation gave the trees: the plugins have not changed since.
    assert!(
        a_said.contains("credit: 0 of 8 trees scored again"),
        "{a_said}"
    );
    let a_ids = question_ids(&a_run);
    assert_eq!(a_ids.len(), 8);
    check_datasets(&a_run);
    check_report(&a_run);
    check_common_random_numbers(&a_run);
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
    // STaR trains on the generator's positives, which the new theta changed.
    assert!(
        edited.contains("star: inputs changed (first agent's sft.jsonl)"),
        "{edited}"
    );
    assert!(
        edited.contains("eval: inputs changed (STaR, adapters)"),
        "{edited}"
    );
    assert_eq!(question_ids(&a_run), a_ids);
    check_report(&a_run);

    // A new tokenization (the model's chat template edited; a tokenizer fix changes the ids
    // the same way): the trees sampled on the old ids are sampled anew, never reported as
    // current.
    let tc = fx.model.join("tokenizer_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = format!("{{{{ 'Chat: ' }}}}{}", malt_model::chat::CHATML).into();
    std::fs::write(&tc, v.to_string()).unwrap();
    let out = Command::new(MALT)
        .args(["--log", "info", "run"])
        .arg(&theta)
        .args(["--until", "generate", "--no-reload"])
        .current_dir(&a)
        .env("MALT_CACHE", common::repo().join("target/malt-cache"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("generate: inputs changed (model), recomputing"),
        "{log}"
    );
    // Sampled anew, not resumed: the old trees are discarded first.
    assert!(log.contains("discarding stale"), "{log}");
    assert!(log.contains("generated 8 trees (0 skipped"), "{log}");
    assert_eq!(lines(&a_run.join("trees.jsonl")), 8);
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

/// A tiny model whose BPE merges ("a"+"b" -> "ab", ...) make a random model's samples often
/// non-canonical: the text of sampled ids [a, b] re-encodes as [ab].
fn merging_model() -> malt_model::Model {
    use malt_model::tokenizers::models::bpe::BPE;
    use malt_model::tokenizers::{decoders::fuse::Fuse, AddedToken};
    let words = [
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "a",
        "b",
        "ab",
        "ba",
        "aa",
        "bb",
    ];
    let vocab: malt_model::tokenizers::models::bpe::Vocab = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let merges = [("a", "b"), ("b", "a"), ("a", "a"), ("b", "b")]
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .to_vec();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tk = malt_model::tokenizers::Tokenizer::new(bpe);
    tk.with_decoder(Some(Fuse::new()));
    tk.add_special_tokens(["<|im_start|>", "<|im_end|>"].map(|t| AddedToken::from(t, true)))
        .unwrap();
    let cfg = malt_model::ModelConfig {
        max_position_embeddings: 512,
        eos_token_ids: vec![2],
        ..malt_model::ModelConfig::llama(words.len(), 32, 64, 2, 4, 2)
    };
    let mut m = malt_model::Model::random(cfg, &malt_model::candle_core::Device::Cpu).unwrap();
    m.tokenizer = malt_model::Tokenizer::new(tk);
    m.tokenizer.eos_token = Some("<|im_end|>".into());
    m.stop_ids = vec![2];
    m
}

/// Token fidelity: the ids a tree stores for a node are exactly what SFT trains on after the
/// prompt's ids (with EOS appended only where sampling neither ended on a stop token nor was
/// cut at the length limit), even where re-encoding the node's text would give other ids.
#[test]
fn sft_trains_on_exactly_the_ids_the_trees_stored() {
    use malt_tree::{
        AgentSpec, ChainSpec, CreditSettings, FinishReason, Manifest, PairMode, Pooling, RunWriter,
        TruncatedPolicy,
    };
    let model = merging_model();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentSpec::new("generator", "generator", "fake", 6);
    agent.sampling.temperature = 1.0;
    agent.sampling.max_new_tokens = 12;
    let chain = ChainSpec::new(vec![agent]).unwrap();
    let credit = CreditSettings {
        theta: 0.5,
        pooling: Pooling::Global,
        pairs: PairMode::All,
        // Cut outputs too: the test is about which ids train, and an EOS after a cut one.
        truncated: TruncatedPolicy::Keep,
    };
    let manifest = Manifest::new(
        "test",
        Default::default(),
        "merging",
        7,
        chain.clone(),
        credit,
    );
    let mut run = RunWriter::open(dir.path(), manifest).unwrap();
    let mut sampler = malt_engine::ModelSampler::new(&model);
    // Every output is graded 0 + 0.6: positive, so each node is an SFT example.
    let mut scorer = malt_tree::fake::FakeScorer {
        reward_offset: 0.6,
        ..Default::default()
    };
    let examples = malt_tree::fake::fake_examples(4);
    malt_tree::generate_run(
        &mut run,
        &chain,
        &examples,
        &mut sampler,
        &mut scorer,
        &mut |_| {},
    )
    .unwrap();
    drop(run);
    malt_tree::recredit(dir.path(), &chain, &credit, None).unwrap();

    let trees = malt_tree::read_trees(&dir.path().join("trees.jsonl"))
        .unwrap()
        .trees;
    let node_ids: BTreeMap<(String, usize), (Vec<u32>, String, bool)> = trees
        .iter()
        .flat_map(|t| {
            t.nodes.iter().enumerate().map(|(i, n)| {
                let ids = n
                    .token_ids
                    .clone()
                    .expect("the embedded sampler stores ids");
                assert!(
                    n.finish.is_some(),
                    "node {i} of {} has no finish reason",
                    t.question_id
                );
                let cut = n.finish == Some(FinishReason::Length);
                ((t.question_id.clone(), i), (ids, n.output.clone(), cut))
            })
        })
        .collect();
    let sft_path = dir.path().join("datasets/generator/sft.jsonl");
    let file = malt_train::data::load_sft(&sft_path).unwrap();
    let tok = malt_train::MaltTokenizer::new(&model).unwrap();
    let items = malt_train::data::tokenize_sft(&tok, &file.records, 4096).unwrap();
    let text = std::fs::read_to_string(&sft_path).unwrap();
    assert_eq!(items.len(), node_ids.len(), "every node is a positive");
    let (mut non_canonical, mut ended, mut cut_count) = (0, 0, 0);
    for (line, item) in text.lines().zip(&items) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["meta"]["question_id"].as_str().unwrap().to_owned(),
            v["meta"]["node"].as_u64().unwrap() as usize,
        );
        let (stored, output, cut) = &node_ids[&key];
        let trained = &item.seq.ids[item.seq.prompt_len..];
        let mut want = stored.clone();
        if stored.last() == Some(&2) {
            ended += 1;
        } else if *cut {
            cut_count += 1;
            assert_eq!(v["completion_truncated"], true, "{key:?}");
        } else {
            want.push(2);
        }
        assert_eq!(
            trained,
            want.as_slice(),
            "{key:?}: trained ids are not the stored ones"
        );
        if model.tokenizer.encode(output, false).unwrap()
            != stored[..stored.len() - usize::from(stored.last() == Some(&2))]
        {
            non_canonical += 1;
        }
    }
    // The test has teeth only if re-encoding the texts would have trained on other ids.
    assert!(
        non_canonical > 0,
        "no sampled output re-encodes differently"
    );
    // And only if some outputs were cut (no EOS trained after them) and some were not.
    assert!(cut_count > 0 && cut_count < items.len(), "{cut_count} cut");
    eprintln!(
        "{} SFT examples, {non_canonical} of them not the canonical encoding of their text, \
         {ended} ended on the stop token, {cut_count} cut at max_new_tokens",
        items.len()
    );
}

/// The stage contract: each stage's recorded inputs change when something it reads changes
/// (a `--dtype`, a `[model]` edit, a plugin's bytes or options, an agent's sampling keys, the
/// settings of its own section) and stay the same when only what it does not read changes.
#[test]
fn stage_inputs_change_with_what_each_stage_reads_and_only_then() {
    use malt_pipeline::stage::{credit, eval, generate, named_hashes, star, train, Stage};
    // In-process sessions hash the model's weights once into this cache.
    std::env::set_var("MALT_CACHE", common::repo().join("target/malt-cache"));
    let fx = fixture();
    let wasm = fx.root.join("parity.wasm");
    std::fs::copy(&fx.plugin, &wasm).unwrap();
    let base = config(&fx.model, &wasm, 0.5, "even");
    let stages = ["generate", "credit", "train", "star", "eval"];
    let hashes = |text: &str, dtype: Option<&str>| -> Vec<BTreeMap<String, String>> {
        malt_config::ModelOverrides {
            device: None,
            dtype: dtype.map(str::to_owned),
        }
        .install()
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stages.toml");
        std::fs::write(&path, text).unwrap();
        let mut s = malt_pipeline::session::Session::open(&path).unwrap();
        let round = malt_layout::RunLayout::new(&s.config.run.dir).round(1);
        let h = vec![
            named_hashes(
                &generate::Generate::inputs(&mut s, &round).unwrap(),
                generate::Generate::VERSION,
            ),
            named_hashes(
                &credit::Credit::inputs(&mut s, &round).unwrap(),
                credit::Credit::VERSION,
            ),
            named_hashes(
                &train::Train::inputs(&mut s, &round).unwrap(),
                train::Train::VERSION,
            ),
            named_hashes(
                &star::Star::inputs(&mut s, &round).unwrap(),
                star::Star::VERSION,
            ),
            named_hashes(
                &eval::Eval::inputs(&mut s, &round).unwrap(),
                eval::Eval::VERSION,
            ),
        ];
        h.into_iter().map(Result::unwrap).collect()
    };
    let before = hashes(&base, None);
    assert_eq!(before, hashes(&base, None), "inputs are not deterministic");
    let edit = |from: &str, to: &str| {
        assert!(base.contains(from), "{from:?} is not in the config");
        base.replacen(from, to, 1)
    };
    // A plugin whose bytes differ (a custom section appended) but whose behaviour does not.
    let plugin_bytes = || {
        let mut bytes = std::fs::read(&fx.plugin).unwrap();
        bytes.extend_from_slice(&[0, 7, 5, b'm', b'a', b'l', b't', b'!', 1]);
        std::fs::write(&wasm, bytes).unwrap();
        base.clone()
    };
    type Case<'a> = (
        &'a str,
        Box<dyn Fn() -> String + 'a>,
        Option<&'a str>,
        &'a [&'a str],
    );
    let cases: Vec<Case> = vec![
        (
            "a comment",
            Box::new(|| format!("# a note\n{base}")),
            None,
            &[],
        ),
        (
            "[serve] addr",
            Box::new(|| format!("{base}\n[serve]\naddr = \"127.0.0.1:9999\"\n")),
            None,
            &[],
        ),
        (
            "[train] gradient_checkpointing",
            Box::new(|| {
                edit(
                    "[train.lora]",
                    "[train]\ngradient_checkpointing = true\n\n[train.lora]",
                )
            }),
            None,
            &[],
        ),
        (
            "[credit] theta",
            Box::new(|| edit("theta = 0.5", "theta = 0.7")),
            None,
            &["credit"],
        ),
        (
            "--dtype bf16",
            Box::new(|| base.clone()),
            Some("bf16"),
            &["generate", "train", "star", "eval"],
        ),
        (
            "[model] dtype",
            Box::new(|| edit("[model]\n", "[model]\ndtype = \"bf16\"\n")),
            None,
            &["generate", "train", "star", "eval"],
        ),
        (
            "the verifier's temperature",
            Box::new(|| {
                edit(
                    "name = \"verifier\"\nbranches = 3\nmax_new_tokens = 24\ntemperature = 1.0",
                    "name = \"verifier\"\nbranches = 3\nmax_new_tokens = 24\ntemperature = 0.9",
                )
            }),
            None,
            &["generate", "eval"],
        ),
        (
            "the generator's max_new_tokens",
            Box::new(|| {
                edit(
                    "name = \"generator\"\nbranches = 3\nmax_new_tokens = 24",
                    "name = \"generator\"\nbranches = 3\nmax_new_tokens = 20",
                )
            }),
            None,
            &["generate", "star", "eval"],
        ),
        (
            "a plugin's bytes",
            Box::new(plugin_bytes),
            None,
            &["generate", "credit", "eval"],
        ),
        (
            "a plugin's options",
            Box::new(|| edit("target = \"even\"", "target = \"odd\"")),
            None,
            &["generate", "credit", "eval"],
        ),
        (
            "[eval] questions",
            Box::new(|| edit("questions = 4", "questions = 3")),
            None,
            &["eval"],
        ),
        (
            "[eval] std",
            Box::new(|| edit("questions = 4", "questions = 4\nstd = \"population\"")),
            None,
            &["eval"],
        ),
        (
            "[train.sft] max_steps",
            Box::new(|| edit("[train.sft]\nmax_steps = 12", "[train.sft]\nmax_steps = 10")),
            None,
            &["train", "star"],
        ),
        (
            "[dataset] train",
            Box::new(|| edit("train = 8", "train = 7")),
            None,
            &["generate", "eval"],
        ),
        (
            "[run] seed",
            Box::new(|| edit("seed = 3", "seed = 4")),
            None,
            &["generate", "train", "star", "eval"],
        ),
        (
            "[star] data",
            Box::new(|| format!("{base}\n[star]\ndata = \"sample\"\n")),
            None,
            &["star", "eval"],
        ),
        (
            "[credit] truncated",
            Box::new(|| edit("truncated = \"keep\"", "truncated = \"exclude\"")),
            None,
            &["credit"],
        ),
        (
            "[train.dpo] lora_dropout",
            Box::new(|| edit("[train.dpo]\n", "[train.dpo]\nlora_dropout = true\n")),
            None,
            &["train", "star"],
        ),
    ];
    for (what, text, dtype, want) in &cases {
        let after = hashes(&text(), *dtype);
        // Back to the plugin as built, for the next case.
        std::fs::copy(&fx.plugin, &wasm).unwrap();
        let changed: Vec<String> = stages
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| b != a)
            .map(|(name, (b, a))| {
                let keys: Vec<&String> = b
                    .keys()
                    .chain(a.keys())
                    .filter(|k| b.get(*k) != a.get(*k))
                    .collect();
                format!("{name} {keys:?}")
            })
            .collect();
        let names: Vec<&str> = changed
            .iter()
            .map(|c| c.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(&names, want, "{what}: recomputed {changed:?}");
    }
    malt_config::ModelOverrides::default().install().unwrap();
}
