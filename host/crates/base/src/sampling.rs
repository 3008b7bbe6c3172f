//! How one agent turn (or one API request) samples: the same fields for the config's
//! `[[agents]]`, the tree engine, the model's decoder, the remote engines and `malt serve`, so
//! no layer converts or drops one of them. Each completion's seed travels beside these
//! parameters (a tree node's seed, a request's per-choice seed), never inside them.

use serde::{Deserialize, Serialize};

/// Sampling parameters. Field names follow the config's `[[agents]]` keys; `malt serve` fills
/// them from a request's `temperature`, `top_p`, `top_k`, `max_tokens` and `stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 (or less) is greedy.
    pub temperature: f64,
    /// 1.0 disables nucleus filtering.
    #[serde(default = "one")]
    pub top_p: f64,
    /// 0 disables top-k filtering.
    #[serde(default)]
    pub top_k: u32,
    pub max_new_tokens: u32,
    /// Generation stops when the decoded text contains one; the text is cut before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

fn one() -> f64 {
    1.0
}

impl Default for SamplingParams {
    /// The paper's setting: temperature 0.3.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.3,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 1024,
            stop: Vec::new(),
        }
    }
}
