//! End to end: `malt run` on a tiny random model, a tiny generated dataset and the `parity`
//! fixture plugin (reward 1 when the output's hash is even, so noise yields positives and
//! negatives at every agent and every training phase has data).
//!
//! - A: one uninterrupted run; B: killed (SIGKILL) during generation and again during training,
//!   then resumed to completion. Every tree is stored once and B's report equals A's.
//! - report.json: every default system (single, untrained, STaR, MALT, the three ablations),
//!   per-turn accuracy, flips, per-seed values, paired comparisons, and figures that agree
//!   with each other and with the logged attempts; STaR's data count as its files hold it.
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
