//! The generation driver: expands one question's tree level by level through the `Scorer`
//! (prompts) and the `Sampler` (completions), scores it, and appends it to the run store.
//!
//! Determinism is what makes resume exact: every node's seed is a hash of the run seed, the
//! question id and the node's path, so a tree regenerated after a crash is the same tree.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::chain::ChainSpec;
use crate::error::{Result, TreeError};
use crate::sampler::Sampler;
use crate::score::{count, score_tree, ErrorCounts};
use crate::scorer::Scorer;
use crate::store::RunWriter;
use crate::tree::{level_offsets, Node, Tree};
use crate::turn::{take_turn, TurnAt, TurnInput, TurnOutput};
use crate::types::{Example, Turn};

/// Seeds are masked to 53 bits so every JSON reader (including those that parse numbers as
/// doubles) reads them back exactly.
pub const SEED_MASK: u64 = (1 << 53) - 1;

/// Seed of the node reached by `path` (child index at each level) in question `question_id`:
/// the first 8 bytes (little endian) of
/// SHA-256("malt-node-seed/v1" || run_seed as u64 LE || len(question_id) as u64 LE ||
/// question_id || each path index as u32 LE), masked to 53 bits.
pub fn node_seed(run_seed: u64, question_id: &str, path: &[u32]) -> u64 {
    let mut h = Sha256::new();
    h.update(b"malt-node-seed/v1");
    h.update(run_seed.to_le_bytes());
    h.update((question_id.len() as u64).to_le_bytes());
    h.update(question_id.as_bytes());
    for p in path {
        h.update(p.to_le_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b) & SEED_MASK
}

/// Counts of one tree's generation.
#[derive(Debug, Default, Clone)]
pub struct TreeCounts {
    /// Completions requested from the sampler.
    pub samples: u64,
    /// Nodes with a generation error (including placeholders under errored ancestors).
    pub errored_nodes: u64,
    /// Nodes whose extraction or grading failed.
    pub score_failures: u64,
}

/// Path (child index per level) of node `i`, given the chain's level offsets.
fn path_of(chain: &ChainSpec, offs: &[usize], level: usize, i: usize) -> Vec<u32> {
    let mut path = vec![0u32; level + 1];
    let mut k = i - offs[level];
    for l in (0..=level).rev() {
        let n = chain.agents[l].branches as usize;
        path[l] = (k % n) as u32;
        k /= n;
    }
    path
}

/// Generates, scores and returns the complete tree of one example.
/// Plugin and per-request sampler failures mark nodes errored (counted in `errors`); only a
/// failure of the sampler as a whole is returned as `Err`.
pub fn generate_tree(
    chain: &ChainSpec,
    example: &Example,
    run_seed: u64,
    sampler: &mut dyn Sampler,
    scorer: &mut dyn Scorer,
    errors: &mut ErrorCounts,
) -> Result<(Tree, TreeCounts)> {
    chain.validate()?;
    let offs = level_offsets(chain);
    let total = *offs.last().unwrap_or(&0);
    let mut counts = TreeCounts::default();
    let mut tree = Tree {
        question_id: example.id.clone(),
        example: example.clone(),
        prompts: Vec::new(),
        nodes: Vec::with_capacity(total),
        scored_with: None,
    };
    let chain_length = chain.len() as u32;

    for (l, agent) in chain.agents.iter().enumerate() {
        let n = agent.branches as usize;
        // Parents of this level: the previous level's nodes, or one virtual root (the question).
        let parents: Vec<Option<usize>> = if l == 0 {
            vec![None]
        } else {
            (offs[l - 1]..offs[l]).map(Some).collect()
        };
        // Append this level's nodes, errored until proven otherwise by a successful sample.
        for (pi, parent) in parents.iter().enumerate() {
            for j in 0..n {
                let i = offs[l] + pi * n + j;
                let seed = node_seed(run_seed, &example.id, &path_of(chain, &offs, l, i));
                tree.nodes.push(Node {
                    agent: agent.name.clone(),
                    level: l as u16,
                    parent: parent.map(|p| p as u32),
                    prompt: None,
                    seed,
                    output: String::new(),
                    token_ids: None,
                    finish: None,
                    logprobs: None,
                    answer: None,
                    answer_key: None,
                    answer_source: None,
                    reward: None,
                    error: Some("ancestor errored".to_owned()),
                    score_error: None,
                });
            }
        }
        // Render and sample for live parents: one turn of the agent over them.
        let live: Vec<usize> = (0..parents.len())
            .filter(|&pi| parents[pi].is_none_or(|p| tree.nodes[p].error.is_none()))
            .collect();
        if live.is_empty() {
            continue;
        }
        let inputs: Vec<TurnInput> = live
            .iter()
            .map(|&pi| TurnInput {
                example,
                history: history(chain, &tree, parents[pi]),
                seeds: (0..n)
                    .map(|j| tree.nodes[offs[l] + pi * n + j].seed)
                    .collect(),
            })
            .collect();
        let at = TurnAt {
            agent,
            position: l as u32,
            chain_length,
            sampler_key: &agent.name,
        };
        let outputs =
            take_turn(scorer, sampler, at, inputs).map_err(|e| TreeError::Sampler(e.0))?;
        for (&pi, out) in live.iter().zip(outputs) {
            let kids = offs[l] + pi * n..offs[l] + (pi + 1) * n;
            let (prompt, completions) = match out {
                TurnOutput::RenderFailed(msg) => {
                    count(errors, &agent.plugin, n);
                    for i in kids {
                        tree.nodes[i].error = Some(format!("render: {msg}"));
                    }
                    continue;
                }
                TurnOutput::Rendered {
                    prompt,
                    completions,
                } => (prompt, completions),
            };
            let p = tree.prompts.len() as u32;
            tree.prompts.push(prompt);
            for i in kids.clone() {
                tree.nodes[i].prompt = Some(p);
            }
            counts.samples += n as u64;
            match completions {
                Ok(completions) => {
                    for (i, c) in kids.zip(completions) {
                        let node = &mut tree.nodes[i];
                        node.output = c.text;
                        node.token_ids = c.token_ids;
                        node.finish = c.finish;
                        node.logprobs = c.logprobs;
                        node.error = None;
                    }
                }
                Err(msg) => {
                    count(errors, "sampler", n);
                    for i in kids {
                        tree.nodes[i].error = Some(format!("sample: {msg}"));
                    }
                }
            }
        }
    }
    counts.errored_nodes = tree.nodes.iter().filter(|n| n.error.is_some()).count() as u64;
    counts.score_failures = score_tree(&mut tree, chain, scorer, errors) as u64;
    Ok((tree, counts))
}

/// The outputs of `parent` and its ancestors, in chain order.
fn history(chain: &ChainSpec, tree: &Tree, parent: Option<usize>) -> Vec<Turn> {
    let mut turns = Vec::new();
    let mut at = parent;
    while let Some(i) = at {
        let n = &tree.nodes[i];
        turns.push(Turn {
            agent: n.agent.clone(),
            role: chain.agents[n.level as usize].role.clone(),
            output: n.output.clone(),
        });
        at = n.parent.map(|p| p as usize);
    }
    turns.reverse();
    turns
}

/// Progress after each tree, for a progress bar.
#[derive(Debug, Clone)]
pub struct Progress {
    pub questions_done: usize,
    pub questions_total: usize,
    /// Questions found finished in the run directory at start (skipped).
    pub questions_skipped: usize,
    pub samples: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn samples_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.samples as f64 / s
        } else {
            0.0
        }
    }

    /// Remaining time, extrapolated from the questions generated in this process.
    pub fn eta(&self) -> Option<Duration> {
        let done_here = self.questions_done.saturating_sub(self.questions_skipped);
        if done_here == 0 {
            return None;
        }
        let left = self.questions_total.saturating_sub(self.questions_done);
        Some(self.elapsed.mul_f64(left as f64 / done_here as f64))
    }
}

/// One progress line: `12/100 questions  34.5 samples/s  ETA 3m12s`.
impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} questions  {:.1} samples/s  ETA ",
            self.questions_done,
            self.questions_total,
            self.samples_per_sec()
        )?;
        match self.eta() {
            Some(d) => {
                let s = d.as_secs();
                write!(f, "{}m{:02}s", s / 60, s % 60)
            }
            None => write!(f, "?"),
        }
    }
}

/// Totals of a generation run.
#[derive(Debug, Default, Clone)]
pub struct GenerateSummary {
    pub generated: usize,
    pub skipped: usize,
    pub samples: u64,
    pub errored_nodes: u64,
    pub score_failures: u64,
    pub errors: ErrorCounts,
}

/// Generates every example not yet in the run and appends each finished tree (durably)
/// before starting the next, so a crash loses at most the tree in flight.
pub fn generate_run(
    run: &mut RunWriter,
    chain: &ChainSpec,
    examples: &[Example],
    sampler: &mut dyn Sampler,
    scorer: &mut dyn Scorer,
    progress: &mut dyn FnMut(&Progress),
) -> Result<GenerateSummary> {
    let run_seed = run.manifest().run_seed;
    let start = Instant::now();
    let mut summary = GenerateSummary::default();
    let skipped = examples.iter().filter(|e| run.is_done(&e.id)).count();
    summary.skipped = skipped;
    let mut p = Progress {
        questions_done: skipped,
        questions_total: examples.len(),
        questions_skipped: skipped,
        samples: 0,
        elapsed: Duration::ZERO,
    };
    progress(&p);
    for ex in examples {
        if run.is_done(&ex.id) {
            continue;
        }
        let (tree, c) = generate_tree(chain, ex, run_seed, sampler, scorer, &mut summary.errors)?;
        run.append(&tree)?;
        summary.generated += 1;
        summary.samples += c.samples;
        summary.errored_nodes += c.errored_nodes;
        summary.score_failures += c.score_failures;
        p.questions_done += 1;
        p.samples = summary.samples;
        p.elapsed = start.elapsed();
        progress(&p);
    }
    Ok(summary)
}
