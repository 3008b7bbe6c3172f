//! A hand-computed G-V-R 3-3-3 tree: every value, label and pair written out literally.
//!
//! Node indices: generators 0..3, verifiers 3..12 (V0..V8), refiner leaves 12..39.
//! Leaf rewards (E = errored leaf), grouped by verifier:
//!   G0: V0 [1 1 0]  V1 [0 0 1]  V2 [1 1 1]
//!   G1: V3 [0 0 0]  V4 [1 0 0]  V5 [1 1 0]
//!   G2: V6 [1 E 0]  V7 [E E E]  V8 [1 1 1]

mod common;

use malt_tree::credit::{assign, for_each_pair, Credit, CreditInput, Label, PairMode, Pooling};
use malt_tree::datasets::DatasetBuilder;
use malt_tree::sampler::FinishReason;
use malt_tree::tree::{Node, Tree};
use malt_tree::types::{Example, Message};
use malt_tree::{CreditSettings, Stats, TruncatedPolicy};

const E: f64 = -1.0;
const LEAVES: [f64; 27] = [
    1., 1., 0., 0., 0., 1., 1., 1., 1., //
    0., 0., 0., 1., 0., 0., 1., 1., 0., //
    1., E, 0., E, E, E, 1., 1., 1.,
];

fn hand_tree() -> Tree {
    let names = ["generator", "verifier", "refiner"];
    let mut nodes = Vec::new();
    let mut prompts = Vec::new();
    let mut width = 1;
    let mut prev = 0;
    for (l, name) in names.iter().enumerate() {
        let start = nodes.len();
        for p in 0..width {
            prompts.push(vec![Message::new("user", format!("prompt {l}/{p}"))]);
            for j in 0..3 {
                let i = nodes.len();
                let leaf = l == 2;
                let r = if leaf { LEAVES[i - 12] } else { 0.0 };
                nodes.push(Node {
                    agent: name.to_string(),
                    level: l as u16,
                    parent: (l > 0).then_some((prev + p) as u32),
                    prompt: Some((prompts.len() - 1) as u32),
                    seed: i as u64,
                    output: format!("out {i} {j}"),
                    token_ids: None,
                    finish: None,
                    logprobs: None,
                    answer: None,
                    answer_key: None,
                    answer_source: None,
                    reward: (leaf && r >= 0.0).then_some(r),
                    error: None,
                    score_error: (leaf && r < 0.0).then(|| "grade: wasm trap".to_owned()),
                });
            }
        }
        prev = start;
        width *= 3;
    }
    Tree {
        question_id: "q".into(),
        example: Example {
            id: "q".into(),
            question: "?".into(),
            gold: "1".into(),
            choices: vec![],
            metadata: "{}".into(),
        },
        prompts,
        nodes,
        scored_with: None,
    }
}

fn run(pooling: Pooling, mode: PairMode) -> (Credit, Vec<(usize, usize)>) {
    let chain = common::gvr(3);
    let tree = hand_tree();
    tree.check_shape(&chain).unwrap();
    let mut input = CreditInput::default();
    input.fill_from_tree(&tree, &chain);
    let mut credit = Credit::default();
    let thetas = CreditSettings::default().thetas(&chain).unwrap();
    assign(&input, &thetas, pooling, &mut credit);
    let mut pairs = Vec::new();
    for_each_pair(&input, &credit, mode, |c, r| pairs.push((c, r)));
    (credit, pairs)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12 || (a.is_nan() && b.is_nan())
}

use Label::{Negative as N, Positive as P, Unscored as U};

#[test]
fn global_pooling_values_labels_pairs() {
    let (c, pairs) = run(Pooling::Global, PairMode::All);
    let nan = f64::NAN;
    let want_g = [2. / 3., 1. / 3., 3. / 4.];
    let want_v = [2. / 3., 1. / 3., 1., 0., 1. / 3., 2. / 3., 1. / 2., nan, 1.];
    for (i, w) in want_g.iter().chain(&want_v).enumerate() {
        assert!(close(c.value[i], *w), "node {i}: {} != {w}", c.value[i]);
    }
    assert_eq!(&c.label[0..3], &[P, N, P]);
    assert_eq!(&c.label[3..12], &[P, N, P, N, N, P, N, U, P]);
    assert_eq!(
        &c.label[12..39],
        &[
            P, P, N, N, N, P, P, P, P, //
            N, N, N, P, N, N, P, P, N, //
            P, U, N, U, U, U, P, P, P
        ]
    );
    assert_eq!(c.errored_leaves, 4);
    assert_eq!(c.unscored_inner, 1);
    assert_eq!(
        pairs,
        vec![
            (0, 1),
            (2, 1),
            (3, 4),
            (5, 4),
            (8, 6),
            (8, 7),
            (11, 9),
            (12, 14),
            (13, 14),
            (17, 15),
            (17, 16),
            (24, 25),
            (24, 26),
            (27, 29),
            (28, 29),
            (30, 32),
        ]
    );
}

#[test]
fn one_per_parent_pairs() {
    let (_, pairs) = run(Pooling::Global, PairMode::OnePerParent);
    assert_eq!(
        pairs,
        vec![
            (2, 1),   // G2 (0.75) beats G0 (0.667); G1 the only negative
            (5, 4),   // V2 (1.0) vs V1 (0.333)
            (8, 6),   // V5 vs V3 (0.0, worse than V4's 0.333)
            (11, 9),  // V8 vs V6; V7 unscored
            (12, 14), // tie 12/13 at 1.0: lower index
            (17, 15), // tie 15/16 at 0.0: lower index
            (24, 25),
            (27, 29),
            (30, 32),
        ]
    );
}

#[test]
fn local_pooling_differs_where_expected() {
    let (c, pairs) = run(Pooling::Local, PairMode::All);
    // Verifiers: identical to global (binary leaves, theta 0.5).
    let want_v = [
        2. / 3.,
        1. / 3.,
        1.,
        0.,
        1. / 3.,
        2. / 3.,
        1. / 2.,
        f64::NAN,
        1.,
    ];
    for (k, w) in want_v.iter().enumerate() {
        assert!(close(c.value[3 + k], *w), "V{k}");
    }
    // Generators: mean of verifier labels. G2 = mean(V6 -, V8 +) = 0.5: not > 0.5.
    assert!(close(c.value[0], 2. / 3.));
    assert!(close(c.value[1], 1. / 3.));
    assert!(close(c.value[2], 0.5));
    assert_eq!(&c.label[0..3], &[P, N, N]);
    assert_eq!(&pairs[..2], &[(0, 1), (0, 2)]);
}

#[test]
fn stats_of_hand_tree() {
    let chain = common::gvr(3);
    let tree = hand_tree();
    let mut input = CreditInput::default();
    input.fill_from_tree(&tree, &chain);
    let mut credit = Credit::default();
    assign(&input, &[0.5; 3], Pooling::Global, &mut credit);
    let mut stats = Stats::new(&chain);
    stats.add_tree(&chain, &tree, &credit);
    let mut sets = DatasetBuilder::new(&chain, PairMode::All, TruncatedPolicy::Exclude);
    sets.add_tree(&tree, &input, &credit).unwrap();
    stats.finish(sets.sets(), &Default::default());
    let pos: Vec<u64> = stats.agents.iter().map(|a| a.positives).collect();
    assert_eq!(pos, vec![2, 4, 13]);
    let sft: Vec<u64> = stats.agents.iter().map(|a| a.sft).collect();
    assert_eq!(sft, vec![2, 4, 13]);
    let pairs: Vec<u64> = stats.agents.iter().map(|a| a.pairs).collect();
    assert_eq!(pairs, vec![2, 5, 9]);
    // Verifier values 2/3,1/3,1,0,1/3,2/3,1/2,1 -> bins 6,3,9,0,3,6,5,9.
    assert_eq!(stats.levels[1].histogram, [1, 0, 0, 2, 0, 1, 2, 0, 0, 2]);
    assert_eq!(stats.levels[2].histogram, [10, 0, 0, 0, 0, 0, 0, 0, 0, 13]);
    assert_eq!(stats.errored_leaves, 4);
    assert!(stats.table().contains("verifier"));
}

/// The hand tree with three outputs cut at the length limit: G2 and V2 (positives that have
/// a negative sibling) and R2 under V0 (the negative of two pairs).
fn cut_tree() -> Tree {
    let mut tree = hand_tree();
    for i in [2, 5, 14] {
        tree.nodes[i].finish = Some(FinishReason::Length);
    }
    tree
}

/// Per agent: SFT records, pairs, cut positives, cut pairs; and the text of level 0's and 1's
/// sft.jsonl and level 2's dpo.jsonl.
struct CutSets {
    sft: Vec<u64>,
    pairs: Vec<u64>,
    cut_sft: Vec<u64>,
    cut_pairs: Vec<u64>,
    files: Vec<String>,
}

fn cut_sets(policy: TruncatedPolicy, mode: PairMode) -> CutSets {
    let chain = common::gvr(3);
    let tree = cut_tree();
    let mut input = CreditInput::default();
    input.fill_from_tree(&tree, &chain);
    let mut credit = Credit::default();
    assign(&input, &[0.5; 3], Pooling::Global, &mut credit);
    let mut b = DatasetBuilder::new(&chain, mode, policy);
    b.add_tree(&tree, &input, &credit).unwrap();
    let sets = b.sets();
    let field = |f: fn(&malt_tree::datasets::AgentSets) -> u64| sets.iter().map(f).collect();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    CutSets {
        sft: field(|s| s.sft_count),
        pairs: field(|s| s.dpo_count),
        cut_sft: field(|s| s.sft_truncated),
        cut_pairs: field(|s| s.dpo_truncated),
        files: vec![text(&sets[0].sft), text(&sets[1].sft), text(&sets[2].dpo)],
    }
}

#[test]
fn cut_outputs_are_left_out_of_sft_and_dpo_by_default() {
    let CutSets {
        sft,
        pairs,
        cut_sft,
        cut_pairs,
        files,
    } = cut_sets(TruncatedPolicy::Exclude, PairMode::All);
    // G2 and V2 are positives no longer trained on; pairs (2,1), (5,4), (12,14), (13,14) go.
    assert_eq!(sft, vec![1, 3, 13]);
    assert_eq!(pairs, vec![1, 4, 7]);
    assert_eq!(cut_sft, vec![1, 1, 0]);
    assert_eq!(cut_pairs, vec![1, 1, 2]);
    assert!(files[0].contains("out 0 0") && !files[0].contains("out 2 2"));
    assert!(!files[1].contains("out 5 2"));
    assert!(!files[2].contains("out 14 2"));
    assert!(files.iter().all(|f| !f.contains("_truncated")));
}

#[test]
fn one_per_parent_picks_the_best_uncut_pair() {
    let pairs = cut_sets(TruncatedPolicy::Exclude, PairMode::OnePerParent).pairs;
    // Uncut: (2,1) (5,4) (8,6) (11,9) (12,14) (17,15) (24,25) (27,29) (30,32). Cut: G0 replaces
    // G2 against G1, V0 replaces V2 against V1, and the group of R12..R14 has no uncut negative.
    assert_eq!(pairs, vec![1, 3, 4]);
}

#[test]
fn kept_cut_outputs_are_marked_for_the_trainer() {
    let CutSets {
        sft,
        pairs,
        cut_sft,
        cut_pairs,
        files,
    } = cut_sets(TruncatedPolicy::Keep, PairMode::All);
    assert_eq!(sft, vec![2, 4, 13]);
    assert_eq!(pairs, vec![2, 5, 9]);
    assert_eq!(cut_sft, vec![1, 1, 0]);
    assert_eq!(cut_pairs, vec![1, 1, 2]);
    let line_of =
        |f: &str, needle: &str| f.lines().find(|l| l.contains(needle)).unwrap().to_owned();
    assert!(line_of(&files[0], "out 2 2").contains("\"completion_truncated\":true"));
    assert!(!line_of(&files[0], "out 0 0").contains("_truncated"));
    let pair = line_of(&files[2], "out 14 2");
    assert!(pair.contains("\"rejected_truncated\":true") && !pair.contains("chosen_truncated"));
}
