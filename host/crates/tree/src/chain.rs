//! The chain: an ordered list of agents, one tree level per agent.
//!
//! Nothing here knows about "generator", "verifier" or "refiner": roles are strings handed to
//! the plugin's templates, so G-R, G-V-R-V-R or any other chain is just a longer list.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TreeError};

/// Passed through to the `Sampler` untouched.
pub use malt_base::SamplingParams;

/// One agent of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Unique name in the chain ("generator", "verifier-2"); datasets are filed under it.
    pub name: String,
    /// Prompt role handed to the plugin's render ("generator", "verifier", "refiner").
    pub role: String,
    /// Plugin that renders this agent's prompts and extracts/grades its answers.
    pub plugin: String,
    /// Children per parent at this level (n_i); the level has prod(n_0..=n_i) nodes.
    pub branches: u32,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Per-agent label threshold; `None` uses the global `[credit] theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theta: Option<f64>,
    /// Whether this agent's output carries a final answer (used for answer-flip statistics
    /// only). `None` means: every role except "verifier"/"critic" answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<bool>,
}

impl AgentSpec {
    /// Convenience constructor with default sampling and no overrides.
    pub fn new(name: &str, role: &str, plugin: &str, branches: u32) -> Self {
        AgentSpec {
            name: name.to_owned(),
            role: role.to_owned(),
            plugin: plugin.to_owned(),
            branches,
            sampling: SamplingParams::default(),
            theta: None,
            answers: None,
        }
    }

    /// See [`AgentSpec::answers`]: critique roles produce no answer of their own.
    pub fn produces_answer(&self) -> bool {
        self.answers
            .unwrap_or(!matches!(self.role.as_str(), "verifier" | "critic"))
    }
}

/// The ordered agents. Construct with [`ChainSpec::new`], which validates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSpec {
    pub agents: Vec<AgentSpec>,
}

impl ChainSpec {
    pub fn new(agents: Vec<AgentSpec>) -> Result<Self> {
        let chain = ChainSpec { agents };
        chain.validate()?;
        Ok(chain)
    }

    /// Rejects what would make trees meaningless: no agents, zero branches, duplicate names
    /// (dataset directories are keyed by name), theta outside [0, 1], and more than 2^32 nodes.
    pub fn validate(&self) -> Result<()> {
        if self.agents.is_empty() {
            return Err(TreeError::Config(
                "the chain has zero agents; add at least one [[agents]] entry".into(),
            ));
        }
        if self.agents.len() > u16::MAX as usize {
            return Err(TreeError::Config("too many agents in the chain".into()));
        }
        let mut total: u64 = 0;
        let mut width: u64 = 1;
        for (i, a) in self.agents.iter().enumerate() {
            if a.name.is_empty() {
                return Err(TreeError::Config(format!("agent #{i} has an empty name")));
            }
            if a.name.contains(['/', '\\']) || a.name == "." || a.name == ".." {
                return Err(TreeError::Config(format!(
                    "agent name {:?} cannot be used as a directory name",
                    a.name
                )));
            }
            if self.agents[..i].iter().any(|b| b.name == a.name) {
                return Err(TreeError::Config(format!(
                    "agent name {:?} appears twice in the chain",
                    a.name
                )));
            }
            if a.branches == 0 {
                return Err(TreeError::Config(format!(
                    "agent {:?}: branches must be at least 1",
                    a.name
                )));
            }
            if let Some(t) = a.theta {
                check_theta(&format!("agent {:?}: theta", a.name), t)?;
            }
            width = width.saturating_mul(a.branches as u64);
            total = total.saturating_add(width);
        }
        if total > u32::MAX as u64 {
            return Err(TreeError::Config(format!(
                "the chain's tree has {total} nodes, more than 2^32"
            )));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Nodes at each level: prod(n_0..=n_l).
    pub fn level_sizes(&self) -> Vec<usize> {
        let mut w = 1usize;
        self.agents
            .iter()
            .map(|a| {
                w *= a.branches as usize;
                w
            })
            .collect()
    }

    /// Total nodes of a complete tree.
    pub fn node_count(&self) -> usize {
        self.level_sizes().iter().sum()
    }

    /// Leaves of a complete tree: prod(n_i).
    pub fn leaf_count(&self) -> usize {
        self.level_sizes().last().copied().unwrap_or(0)
    }

    /// The part of the chain that determines what `generate` produces; a resumed run must
    /// match it exactly (thresholds may change freely: `malt credit` recomputes them).
    pub fn generation_fingerprint(&self) -> String {
        let parts: Vec<_> = self
            .agents
            .iter()
            .map(|a| {
                serde_json::json!([
                    a.name,
                    a.role,
                    a.plugin,
                    a.branches,
                    a.sampling.temperature,
                    a.sampling.top_p,
                    a.sampling.top_k,
                    a.sampling.max_new_tokens,
                    a.sampling.stop
                ])
            })
            .collect();
        serde_json::Value::Array(parts).to_string()
    }
}

/// theta must lie in [0, 1]; NaN is rejected too.
pub fn check_theta(what: &str, t: f64) -> Result<()> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(TreeError::Config(format!("{what} = {t} is outside [0, 1]")))
    }
}
