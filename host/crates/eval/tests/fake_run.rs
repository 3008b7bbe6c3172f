//! End-to-end evaluations over a deterministic fake chain runner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use malt_eval::{
    majority_vote, report_complete_seeds, rerender, run_evaluation, select_subset, AttemptRecord,
    ChainError, ChainRequest, ChainRunner, ChainTrace, EvalError, EvalPlan, Outcome, Report,
    ReportContext, RoundContext, RoundRow, RoundSummary, SplitMix64, StdConvention, System, Turn,
    RESULTS_FILE,
};
use serde_json::Value;

/// Deterministic in the request alone (never in call order), so interrupted and uninterrupted
/// runs must produce identical logs.
#[derive(Default)]
struct FakeRunner {
    calls: usize,
    /// Return `Fatal` on this call number (0-based), simulating a crash midway.
    fail_at: Option<usize>,
    requests: Vec<ChainRequest>,
}

fn answer(idx: usize, correct: bool, wrong_pick: u64) -> Outcome {
    // Wrong answers come from a two-value set so wrong attempts can agree and win votes.
    let answer = if correct {
        format!("{idx}")
    } else {
        format!("{}", idx + 1 + (wrong_pick % 2) as usize)
    };
    Outcome::Answer {
        answer: format!(" {answer}"),
        key: None,
        correct,
    }
}

impl ChainRunner for FakeRunner {
    fn run_chain(&mut self, req: &ChainRequest) -> Result<ChainTrace, ChainError> {
        if self.fail_at == Some(self.calls) {
            return Err(ChainError::Fatal("simulated crash".into()));
        }
        self.calls += 1;
        self.requests.push(req.clone());
        let vid = match req.system.as_str() {
            "single" => 1u64,
            "untrained_chain" => 2,
            "trained_chain" => 3,
            other => panic!("the fake runs no system `{other}`"),
        };
        let mut rng = SplitMix64::new(req.sample_seed ^ vid.wrapping_mul(0x1234_5678_9ABC_DEF1));
        let mut u = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (err, unparse, g, r, pick) = (u(), u(), u(), u(), u());
        if err < 0.04 {
            return Err(ChainError::Item(format!(
                "context overflow on example {}",
                req.example_idx
            )));
        }
        let pick = (pick * 1000.0) as u64;
        let gen_ok = g < 0.5;
        let gen = Turn {
            agent: "generator".into(),
            output: format!("Reasoning...\nFinal Answer: {}", req.example_idx),
            outcome: answer(req.example_idx, gen_ok, pick),
            skipped: false,
            truncated: false,
        };
        if req.system == "single" {
            let mut gen = gen;
            if unparse < 0.06 {
                gen.outcome = Outcome::Unparseable;
            }
            return Ok(ChainTrace { turns: vec![gen] });
        }
        let (keep, fix) = match req.system.as_str() {
            "trained_chain" => (0.95, 0.45),
            _ => (0.85, 0.25),
        };
        let ref_ok = if gen_ok { r < keep } else { r < fix };
        let refine = if unparse < 0.06 {
            Outcome::Unparseable
        } else {
            answer(req.example_idx, ref_ok, pick / 7)
        };
        Ok(ChainTrace {
            turns: vec![
                gen,
                Turn {
                    agent: "verifier".into(),
                    output: "The solution is <probably> right & complete.".into(),
                    outcome: Outcome::NoAnswer,
                    skipped: false,
                    truncated: false,
                },
                Turn {
                    agent: "refiner".into(),
                    output: "Final Answer: x".into(),
                    outcome: refine,
                    skipped: false,
                    truncated: false,
                },
            ],
        })
    }
}

fn plan(pool: usize, questions: usize, seeds: &[u64]) -> EvalPlan {
    EvalPlan {
        pool_size: pool,
        questions,
        seeds: seeds.to_vec(),
        majority_k: 3,
        systems: vec![
            System::single(),
            System::untrained_chain(),
            System::trained_chain(),
        ],
        std: StdConvention::Sample,
    }
}

fn manifest() -> ReportContext {
    ReportContext {
        manifest: serde_json::json!({"config_sha256": "abc", "adapters": ["generator", "verifier", "refiner"]}),
        ..ReportContext::default()
    }
}

fn read_records(dir: &Path) -> Vec<AttemptRecord> {
    std::fs::read_to_string(dir.join(RESULTS_FILE))
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

#[test]
fn full_run_figures_are_consistent_with_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(200, 40, &[1, 2, 3, 4]);
    let mut runner = FakeRunner::default();
    let report = run_evaluation(&mut runner, &plan, dir.path(), &manifest(), false).expect("run");

    // Every planned attempt is logged exactly once.
    let records = read_records(dir.path());
    assert_eq!(records.len(), 4 * 40 * 3 * 3);
    let by_key: BTreeMap<_, _> = records.iter().map(|r| (r.key(), r)).collect();
    assert_eq!(by_key.len(), records.len());

    // All systems ran on the same, seed-determined questions.
    for &seed in &plan.seeds {
        let subset: BTreeSet<usize> = select_subset(200, 40, seed)
            .expect("subset")
            .into_iter()
            .collect();
        for v in &plan.systems {
            let seen: BTreeSet<usize> = records
                .iter()
                .filter(|r| r.seed == seed && r.system == v.id)
                .map(|r| r.example_idx)
                .collect();
            assert_eq!(seen, subset);
        }
    }

    let json = read_json(&dir.path().join("report.json"));
    assert_eq!(json["manifest"], manifest().manifest);
    assert_eq!(json["format"], 4);
    for key in [
        "plan",
        "subsets",
        "systems",
        "per_turn",
        "flips",
        "counts",
        "comparisons",
        "answers",
    ] {
        assert!(json.get(key).is_some(), "report.json lacks {key}");
    }
    let systems = json["systems"].as_array().expect("systems");
    let ids: Vec<&str> = systems
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "single",
            "single_mv3",
            "untrained_chain",
            "untrained_chain_mv3",
            "trained_chain",
            "trained_chain_mv3"
        ]
    );

    // Recompute every per-seed accuracy from the JSONL alone.
    for s in systems {
        let system = s["system"].as_str().expect("system").to_string();
        let mv = !s["majority_k"].is_null();
        let mut per_seed = Vec::new();
        for ps in s["per_seed"].as_array().expect("per_seed") {
            let seed = ps["seed"].as_u64().expect("seed");
            let mut correct = 0;
            let subset = select_subset(200, 40, seed).expect("subset");
            for &idx in &subset {
                let attempts: Vec<&AttemptRecord> = (0..3)
                    .map(|a| {
                        *by_key
                            .get(&malt_eval::AttemptKey {
                                seed,
                                system: system.clone(),
                                example_idx: idx,
                                attempt: a,
                            })
                            .expect("attempt logged")
                    })
                    .collect();
                let ok = if mv {
                    let votes: Vec<Option<&str>> = attempts
                        .iter()
                        .map(|r| r.final_outcome().and_then(Outcome::vote_key))
                        .collect();
                    majority_vote(&votes)
                        .and_then(|w| attempts[w].final_outcome())
                        .is_some_and(Outcome::is_correct)
                } else {
                    attempts[0].final_outcome().is_some_and(Outcome::is_correct)
                };
                correct += usize::from(ok);
            }
            assert_eq!(
                ps["correct"].as_u64(),
                Some(correct as u64),
                "{} seed {seed}",
                s["id"]
            );
            assert_eq!(ps["total"].as_u64(), Some(40));
            assert!((f(&ps["accuracy_pct"]) - 100.0 * correct as f64 / 40.0).abs() < 1e-9);
            per_seed.push(100.0 * correct as f64 / 40.0);
        }
        let mean = per_seed.iter().sum::<f64>() / 4.0;
        let var = per_seed.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0;
        assert!((f(&s["mean_pct"]) - mean).abs() < 1e-9);
        assert!((f(&s["std_pct"]) - var.sqrt()).abs() < 1e-9);
    }

    // Per-turn: verifier is n/a, the last answering turn equals the system accuracy, the first
    // turn of the untrained chain is the generator.
    for (vt, pair) in report.per_turn.iter().zip(report.systems.chunks(2)) {
        let answering: Vec<_> = vt.turns.iter().filter(|t| t.answering).collect();
        let last = answering.last().expect("an answering turn");
        let acc = last.accuracy.as_ref().expect("acc");
        let mv = last.mv_accuracy.as_ref().expect("mv acc");
        let plain_seeds: Vec<f64> = pair[0].per_seed.iter().map(|a| a.accuracy_pct).collect();
        let mv_seeds: Vec<f64> = pair[1].per_seed.iter().map(|a| a.accuracy_pct).collect();
        assert_eq!(acc.per_seed_pct, plain_seeds);
        assert_eq!(mv.per_seed_pct, mv_seeds);
        if vt.system != "single" {
            assert_eq!(vt.turns.len(), 3);
            assert_eq!(vt.turns[1].agent, "verifier");
            assert!(!vt.turns[1].answering && vt.turns[1].accuracy.is_none());
        }
    }
    let pt = &json["per_turn"][1]["turns"][1];
    assert!(pt["accuracy"].is_null() && pt["mv_accuracy"].is_null());

    // Flips: cells sum to the non-errored items, and net flips equal the accuracy change.
    for (fl, vt) in report.flips.iter().zip(&report.per_turn) {
        if vt.system == "single" {
            assert!(fl.transitions.is_empty());
            continue;
        }
        assert_eq!(fl.transitions.len(), 1);
        let t = &fl.transitions[0];
        assert_eq!(
            (t.from_agent.as_str(), t.to_agent.as_str()),
            ("generator", "refiner")
        );
        assert_eq!(
            t.wrong_to_right + t.right_to_wrong + t.right_to_right + t.wrong_to_wrong,
            fl.items
        );
        let firsts: Vec<_> = records
            .iter()
            .filter(|r| r.system == vt.system && r.attempt == 0)
            .collect();
        let correct_at = |turn: usize| {
            firsts
                .iter()
                .filter(|r| r.outcome_at(turn).is_some_and(Outcome::is_correct))
                .count() as i64
        };
        assert_eq!(
            t.wrong_to_right as i64 - t.right_to_wrong as i64,
            correct_at(2) - correct_at(0)
        );
        assert_eq!(fl.items, firsts.iter().filter(|r| !r.is_errored()).count());
    }

    // Counts: errored attempts are reported, and errored items count as wrong.
    let errored_total: usize = report.counts.iter().map(|c| c.errored_attempts).sum();
    assert_eq!(
        errored_total,
        records.iter().filter(|r| r.is_errored()).count()
    );
    assert!(errored_total > 0, "the fake should produce some errors");
    assert!(report.counts.iter().any(|c| c.unparseable_attempts > 0));
    for s in &report.systems {
        if s.majority_k.is_none() {
            let errored_first = records
                .iter()
                .filter(|r| r.system == s.system && r.attempt == 0 && r.is_errored())
                .count();
            assert_eq!(s.errored, errored_first);
        }
    }

    // Reports and plots exist and the SVGs are XML.
    for name in ["report.md", "accuracy.svg", "per_turn.svg"] {
        let text = std::fs::read_to_string(dir.path().join(name)).expect(name);
        assert!(!text.is_empty());
    }
    let svg = std::fs::read_to_string(dir.path().join("per_turn.svg")).expect("svg");
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn report_md_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run_evaluation(
        &mut FakeRunner::default(),
        &plan(50, 10, &[11, 12]),
        dir.path(),
        &manifest(),
        false,
    )
    .expect("run");
    insta::assert_snapshot!(malt_eval::render_markdown(&report));
}

#[test]
fn resume_after_crash_and_torn_line_gives_identical_reports() {
    let plan = plan(60, 12, &[5, 6, 7]);
    let full = tempfile::tempdir().expect("tempdir");
    run_evaluation(
        &mut FakeRunner::default(),
        &plan,
        full.path(),
        &manifest(),
        false,
    )
    .expect("uninterrupted run");

    let resumed = tempfile::tempdir().expect("tempdir");
    let mut crashing = FakeRunner {
        fail_at: Some(100),
        ..FakeRunner::default()
    };
    let err = run_evaluation(&mut crashing, &plan, resumed.path(), &manifest(), false)
        .expect_err("crash");
    assert!(matches!(err, EvalError::Runner(_)));
    assert_eq!(read_records(resumed.path()).len(), 100);
    assert!(!resumed.path().join("report.json").exists());

    // A crash in the middle of a write leaves a torn last line.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(resumed.path().join(RESULTS_FILE))
            .expect("open");
        f.write_all(b"{\"seed\":5,\"variant\":\"sin")
            .expect("write");
    }

    let mut second = FakeRunner::default();
    run_evaluation(&mut second, &plan, resumed.path(), &manifest(), false).expect("resume");
    let expected = 3 * 12 * 3 * 3;
    assert_eq!(second.calls, expected - 100, "only missing attempts rerun");

    let lines = read_records(resumed.path());
    assert_eq!(lines.len(), expected);
    let keys: BTreeSet<_> = lines.iter().map(AttemptRecord::key).collect();
    assert_eq!(keys.len(), expected, "no duplicate lines");

    for name in ["report.md", "report.json", "accuracy.svg", "per_turn.svg"] {
        assert_eq!(
            std::fs::read(full.path().join(name)).expect("full"),
            std::fs::read(resumed.path().join(name)).expect("resumed"),
            "{name} differs after resume"
        );
    }

    // A third run over a complete log calls nothing and rewrites the same report.
    let mut idle = FakeRunner::default();
    run_evaluation(&mut idle, &plan, resumed.path(), &manifest(), false).expect("rerun");
    assert_eq!(idle.calls, 0);
    assert_eq!(read_records(resumed.path()).len(), expected);
}

#[test]
fn partial_report_covers_complete_seeds_and_leaves_the_log_alone() {
    let plan = plan(60, 12, &[5, 6, 7]);
    let dir = tempfile::tempdir().expect("tempdir");
    let per_seed = 12 * 3 * 3;

    // Nothing complete yet: the error counts the first seed's missing attempts.
    let mut early = FakeRunner {
        fail_at: Some(50),
        ..FakeRunner::default()
    };
    run_evaluation(&mut early, &plan, dir.path(), &manifest(), false).expect_err("crash");
    match report_complete_seeds(&plan, dir.path(), &manifest()) {
        Err(EvalError::Incomplete { missing, .. }) => assert_eq!(missing, per_seed - 50),
        other => panic!("expected Incomplete, got {other:?}"),
    }

    // Seed 5 complete, seed 6 half done, and a torn line being written.
    let mut later = FakeRunner {
        fail_at: Some(per_seed + 30 - 50),
        ..FakeRunner::default()
    };
    run_evaluation(&mut later, &plan, dir.path(), &manifest(), false).expect_err("crash");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(RESULTS_FILE))
            .expect("open");
        f.write_all(b"{\"seed\":6,\"variant\":\"sin")
            .expect("write");
    }
    let log_before = std::fs::read(dir.path().join(RESULTS_FILE)).expect("log");
    let report = report_complete_seeds(&plan, dir.path(), &manifest()).expect("partial");
    assert_eq!(
        std::fs::read(dir.path().join(RESULTS_FILE)).expect("log"),
        log_before,
        "the log is only read"
    );
    assert!(!dir.path().join("report.md").exists());

    // Equal to a full evaluation of seed 5 alone.
    let alone = tempfile::tempdir().expect("tempdir");
    let want = run_evaluation(
        &mut FakeRunner::default(),
        &plan_seeds(&plan, &[5]),
        alone.path(),
        &manifest(),
        false,
    )
    .expect("seed 5 alone");
    assert_eq!(
        serde_json::to_value(&report).expect("json"),
        serde_json::to_value(&want).expect("json")
    );
    for name in ["report.md", "report.json", "accuracy.svg", "per_turn.svg"] {
        assert_eq!(
            std::fs::read(dir.path().join("partial").join(name)).expect("partial"),
            std::fs::read(alone.path().join(name)).expect("alone"),
            "{name}"
        );
    }
}

fn plan_seeds(plan: &EvalPlan, seeds: &[u64]) -> EvalPlan {
    EvalPlan {
        seeds: seeds.to_vec(),
        ..plan.clone()
    }
}

#[test]
fn requests_carry_plan_seeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runner = FakeRunner::default();
    let plan = EvalPlan {
        majority_k: 2,
        systems: vec![System::single()],
        ..plan(30, 5, &[9])
    };
    let report = run_evaluation(
        &mut runner,
        &plan,
        dir.path(),
        &ReportContext::default(),
        false,
    )
    .expect("run");
    assert_eq!(runner.requests.len(), 10);
    for r in &runner.requests {
        assert_eq!(r.eval_seed, 9);
        assert!(r.attempt < 2);
        assert_eq!(
            r.sample_seed,
            malt_eval::derive_sample_seed(9, r.example_idx, r.attempt)
        );
    }
    // One seed: std is undefined, not zero.
    assert!(report.systems.iter().all(|s| s.std_pct.is_none()));
}

#[test]
fn invalid_plans_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = FakeRunner::default();
    let cases = [
        plan(10, 11, &[1]),
        plan(10, 5, &[]),
        plan(10, 5, &[1, 1]),
        plan(10, 0, &[1]),
        EvalPlan {
            majority_k: 0,
            ..plan(10, 5, &[1])
        },
    ];
    for p in &cases {
        assert!(run_evaluation(&mut r, p, dir.path(), &ReportContext::default(), false).is_err());
    }
    assert_eq!(r.calls, 0);
}

/// Writes a sample evaluation to `$MALT_EVAL_DEMO_DIR` for eyeballing the report and plots:
/// `MALT_EVAL_DEMO_DIR=/tmp/demo cargo test -p malt-eval --test fake_run -- --ignored`.
#[test]
#[ignore]
fn demo_output() {
    let Ok(dir) = std::env::var("MALT_EVAL_DEMO_DIR") else {
        return;
    };
    run_evaluation(
        &mut FakeRunner::default(),
        &plan(500, 100, &[1, 2, 3, 4]),
        Path::new(&dir),
        &manifest(),
        true,
    )
    .expect("demo run");
    // The generic line chart as the trainer would use it for loss curves.
    use malt_eval::svg::{line_chart, LineChart, Series};
    let curve = |scale: f64, name: &str, dashed: bool| Series {
        name: name.into(),
        points: (0..=1500)
            .step_by(10)
            .map(|s| (s as f64, scale * (0.35 + 2.0 / (1.0 + s as f64 / 80.0))))
            .collect(),
        dashed,
        colour: None,
    };
    let svg = line_chart(&LineChart {
        title: "SFT loss (refiner)".into(),
        x_label: "optimizer step".into(),
        y_label: "loss".into(),
        series: vec![curve(1.0, "train", false), curve(1.1, "validation", true)],
        x_ticks: None,
        y_range: None,
    });
    std::fs::write(Path::new(&dir).join("loss.svg"), svg).expect("write loss.svg");
}

/// Right or wrong by a fixed table: the reference system answers questions 0-7 right; the
/// compared one 0, 1, 8 and 9 (seed 1) or 0, 1 and 8 (seed 2).
struct TableRunner;

impl ChainRunner for TableRunner {
    fn run_chain(&mut self, req: &ChainRequest) -> Result<ChainTrace, ChainError> {
        let i = req.example_idx;
        let correct = match req.system.as_str() {
            "trained_chain" => i < 8,
            "single" if req.eval_seed == 1 => matches!(i, 0 | 1 | 8 | 9),
            _ => matches!(i, 0 | 1 | 8),
        };
        Ok(ChainTrace {
            turns: vec![Turn {
                agent: "generator".into(),
                output: String::new(),
                outcome: Outcome::Answer {
                    answer: if correct { "right" } else { "wrong" }.into(),
                    key: None,
                    correct,
                },
                skipped: false,
                truncated: false,
            }],
        })
    }
}

#[test]
fn paired_comparisons_match_hand_computed_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = EvalPlan {
        pool_size: 10,
        questions: 10,
        seeds: vec![1, 2],
        majority_k: 1,
        systems: vec![System::single(), System::trained_chain()],
        std: StdConvention::Sample,
    };
    let report = run_evaluation(
        &mut TableRunner,
        &plan,
        dir.path(),
        &ReportContext::default(),
        false,
    )
    .expect("run");
    let c = report
        .comparisons
        .iter()
        .find(|c| c.row == "single_mv1")
        .expect("single + MV@1 compared");
    assert_eq!(c.reference, "trained_chain_mv1");
    // Seed 1: reference-only {2..7} = 6, row-only {8, 9} = 2; seed 2: 6 and {8} = 1.
    assert_eq!((c.pairs, c.reference_only, c.row_only), (20, 12, 3));
    assert_eq!(c.sign_test_p, None, "format 3 has no per-pair test");
    // Both seeds draw all ten questions. Pooled: 2..7 favour the reference twice each (six
    // questions), 8 favours the row twice and 9 once (two questions), 0 and 1 are ties.
    let t = c.test.as_ref().expect("format 3 tests over questions");
    assert_eq!((t.questions, t.reference_wins, t.row_wins), (10, 6, 2));
    // n = 8, min = 2: 2 * (1 + 8 + 28) / 2^8 = 74 / 256 (per pair: 1152 / 32768 = 0.035).
    assert!((t.p - 74.0 / 256.0).abs() < 1e-15);
    // Holm over the three rows: single and single + MV@1 (k = 1: the same answers) at 74/256,
    // the reference's plain row at 1: 3 * 74/256 for the smallest, raised to it for the second.
    assert!((t.holm_p - 222.0 / 256.0).abs() < 1e-15);
    // Accuracy differences 80 - 40 and 80 - 30: mean 45, sample std sqrt(50).
    assert_eq!(c.diff_per_seed_pct, vec![40.0, 50.0]);
    assert!((c.diff_mean_pct - 45.0).abs() < 1e-12);
    assert!((c.diff_std_pct.expect("two seeds") - 50f64.sqrt()).abs() < 1e-12);
    // The plain reference row against its own MV@1 row: identical, no evidence.
    let own = report
        .comparisons
        .iter()
        .find(|c| c.row == "trained_chain")
        .expect("plain row compared");
    assert_eq!((own.reference_only, own.row_only), (0, 0));
    let own = own.test.as_ref().expect("test");
    assert_eq!(
        (own.reference_wins, own.row_wins, own.p, own.holm_p),
        (0, 0, 1.0, 1.0)
    );
    assert_eq!(report.comparisons.len(), 3, "every row but the reference");
    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("md");
    assert!(
        md.contains("| Single agent + MV@1 | 10 | 6 | 2 | 45.00 ± 7.07 | 0.2891 | 0.8672 |"),
        "{md}"
    );
    assert!(md.contains("mean ± sample std (n-1) over seeds"), "{md}");

    // The paper's convention, re-rendered from report.json alone: differences 40 and 50 have a
    // population std of 5; the single agent's 40 and 30 too; the reference's 80 and 80, 0.
    let mut population: Report = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("json"),
    )
    .expect("report");
    population.plan.std = StdConvention::Population;
    let population = rerender(&population).expect("rerender");
    let c = population
        .comparisons
        .iter()
        .find(|c| c.row == "single_mv1")
        .expect("compared");
    assert_eq!(c.diff_std_pct, Some(5.0));
    let row = |id: &str| population.systems.iter().find(|s| s.id == id).expect(id);
    assert_eq!(row("single").std_pct, Some(5.0));
    assert_eq!(row("trained_chain_mv1").std_pct, Some(0.0));
    let turn = &population.per_turn[0].turns[0];
    assert_eq!(turn.accuracy.as_ref().expect("answers").std_pct, Some(5.0));
    // Only the stds changed.
    assert_eq!(c.test, report.comparisons[1].test);
    let md = malt_eval::render_markdown(&population);
    assert!(md.contains("mean ± population std (n) over seeds"), "{md}");
    assert!(
        md.contains("| Single agent + MV@1 | 10 | 6 | 2 | 45.00 ± 5.00 | 0.2891 | 0.8672 |"),
        "{md}"
    );
}

/// `report.json` alone gives the report back: the rows and comparisons from its final answers,
/// without the result log.
#[test]
fn a_report_re_renders_from_its_json_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let earlier = RoundSummary {
        round: 1,
        theta: 0.5,
        rows: vec![RoundRow {
            id: "single".into(),
            label: "Single agent".into(),
            mean_pct: 12.5,
            std_pct: Some(1.0),
        }],
    };
    let ctx = ReportContext {
        round: Some(RoundContext {
            round: 2,
            theta: 0.6,
            earlier: vec![earlier],
        }),
        ..manifest()
    };
    // 4 seeds of 40 of 100 questions: subsets overlap, so the pooling matters.
    let plan = plan(100, 40, &[1, 2, 3, 4]);
    let report =
        run_evaluation(&mut FakeRunner::default(), &plan, dir.path(), &ctx, false).expect("run");
    std::fs::remove_file(dir.path().join(RESULTS_FILE)).expect("the log goes");
    let text = std::fs::read_to_string(dir.path().join("report.json")).expect("json");
    let stored: Report = serde_json::from_str(&text).expect("report");
    assert_eq!(stored, report, "report.json holds the whole report");
    let again = rerender(&stored).expect("rerender");
    assert_eq!(again, report);
    assert_eq!(
        malt_eval::render_markdown(&again),
        std::fs::read_to_string(dir.path().join("report.md")).expect("md")
    );
    let repeats: usize = report
        .comparisons
        .iter()
        .filter_map(|c| c.test.as_ref())
        .map(|t| report.plan.seeds.len() * report.plan.questions - t.questions)
        .sum();
    assert!(repeats > 0, "some question is drawn by two seeds");

    // The answers are what decides: flipping one stored answer changes the re-rendered row.
    let mut edited = stored.clone();
    let first = &mut edited.answers[0].per_seed[0][0][0];
    first.correct = !first.correct;
    let changed = rerender(&edited).expect("rerender");
    assert_ne!(
        changed.systems[0].per_seed[0],
        report.systems[0].per_seed[0]
    );
}

#[test]
fn re_rendering_needs_the_answers_of_format_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run_evaluation(
        &mut FakeRunner::default(),
        &plan(50, 10, &[1, 2]),
        dir.path(),
        &manifest(),
        false,
    )
    .expect("run");
    let old = Report {
        format: 2,
        answers: Vec::new(),
        ..report.clone()
    };
    let err = rerender(&old).expect_err("no answers").to_string();
    assert!(
        err.contains("format 2 has no final answers") && err.contains("results.jsonl"),
        "{err}"
    );
    let mut short = report.clone();
    short.answers[1].per_seed[1].pop();
    let err = rerender(&short).expect_err("a question short").to_string();
    assert!(
        err.contains("system `untrained_chain`, seed 2: 9 questions answered, the subset has 10"),
        "{err}"
    );
}
