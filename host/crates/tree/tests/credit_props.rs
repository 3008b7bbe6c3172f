//! Property tests of credit assignment on random chains and rewards.

mod common;

use malt_tree::credit::{
    assign, for_each_pair, Credit, CreditInput, Label, PairMode, Pooling, NO_PARENT,
};
use malt_tree::fake::{fake_examples, FakeSampler, FakeScorer};
use malt_tree::generate_tree;
use proptest::prelude::*;

/// A uniform tree of the given shape with the given leaf rewards (None = errored).
fn input(branches: &[u32], leaves: &[Option<f64>]) -> CreditInput {
    let mut inp = CreditInput {
        leaf_level: (branches.len() - 1) as u16,
        ..Default::default()
    };
    let (mut width, mut prev) = (1usize, 0usize);
    for (l, &n) in branches.iter().enumerate() {
        let start = inp.len();
        for p in 0..width {
            for _ in 0..n {
                inp.parent
                    .push(if l == 0 { NO_PARENT } else { (prev + p) as u32 });
                inp.level.push(l as u16);
                let leaf = l + 1 == branches.len();
                let r = if leaf {
                    leaves[inp.reward.len() - start]
                } else {
                    Some(0.0)
                };
                inp.reward.push(r.unwrap_or(f64::NAN));
                inp.errored.push(r.is_none());
            }
        }
        prev = start;
        width *= n as usize;
    }
    inp
}

fn shape_and_rewards(binary: bool) -> impl Strategy<Value = (Vec<u32>, Vec<Option<f64>>)> {
    prop::collection::vec(1u32..=4, 1..=4).prop_flat_map(move |b| {
        let leaves: usize = b.iter().map(|&x| x as usize).product();
        let reward = if binary {
            prop_oneof![Just(0.0), Just(1.0)].boxed()
        } else {
            (0.0f64..=1.0).boxed()
        };
        let leaf = prop_oneof![1 => Just(None), 8 => reward.prop_map(Some)];
        (Just(b), prop::collection::vec(leaf, leaves))
    })
}

fn credit(inp: &CreditInput, theta: f64, levels: usize, pooling: Pooling) -> Credit {
    let mut c = Credit::default();
    assign(inp, &vec![theta; levels], pooling, &mut c);
    c
}

fn pooling() -> impl Strategy<Value = Pooling> {
    prop_oneof![Just(Pooling::Global), Just(Pooling::Local)]
}

proptest! {
    #[test]
    fn values_in_unit_interval_and_labels_consistent(
        (b, r) in shape_and_rewards(false), theta in 0.0f64..=1.0, pool in pooling()
    ) {
        let inp = input(&b, &r);
        let c = credit(&inp, theta, b.len(), pool);
        for i in 0..inp.len() {
            let v = c.value[i];
            match c.label[i] {
                Label::Unscored => prop_assert!(v.is_nan()),
                Label::Positive => prop_assert!((0.0..=1.0).contains(&v) && v > theta),
                Label::Negative => prop_assert!((0.0..=1.0).contains(&v) && v <= theta),
            }
        }
        let errored = r.iter().filter(|x| x.is_none()).count();
        prop_assert_eq!(c.errored_leaves as usize, errored);
    }

    #[test]
    fn pairs_only_join_scored_siblings(
        (b, r) in shape_and_rewards(false), theta in 0.0f64..=1.0, pool in pooling(),
        all in any::<bool>()
    ) {
        let inp = input(&b, &r);
        let c = credit(&inp, theta, b.len(), pool);
        let mode = if all { PairMode::All } else { PairMode::OnePerParent };
        let mut pairs = Vec::new();
        for_each_pair(&inp, &c, mode, |x, y| pairs.push((x, y)));
        for &(x, y) in &pairs {
            prop_assert_eq!(inp.parent[x], inp.parent[y]);
            prop_assert_eq!(inp.level[x], inp.level[y]);
            prop_assert_eq!(c.label[x], Label::Positive);
            prop_assert_eq!(c.label[y], Label::Negative);
            prop_assert!(c.value[x] > c.value[y]);
        }
        // `all` yields exactly positives x negatives per sibling group.
        if all {
            let mut want = 0;
            let mut groups = std::collections::BTreeMap::<(u32, u16), (usize, usize)>::new();
            for i in 0..inp.len() {
                let g = groups.entry((inp.parent[i], inp.level[i])).or_default();
                match c.label[i] {
                    Label::Positive => g.0 += 1,
                    Label::Negative => g.1 += 1,
                    Label::Unscored => {}
                }
            }
            for (p, n) in groups.values() { want += p * n; }
            prop_assert_eq!(pairs.len(), want);
        }
    }

    #[test]
    fn raising_theta_never_adds_positives(
        (b, r) in shape_and_rewards(false), t1 in 0.0f64..=1.0, dt in 0.0f64..=1.0, pool in pooling()
    ) {
        let t2 = (t1 + dt).min(1.0);
        let inp = input(&b, &r);
        let lo = credit(&inp, t1, b.len(), pool);
        let hi = credit(&inp, t2, b.len(), pool);
        for i in 0..inp.len() {
            if hi.label[i] == Label::Positive {
                prop_assert_eq!(lo.label[i], Label::Positive, "node {} positive only at higher theta", i);
            }
        }
    }

    #[test]
    fn global_value_is_mean_of_scored_leaves_when_nothing_errored(
        (b, r) in shape_and_rewards(false)
    ) {
        // Uniform branching and no errors: a level-0 value is the mean of its leaf subtree.
        prop_assume!(r.iter().all(|x| x.is_some()));
        let inp = input(&b, &r);
        let c = credit(&inp, 0.5, b.len(), Pooling::Global);
        let per_root = r.len() / b[0] as usize;
        for g in 0..b[0] as usize {
            let leaves = &r[g * per_root..(g + 1) * per_root];
            let mean = leaves.iter().map(|x| x.unwrap()).sum::<f64>() / per_root as f64;
            prop_assert!((c.value[g] - mean).abs() < 1e-9);
        }
    }

    #[test]
    fn local_vs_global_sanity((b, r) in shape_and_rewards(true), pool_theta in 0.0f64..1.0) {
        let inp = input(&b, &r);
        let g = credit(&inp, pool_theta, b.len(), Pooling::Global);
        let l = credit(&inp, pool_theta, b.len(), Pooling::Local);
        let leaf = b.len() - 1;
        for i in 0..inp.len() {
            let lvl = inp.level[i] as usize;
            // Leaves and the parents of binary leaves agree (a 0/1 reward is its own label).
            if lvl + 2 >= b.len() {
                prop_assert!(g.value[i] == l.value[i] || (g.value[i].is_nan() && l.value[i].is_nan()));
            }
            // Scored-ness never depends on the pooling.
            prop_assert_eq!(g.value[i].is_nan(), l.value[i].is_nan());
            // Local values of inner nodes are fractions k/m of children labels.
            if lvl < leaf && !l.value[i].is_nan() {
                let m = b[lvl + 1] as f64;
                let k = l.value[i] * m;
                let ok = (1..=b[lvl + 1]).any(|d| {
                    let x = l.value[i] * d as f64;
                    (x - x.round()).abs() < 1e-9
                });
                prop_assert!(ok, "local value {} is not a fraction of {} labels ({})", l.value[i], m, k);
            }
        }
        // All leaves equal: both poolings give that value everywhere.
        if r.iter().all(|x| *x == Some(1.0)) || r.iter().all(|x| *x == Some(0.0)) {
            for i in 0..inp.len() {
                prop_assert_eq!(g.value[i], l.value[i]);
            }
        }
    }

    #[test]
    fn generated_tree_has_prod_leaves(b in prop::collection::vec(1u32..=3, 1..=5), seed in any::<u64>()) {
        let chain = common::chain(&b);
        let ex = &fake_examples(1)[0];
        let mut errors = Default::default();
        let (tree, counts) = generate_tree(
            &chain, ex, seed, &mut FakeSampler::default(), &mut FakeScorer::default(), &mut errors,
        ).unwrap();
        let leaves: usize = b.iter().map(|&x| x as usize).product();
        let last = (b.len() - 1) as u16;
        prop_assert_eq!(tree.nodes.iter().filter(|n| n.level == last).count(), leaves);
        prop_assert_eq!(tree.nodes.len(), chain.node_count());
        prop_assert!(tree.check_shape(&chain).is_ok());
        prop_assert_eq!(counts.samples as usize, chain.node_count());
        prop_assert!(tree.nodes.iter().filter(|n| n.level == last).all(|n| n.reward.is_some()));
    }
}
