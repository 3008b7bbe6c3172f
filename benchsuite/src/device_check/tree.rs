//! The agent tree on synthetic tokens: a root prompt, `branching` children per node decoded as
//! one batch per level (the tree sampler's `sample_level`, as the generation stage samples a
//! level), each child's prompt = its parent's prompt + completion + new prompt tokens.

use malt_model::{Cache, Model, NodeRequest, SamplingParams, TreeSampler, TreeStats};

use malt_train::error::{Result, TrainError};

#[derive(Debug, Clone, Copy)]
pub struct TreeSpec {
    pub branching: usize,
    pub depth: usize,
    pub root_prompt: usize,
    pub level_prompt: usize,
    pub new_tokens: usize,
    pub seed: u64,
}

pub struct TreeOutcome {
    /// Generated tokens of every sequence, level by level, in path order.
    pub sequences: Vec<Vec<u32>>,
    pub stats: TreeStats,
    /// Prompt tokens at each level (the root's, then its children's, ...), for the roofline.
    pub level_prompts: Vec<Vec<usize>>,
}

/// Deterministic pseudo-random token ids in `1..vocab` (xorshift from `salt`).
pub fn synthetic_tokens(n: usize, salt: u64, vocab: usize) -> Vec<u32> {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (vocab as u64 - 1) + 1) as u32
        })
        .collect()
}

struct Node {
    path: Vec<usize>,
    prompt: Vec<u32>,
    parent: Option<Cache>,
}

/// Samples the tree at temperature 0.7 with the model's own stop rules (a random model has none,
/// so every sequence has `new_tokens` tokens).
pub fn sample_tree(m: &Model, spec: &TreeSpec) -> Result<TreeOutcome> {
    let vocab = m.config().vocab_size;
    let params = SamplingParams {
        temperature: 0.7,
        max_new_tokens: spec.new_tokens as u32,
        ..Default::default()
    };
    let mut tree = TreeSampler::new(m, spec.seed);
    let mut level = vec![Node {
        path: vec![],
        prompt: synthetic_tokens(spec.root_prompt, spec.seed ^ 0x7ee, vocab),
        parent: None,
    }];
    let mut sequences = vec![];
    let mut level_prompts = vec![];
    for depth in 0..spec.depth {
        level_prompts.push(level.iter().map(|n| n.prompt.len()).collect());
        let reqs: Vec<NodeRequest> = level
            .iter()
            .map(|node| NodeRequest {
                parent: node.parent.as_ref(),
                prompt: &node.prompt,
                n: spec.branching,
                path: &node.path,
            })
            .collect();
        let outs = tree
            .sample_level(&reqs, None, &params)
            .map_err(TrainError::model)?;
        let mut next = vec![];
        for (node, kids) in level.iter().zip(outs) {
            for (i, kid) in kids.into_iter().enumerate() {
                sequences.push(kid.tokens.clone());
                if depth + 1 == spec.depth {
                    continue;
                }
                let mut path = node.path.clone();
                path.push(i);
                let mut prompt = node.prompt.clone();
                prompt.extend(&kid.tokens);
                let salt = spec.seed ^ (sequences.len() as u64).wrapping_mul(0x51);
                prompt.extend(synthetic_tokens(spec.level_prompt, salt, vocab));
                next.push(Node {
                    path,
                    prompt,
                    parent: Some(kid.cache),
                });
            }
        }
        level = next;
    }
    Ok(TreeOutcome {
        sequences,
        stats: tree.stats.clone(),
        level_prompts,
    })
}
