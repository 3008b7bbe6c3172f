//! `malt credit` as a library call: stored trees -> (optional re-scoring) -> values, labels,
//! datasets and statistics. Never touches the model; re-scoring goes through the `Scorer`
//! (current plugins), and only for trees whose recorded plugins ([`Tree::scored_with`]) are not
//! the current ones. Stored trees are not rewritten: re-scored rewards feed the datasets and
//! statistics only, so `trees.jsonl` stays the immutable record of what was generated.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::chain::ChainSpec;
use crate::credit::{assign, Credit, CreditInput, CreditSettings};
use crate::datasets::DatasetBuilder;
use crate::error::{Result, TreeError};
use crate::score::{score_tree, ErrorCounts};
use crate::scorer::{chain_identity, Scorer};
use crate::stats::Stats;
use crate::store::{par_map, read_trees, threads};
use crate::tree::Tree;

pub use malt_layout::STATS;

#[derive(Debug, Clone)]
pub struct RecreditReport {
    pub stats: Stats,
    /// Set when a torn last record was skipped (a generator may still be writing).
    pub dropped_tail: Option<String>,
    /// Trees extracted and graded again: with a scorer, those scored by other plugins (code or
    /// options) than the current ones, or with a failed item; the others keep their scores.
    pub rescored: usize,
    pub read_time: Duration,
    pub score_time: Duration,
    pub credit_time: Duration,
    pub write_time: Duration,
}

/// Recomputes everything derived from the stored trees of `run_dir` with `chain` (its
/// thresholds) and `settings`, writes `datasets/` and `stats.json`, and returns the stats.
/// With `scorer`, extraction and grading are redone with the current plugins first, for the
/// trees they did not score (see [`RecreditReport::rescored`]).
pub fn recredit(
    run_dir: &Path,
    chain: &ChainSpec,
    settings: &CreditSettings,
    mut scorer: Option<&mut dyn Scorer>,
) -> Result<RecreditReport> {
    let thetas = settings.thetas(chain)?;
    let layout = malt_layout::RoundLayout::at(run_dir);
    let trees_path = layout.trees();
    if !trees_path.exists() {
        return Err(TreeError::File {
            path: trees_path,
            msg: "no trees: run `malt generate` first".into(),
        });
    }
    let t0 = Instant::now();
    let mut loaded = read_trees(&trees_path)?;
    for (tree, &line) in loaded.trees.iter().zip(&loaded.lines) {
        tree.check_shape(chain).map_err(|msg| TreeError::Line {
            path: trees_path.clone(),
            line,
            msg,
        })?;
    }
    let read_time = t0.elapsed();

    let t1 = Instant::now();
    let mut errors = ErrorCounts::new();
    let mut rescored = 0;
    let current = scorer.as_deref().and_then(|s| chain_identity(chain, s));
    for tree in &mut loaded.trees {
        // A failed item may have been a timeout on a busy machine: scoring again is cheap.
        let failed = tree.nodes.iter().any(|n| n.score_error.is_some());
        match scorer {
            Some(ref mut s) if failed || current.is_none() || tree.scored_with != current => {
                score_tree(tree, chain, &mut **s, &mut errors);
                rescored += 1;
            }
            // Scored by these very plugins (or no plugins given): count the failures it kept.
            _ => {
                for n in tree.nodes.iter().filter(|n| n.score_error.is_some()) {
                    *errors
                        .entry(chain.agents[n.level as usize].plugin.clone())
                        .or_default() += 1;
                }
            }
        }
    }
    let score_time = t1.elapsed();

    let t2 = Instant::now();
    // Trees are independent: credit them in contiguous chunks on all cores and concatenate
    // the results in order, so the output is identical to a sequential pass.
    let chunk = loaded.trees.len().div_ceil(threads()).max(1);
    let chunks: Vec<&[Tree]> = loaded.trees.chunks(chunk).collect();
    let parts = par_map(&chunks, |trees| -> Result<(DatasetBuilder, Stats)> {
        let mut input = CreditInput::default();
        let mut credit = Credit::default();
        let mut sets = DatasetBuilder::new(chain, settings.pairs, settings.truncated);
        let mut stats = Stats::new(chain);
        for tree in trees.iter() {
            input.fill_from_tree(tree, chain);
            assign(&input, &thetas, settings.pooling, &mut credit);
            sets.add_tree(tree, &input, &credit)?;
            stats.add_tree(chain, tree, &credit);
        }
        Ok((sets, stats))
    });
    let mut sets = DatasetBuilder::new(chain, settings.pairs, settings.truncated);
    let mut stats = Stats::new(chain);
    for part in parts {
        let (s, st) = part?;
        sets.append(s);
        stats.merge(&st);
    }
    stats.finish(sets.sets(), &errors);
    let credit_time = t2.elapsed();

    let t3 = Instant::now();
    sets.write(run_dir)?;
    let json = serde_json::to_vec_pretty(&stats).map_err(|e| TreeError::Config(e.to_string()))?;
    let stats_path = layout.stats();
    malt_base::atomic::write_atomic(&stats_path, &json)
        .map_err(|e| TreeError::io(&stats_path, e))?;
    let write_time = t3.elapsed();

    Ok(RecreditReport {
        stats,
        dropped_tail: loaded.dropped_tail,
        rescored,
        read_time,
        score_time,
        credit_time,
        write_time,
    })
}
