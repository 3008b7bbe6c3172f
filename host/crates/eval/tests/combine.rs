//! Combining reports (`malt compare`): the reports of separate evaluations on the same plan,
//! combined, give the report of one evaluation of all their systems.

use std::collections::HashMap;

use malt_eval::training::{AgentCurve, CurvePoint, TrainingCurve};
use malt_eval::{
    combine, render_markdown, run_evaluation, ChainError, ChainRequest, ChainRunner, ChainTrace,
    EvalPlan, Outcome, Report, ReportContext, Source, SplitMix64, StdConvention, System,
    SystemBudget, Table, Turn,
};

/// Answers that depend on a behaviour (what a system's weights would be) and the request, never
/// on the system's id or the call order: two runs of one behaviour answer alike.
struct Behaviours(HashMap<String, u64>);

impl ChainRunner for Behaviours {
    fn run_chain(&mut self, req: &ChainRequest) -> Result<ChainTrace, ChainError> {
        let behaviour = self.0[&req.system];
        let mut rng = SplitMix64::new(req.sample_seed ^ behaviour.wrapping_mul(0x9E37_79B9));
        let mut u = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let skill = 0.3 + 0.15 * behaviour as f64;
        let answer = |ok: bool, pick: f64| Outcome::Answer {
            answer: if ok {
                "right".into()
            } else {
                format!("wrong{}", (pick * 2.0) as u32)
            },
            key: None,
            correct: ok,
        };
        let (first, pick, second) = (u() < skill, u(), u() < skill + 0.1);
        let turn = |agent: &str, outcome| Turn {
            agent: agent.into(),
            output: String::new(),
            outcome,
            skipped: false,
            truncated: false,
        };
        let mut turns = vec![turn("generator", answer(first, pick))];
        if behaviour > 0 {
            turns.push(turn("refiner", answer(second, pick)));
        }
        Ok(ChainTrace { turns })
    }
}

fn plan(systems: Vec<System>) -> EvalPlan {
    EvalPlan {
        pool_size: 30,
        questions: 12,
        seeds: vec![0, 1, 2],
        majority_k: 3,
        systems,
        std: StdConvention::Sample,
    }
}

fn budget(system: &str, sampled: u64) -> SystemBudget {
    SystemBudget {
        system: system.into(),
        sampled_tokens: sampled,
        trained_tokens: 2 * sampled,
        optimizer_steps: 3,
        train_examples: 4,
        phases: vec!["online (3 steps)".into()],
    }
}

/// A trained system's training curve, its values told apart by `b`.
fn curve(system: &str, b: u64) -> TrainingCurve {
    TrainingCurve {
        system: system.into(),
        settings: format!("behaviour {b}"),
        agents: vec![AgentCurve {
            agent: "generator".into(),
            trained: true,
            measure: "reward".into(),
            points: (1..=4)
                .map(|step| CurvePoint {
                    step,
                    sampled_tokens: 100 * u64::from(step),
                    value: b as f64 / 10.0,
                })
                .collect(),
        }],
    }
}

/// One evaluation of `systems` (id, behaviour) with their budgets and curves.
fn evaluate(systems: &[(System, u64)], manifest: serde_json::Value) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let behaviours = systems
        .iter()
        .map(|(s, b)| (s.id.clone(), *b))
        .collect::<HashMap<_, _>>();
    let ctx = ReportContext {
        manifest,
        budgets: systems
            .iter()
            .map(|(s, b)| budget(&s.id, 1000 * b))
            .collect(),
        training: systems
            .iter()
            .filter(|(_, b)| *b > 0)
            .map(|(s, b)| curve(&s.id, *b))
            .collect(),
        ..ReportContext::default()
    };
    let plan = plan(systems.iter().map(|(s, _)| s.clone()).collect());
    run_evaluation(&mut Behaviours(behaviours), &plan, dir.path(), &ctx, false).expect("run")
}

fn online(id: &str) -> System {
    System::new(id, "Online MALT", Table::Main)
}

fn source(name: &str, report: &Report) -> Source {
    Source {
        name: name.into(),
        report: report.clone(),
    }
}

/// Three runs: offline (single, MALT as the reference), online (single, online) and a second
/// online seed (single, online with other weights).
fn three_runs() -> [Report; 3] {
    let manifest = |sha: &str| serde_json::json!({ "config_sha256": sha, "model_sha256": "m" });
    [
        evaluate(
            &[(System::single(), 0), (System::trained_chain(), 3)],
            manifest("offline"),
        ),
        evaluate(
            &[(System::single(), 0), (online("online"), 1)],
            manifest("online"),
        ),
        evaluate(
            &[(System::single(), 0), (online("online"), 2)],
            serde_json::json!({ "config_sha256": "seed1", "model_sha256": "other" }),
        ),
    ]
}

#[test]
fn combined_reports_equal_one_evaluation_of_every_system() {
    let [offline, on0, on1] = three_runs();
    let combined = combine(
        &[
            source("offline", &offline),
            source("on0", &on0),
            source("on1", &on1),
        ],
        None,
    )
    .expect("combine");

    // The same four systems evaluated at once: single and MALT keep their ids; the two online
    // systems, whose answers differ, are told apart by their reports' names.
    let together = evaluate(
        &[
            (System::single(), 0),
            (System::trained_chain(), 3),
            (
                System::new("on0/online", "Online MALT (on0)", Table::Main),
                1,
            ),
            (
                System::new("on1/online", "Online MALT (on1)", Table::Main),
                2,
            ),
        ],
        serde_json::Value::Null,
    );
    let ids = |r: &Report| r.systems.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&combined), ids(&together));
    assert_eq!(combined.systems, together.systems, "rows");
    assert_eq!(combined.comparisons, together.comparisons, "tests and Holm");
    assert_eq!(combined.per_turn, together.per_turn);
    assert_eq!(combined.flips, together.flips);
    assert_eq!(combined.counts, together.counts);
    assert_eq!(combined.answers, together.answers);
    // The budgets follow their systems (each run's own figures, renamed).
    assert_eq!(combined.budgets, together.budgets);
    // So do the training curves, and the report draws them.
    assert_eq!(combined.training, together.training);
    assert_eq!(combined.training.len(), 3);
    let md = render_markdown(&combined);
    assert!(
        md.contains("| Online MALT (on1) | generator (reward) | 4 |"),
        "{md}"
    );

    // Provenance: who gave which row, what was deduplicated, what differs from the first.
    let s = &combined.sources;
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].systems, ["single", "trained_chain"]);
    assert_eq!(s[1].systems, ["on0/online"]);
    assert_eq!(s[1].same_as_earlier, ["single"]);
    assert!(s[1].differs.is_empty(), "{:?}", s[1].differs);
    assert_eq!(s[2].differs, ["model_sha256 \"other\""]);
    assert_eq!(s[2].manifest["config_sha256"], "seed1");

    let md = malt_eval::render_markdown(&combined);
    assert!(md.starts_with("# Combined evaluation report"), "{md}");
    assert!(
        md.contains("| on1 | on1/online | single | `seed1` | model_sha256 \"other\" |"),
        "{md}"
    );
    assert!(md.contains("| Online MALT (on0) + MV@3 |"), "{md}");
    assert!(
        md.contains("## Paired comparisons with MALT (trained chain) + MV@3"),
        "{md}"
    );
    // It survives its own JSON and re-renders to itself.
    let json = serde_json::to_string(&combined).expect("json");
    let back: Report = serde_json::from_str(&json).expect("read back");
    assert_eq!(back, combined);
    assert_eq!(malt_eval::rerender(&back).expect("rerender"), combined);
}

#[test]
fn the_reference_is_chosen_by_id() {
    let [offline, on0, on1] = three_runs();
    let sources = [
        source("offline", &offline),
        source("on0", &on0),
        source("on1", &on1),
    ];
    let by = |r: &str| combine(&sources, Some(r));
    let r = by("on1/online").expect("a combined id");
    assert!(r
        .comparisons
        .iter()
        .all(|c| c.reference == "on1/online_mv3"));
    assert_eq!(r.comparisons.len(), r.systems.len() - 1);
    let r = by("trained_chain").expect("an id only one report has");
    assert!(r
        .comparisons
        .iter()
        .all(|c| c.reference == "trained_chain_mv3"));
    let err = by("online").expect_err("two reports have it").to_string();
    assert!(
        err.contains("several reports have it") && err.contains("on0/online"),
        "{err}"
    );
    let err = by("nothing").expect_err("unknown").to_string();
    assert!(err.contains("no such system"), "{err}");
    // Without a reference: none marked, no comparisons.
    let r = combine(&sources[1..], None).expect("no reference");
    assert!(r.comparisons.is_empty());
}

#[test]
fn reports_of_other_questions_or_without_answers_are_refused() {
    let [offline, on0, _] = three_runs();
    let mut other_seeds = on0.clone();
    other_seeds.plan.seeds = vec![0, 1, 5];
    let err = combine(
        &[source("offline", &offline), source("on0", &other_seeds)],
        None,
    )
    .expect_err("other seeds")
    .to_string();
    assert!(
        err.contains(
            "`offline` and `on0` were not evaluated alike: seeds [0, 1, 2] against [0, 1, 5]"
        ),
        "{err}"
    );
    let mut old = on0.clone();
    old.answers.clear();
    old.format = 2;
    let err = combine(&[source("offline", &offline), source("old", &old)], None)
        .expect_err("format 2")
        .to_string();
    assert!(err.contains("`old` is a report of format 2"), "{err}");
    let err = combine(&[source("a", &offline), source("a", &on0)], None)
        .expect_err("one name twice")
        .to_string();
    assert!(err.contains("two reports are named `a`"), "{err}");
    let err = combine(&[source("a", &offline)], None)
        .expect_err("one report")
        .to_string();
    assert!(err.contains("at least two"), "{err}");
}

#[test]
fn a_row_can_be_relabelled() {
    let [offline, on0, _] = three_runs();
    let mut r =
        combine(&[source("offline", &offline), source("on0", &on0)], None).expect("combine");
    malt_eval::relabel(&mut r, "online", "Single-agent online").expect("relabel");
    let labels = r
        .systems
        .iter()
        .filter(|s| s.system == "online")
        .map(|s| s.label.as_str())
        .collect::<Vec<_>>();
    assert_eq!(
        labels,
        ["Single-agent online", "Single-agent online + MV@3"]
    );
    assert!(r
        .comparisons
        .iter()
        .any(|c| c.label == "Single-agent online + MV@3"));
    let turns = r
        .per_turn
        .iter()
        .find(|v| v.system == "online")
        .expect("turns");
    assert_eq!(turns.label, "Single-agent online");
    let err = malt_eval::relabel(&mut r, "nope", "x")
        .expect_err("unknown")
        .to_string();
    assert!(
        err.contains("no such system") && err.contains("trained_chain"),
        "{err}"
    );
}
