//! The generation driver with the deterministic fakes: seeds, histories, error marking.

mod common;

use malt_tree::credit::{credit_tree, Label};
use malt_tree::fake::{fake_examples, FakeSampler, FakeScorer};
use malt_tree::score::ErrorCounts;
use malt_tree::{generate_tree, node_seed, CreditSettings, Example};

fn example(q: &str) -> Example {
    Example {
        question: q.into(),
        ..fake_examples(1).remove(0)
    }
}

#[test]
fn seeds_derive_from_run_seed_question_and_path() {
    let chain = common::gvr(3);
    let ex = example("2+2?");
    let mut errors = ErrorCounts::new();
    let (t, _) = generate_tree(
        &chain,
        &ex,
        9,
        &mut FakeSampler::default(),
        &mut FakeScorer::default(),
        &mut errors,
    )
    .unwrap();
    assert_eq!(t.nodes[0].seed, node_seed(9, "q0000", &[0]));
    assert_eq!(t.nodes[3 + 4].seed, node_seed(9, "q0000", &[1, 1]));
    assert_eq!(t.nodes[12 + 26].seed, node_seed(9, "q0000", &[2, 2, 2]));
    let mut seeds: Vec<u64> = t.nodes.iter().map(|n| n.seed).collect();
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 39);
    assert!(seeds.iter().all(|&s| s < 1 << 53));
    assert_ne!(node_seed(9, "q0000", &[0]), node_seed(10, "q0000", &[0]));
    assert_ne!(node_seed(9, "q0000", &[0]), node_seed(9, "q0001", &[0]));
    // Same inputs, same tree.
    let (t2, _) = generate_tree(
        &chain,
        &ex,
        9,
        &mut FakeSampler::default(),
        &mut FakeScorer::default(),
        &mut errors,
    )
    .unwrap();
    assert_eq!(t, t2);
    assert!(errors.is_empty());
}

#[test]
fn prompts_carry_the_path_history_and_siblings_share_them() {
    let chain = common::gvr(2);
    let (t, _) = generate_tree(
        &chain,
        &example("Q"),
        1,
        &mut FakeSampler::default(),
        &mut FakeScorer::default(),
        &mut ErrorCounts::new(),
    )
    .unwrap();
    // 1 root prompt + 2 generator prompts + 4 verifier prompts.
    assert_eq!(t.prompts.len(), 7);
    let leaf = 2 + 4 + 3; // last leaf
    let v = t.nodes[leaf].parent.unwrap() as usize;
    let g = t.nodes[v].parent.unwrap() as usize;
    let user = &t.prompt_of(leaf).unwrap()[1].content;
    assert!(user.contains(&t.nodes[g].output) && user.contains(&t.nodes[v].output));
    assert_eq!(t.nodes[leaf].prompt, t.nodes[leaf - 1].prompt);
    assert!(t.prompt_of(0).unwrap()[0]
        .content
        .contains("generator (1 of 3)"));
}

#[test]
fn render_trap_marks_whole_tree_errored_and_counts_it() {
    let chain = common::gvr(3);
    let mut scorer = FakeScorer {
        trap_render_on: Some("TRAP".into()),
        ..Default::default()
    };
    let mut errors = ErrorCounts::new();
    let (t, c) = generate_tree(
        &chain,
        &example("TRAP me"),
        1,
        &mut FakeSampler::default(),
        &mut scorer,
        &mut errors,
    )
    .unwrap();
    assert_eq!(c.errored_nodes, 39);
    assert_eq!(c.samples, 0);
    assert_eq!(errors["fake"], 3);
    assert!(t.nodes[0]
        .error
        .as_deref()
        .unwrap()
        .contains("render: wasm trap"));
    assert_eq!(t.nodes[20].error.as_deref(), Some("ancestor errored"));
    let cr = credit_tree(&t, &chain, &CreditSettings::default()).unwrap();
    assert!(
        cr.label.iter().all(|&l| l == Label::Unscored),
        "errored nodes are never scored 0"
    );
    assert_eq!(cr.errored_leaves, 27);
}

#[test]
fn per_request_render_error_errors_that_level_and_below() {
    let chain = common::gvr(3);
    let mut scorer = FakeScorer {
        fail_role: Some("verifier".into()),
        ..Default::default()
    };
    let mut errors = ErrorCounts::new();
    let (t, c) = generate_tree(
        &chain,
        &example("Q"),
        1,
        &mut FakeSampler::default(),
        &mut scorer,
        &mut errors,
    )
    .unwrap();
    assert_eq!(c.errored_nodes, 36);
    assert_eq!(errors["fake"], 9);
    assert!(t.nodes[..3].iter().all(|n| n.error.is_none()));
    assert!(t.nodes[3]
        .error
        .as_deref()
        .unwrap()
        .contains("no template for role"));
    let cr = credit_tree(&t, &chain, &CreditSettings::default()).unwrap();
    assert_eq!(&cr.label[..3], &[Label::Unscored; 3]);
    assert_eq!(cr.unscored_inner, 12);
}

#[test]
fn grade_trap_errors_leaves_not_zero() {
    let chain = common::gvr(2);
    // The fake model answers "0" or "1"; a trap on "1" fails every batch that contains one.
    let mut scorer = FakeScorer {
        trap_grade_on: Some("1".into()),
        ..Default::default()
    };
    let mut errors = ErrorCounts::new();
    let (t, c) = generate_tree(
        &chain,
        &example("Q"),
        3,
        &mut FakeSampler::default(),
        &mut scorer,
        &mut errors,
    )
    .unwrap();
    assert!(c.score_failures > 0);
    assert_eq!(errors["fake"], c.score_failures);
    let cr = credit_tree(&t, &chain, &CreditSettings::default()).unwrap();
    for (i, n) in t.nodes.iter().enumerate().filter(|(_, n)| n.level == 2) {
        if n.score_error.is_some() {
            assert!(n.reward.is_none());
            assert_eq!(cr.label[i], Label::Unscored);
        }
    }
}

#[test]
fn any_chain_length_works() {
    for b in [vec![4], vec![3, 3], vec![2, 2, 2, 2, 2], vec![1, 5, 1]] {
        let chain = common::chain(&b);
        let (t, _) = generate_tree(
            &chain,
            &example("Q"),
            5,
            &mut FakeSampler::default(),
            &mut FakeScorer::default(),
            &mut ErrorCounts::new(),
        )
        .unwrap();
        let cr = credit_tree(&t, &chain, &CreditSettings::default()).unwrap();
        assert_eq!(cr.errored_leaves, 0);
        assert!(cr.value.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn progress_reports_rate_and_eta() {
    let p = malt_tree::Progress {
        questions_done: 6,
        questions_total: 10,
        questions_skipped: 2,
        samples: 156,
        elapsed: std::time::Duration::from_secs(8),
    };
    assert_eq!(p.samples_per_sec(), 19.5);
    // 4 questions in 8 s here, 4 left: 8 s.
    assert_eq!(p.eta(), Some(std::time::Duration::from_secs(8)));
    assert_eq!(p.to_string(), "6/10 questions  19.5 samples/s  ETA 0m08s");
}
