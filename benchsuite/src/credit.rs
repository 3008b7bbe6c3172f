//! `malt bench credit`: credit assignment throughput on synthetic trees against a naive
//! recursive baseline measured in the same run (plugin calls excluded), and the time to
//! re-credit a stored run from disk (parse + credit + write datasets and stats).

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use malt_base::mix::mix;

use malt_tree::chain::{AgentSpec, ChainSpec};
use malt_tree::credit::{assign, Credit, CreditInput, CreditSettings, Label, Pooling, NO_PARENT};
use malt_tree::error::Result;
use malt_tree::fake::{fake_examples, FakeSampler, FakeScorer};
use malt_tree::generate::generate_run;
use malt_tree::recredit::recredit;
use malt_tree::store::{Manifest, RunWriter};

#[derive(Debug, Clone)]
pub struct CreditBenchOptions {
    /// Branching per level of the synthetic chain.
    pub branches: Vec<u32>,
    /// Distinct synthetic trees (iterated until `min_time` has passed).
    pub trees: usize,
    /// Minimum measuring time per implementation.
    pub min_time: Duration,
    /// Trees of the stored run to re-credit from disk (0 skips that part).
    pub stored_trees: usize,
    /// Characters of padding per fake completion in the stored run (realistic ~1-2 KB).
    pub pad: usize,
    /// Where to create the stored run (a fresh temporary directory when `None`).
    pub dir: Option<PathBuf>,
    pub pooling: Pooling,
}

impl Default for CreditBenchOptions {
    fn default() -> Self {
        CreditBenchOptions {
            branches: vec![3, 3, 3],
            trees: 20_000,
            min_time: Duration::from_millis(500),
            stored_trees: 1000,
            pad: 1500,
            dir: None,
            pooling: Pooling::Global,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoredReport {
    pub trees: usize,
    pub bytes: u64,
    pub read: Duration,
    pub credit: Duration,
    pub write: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct CreditBenchReport {
    pub branches: Vec<u32>,
    pub leaves: u64,
    pub fast_leaves_per_sec: f64,
    pub naive_leaves_per_sec: f64,
    /// Positives counted by both implementations (they must agree).
    pub positives: u64,
    pub stored: Option<StoredReport>,
}

impl CreditBenchReport {
    pub fn ratio(&self) -> f64 {
        self.fast_leaves_per_sec / self.naive_leaves_per_sec
    }
}

impl fmt::Display for CreditBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b: Vec<String> = self.branches.iter().map(|b| b.to_string()).collect();
        writeln!(
            f,
            "credit assignment, synthetic {} trees, one core, plugin calls excluded",
            b.join("-")
        )?;
        writeln!(
            f,
            "  flat arena (malt):  {:>14.0} leaves/s",
            self.fast_leaves_per_sec
        )?;
        writeln!(
            f,
            "  naive recursive:    {:>14.0} leaves/s",
            self.naive_leaves_per_sec
        )?;
        writeln!(
            f,
            "  ratio:              {:>14.1}x   (positives agree: {})",
            self.ratio(),
            self.positives
        )?;
        if let Some(s) = &self.stored {
            writeln!(
                f,
                "re-credit of {} stored trees ({:.1} MB): read+verify {:.3} s, credit+datasets {:.3} s, write {:.3} s, total {:.3} s",
                s.trees,
                s.bytes as f64 / 1e6,
                s.read.as_secs_f64(),
                s.credit.as_secs_f64(),
                s.write.as_secs_f64(),
                s.total.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// A synthetic tree of the given shape: binary rewards, about 2% errored leaves.
fn synthetic(branches: &[u32], seed: u64) -> CreditInput {
    let mut input = CreditInput {
        leaf_level: (branches.len() - 1) as u16,
        ..Default::default()
    };
    let mut prev_start = 0usize;
    let mut width = 1usize;
    for (l, &n) in branches.iter().enumerate() {
        let start = input.len();
        for p in 0..width {
            for _ in 0..n {
                let i = input.len() as u64;
                input.parent.push(if l == 0 {
                    NO_PARENT
                } else {
                    (prev_start + p) as u32
                });
                input.level.push(l as u16);
                let h = mix(seed ^ mix(i));
                input.reward.push((h & 1) as f64);
                input.errored.push(l == branches.len() - 1 && h % 50 == 7);
            }
        }
        prev_start = start;
        width *= n as usize;
    }
    input
}

/// The baseline: a pointer tree with one allocation per node, valued recursively, the way a
/// first implementation would do it.
struct NaiveNode {
    reward: Option<f64>,
    children: Vec<NaiveNode>,
}

fn naive_build(input: &CreditInput, i: usize, children: &[Vec<usize>]) -> NaiveNode {
    let leaf = input.level[i] == input.leaf_level;
    NaiveNode {
        reward: (leaf && !input.errored[i]).then(|| input.reward[i]),
        children: children[i]
            .iter()
            .map(|&c| naive_build(input, c, children))
            .collect(),
    }
}

fn naive_value(node: &NaiveNode, level: usize, thetas: &[f64], positives: &mut u64) -> Option<f64> {
    let v = if node.children.is_empty() {
        node.reward
    } else {
        let vals: Vec<f64> = node
            .children
            .iter()
            .filter_map(|c| naive_value(c, level + 1, thetas, positives))
            .collect();
        (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
    };
    if v.is_some_and(|v| v > thetas[level]) {
        *positives += 1;
    }
    v
}

fn naive_credit(input: &CreditInput, thetas: &[f64]) -> u64 {
    let mut children = vec![Vec::new(); input.len()];
    let mut roots = Vec::new();
    for i in 0..input.len() {
        match input.parent[i] {
            NO_PARENT => roots.push(i),
            p => children[p as usize].push(i),
        }
    }
    let mut positives = 0;
    for r in roots {
        let tree = naive_build(input, r, &children);
        naive_value(&tree, 0, thetas, &mut positives);
    }
    positives
}

/// Runs `f` over all inputs repeatedly for at least `min_time`; returns (leaves/s, positives of one pass).
fn measure(
    inputs: &[CreditInput],
    leaves: u64,
    min_time: Duration,
    mut f: impl FnMut(&CreditInput) -> u64,
) -> (f64, u64) {
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut positives = 0;
    loop {
        let p: u64 = inputs.iter().map(&mut f).sum();
        if rounds == 0 {
            positives = p;
        }
        rounds += 1;
        if start.elapsed() >= min_time {
            break;
        }
    }
    (
        (leaves * rounds) as f64 / start.elapsed().as_secs_f64(),
        positives,
    )
}

pub fn run_credit_bench(opts: &CreditBenchOptions) -> Result<CreditBenchReport> {
    let chain = ChainSpec::new(
        opts.branches
            .iter()
            .enumerate()
            .map(|(i, &b)| AgentSpec::new(&format!("agent{i}"), "generator", "fake", b))
            .collect(),
    )?;
    let settings = CreditSettings {
        pooling: opts.pooling,
        ..Default::default()
    };
    let thetas = settings.thetas(&chain)?;
    let inputs: Vec<CreditInput> = (0..opts.trees.max(1) as u64)
        .map(|t| synthetic(&opts.branches, mix(t)))
        .collect();
    let leaves = (chain.leaf_count() * inputs.len()) as u64;

    let mut out = Credit::default();
    let (fast, fast_pos) = measure(&inputs, leaves, opts.min_time, |input| {
        assign(input, &thetas, settings.pooling, &mut out);
        out.label.iter().filter(|&&l| l == Label::Positive).count() as u64
    });
    let (naive, naive_pos) = if settings.pooling == Pooling::Global {
        measure(&inputs, leaves, opts.min_time, |input| {
            naive_credit(input, &thetas)
        })
    } else {
        // The naive baseline implements global pooling only; compare on the same input anyway.
        let (n, _) = measure(&inputs, leaves, opts.min_time, |input| {
            naive_credit(input, &thetas)
        });
        (n, fast_pos)
    };
    if fast_pos != naive_pos {
        return Err(malt_tree::error::TreeError::Config(format!(
            "benchmark self-check failed: fast credit found {fast_pos} positives, naive {naive_pos}"
        )));
    }

    let stored = if opts.stored_trees > 0 {
        Some(stored_bench(opts)?)
    } else {
        None
    };
    Ok(CreditBenchReport {
        branches: opts.branches.clone(),
        leaves,
        fast_leaves_per_sec: fast,
        naive_leaves_per_sec: naive,
        positives: fast_pos,
        stored,
    })
}

fn stored_bench(opts: &CreditBenchOptions) -> Result<StoredReport> {
    let (dir, cleanup) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("malt-credit-bench-{}", std::process::id())),
            true,
        ),
    };
    let chain = ChainSpec::new(vec![
        AgentSpec::new("generator", "generator", "fake", 3),
        AgentSpec::new("verifier", "verifier", "fake", 3),
        AgentSpec::new("refiner", "refiner", "fake", 3),
    ])?;
    let settings = CreditSettings::default();
    let result = (|| {
        {
            let manifest = Manifest::new(
                "# bench",
                Default::default(),
                "fake",
                7,
                chain.clone(),
                settings,
            );
            let mut run = RunWriter::open(&dir, manifest)?;
            let mut sampler = FakeSampler {
                pad: opts.pad,
                ..Default::default()
            };
            generate_run(
                &mut run,
                &chain,
                &fake_examples(opts.stored_trees),
                &mut sampler,
                &mut FakeScorer::default(),
                &mut |_| {},
            )?;
        }
        let bytes = std::fs::metadata(dir.join(malt_tree::store::TREES))
            .map(|m| m.len())
            .unwrap_or(0);
        let t = Instant::now();
        let report = recredit(&dir, &chain, &settings, None)?;
        let total = t.elapsed();
        Ok(StoredReport {
            trees: report.stats.trees as usize,
            bytes,
            read: report.read_time,
            credit: report.credit_time,
            write: report.write_time,
            total,
        })
    })();
    if cleanup {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
