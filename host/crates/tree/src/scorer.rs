//! The plugin side of generation and credit, as a trait mirroring the WIT `benchmark`
//! interface (render / extract / grade / parse-records). The host implements it over
//! malt-plugins; tests use a deterministic Rust fake. Each call names the plugin because each
//! agent of a chain may use a different one.

use crate::types::{Example, Extracted, Grade, Message, Turn};

#[derive(Debug, Clone)]
pub struct RenderRequest<'a> {
    pub agent: &'a str,
    pub role: &'a str,
    pub position: u32,
    pub chain_length: u32,
    pub example: &'a Example,
    /// Every earlier agent's output on this path, in chain order.
    pub history: Vec<Turn>,
}

#[derive(Debug, Clone, Copy)]
pub struct ExtractRequest<'a> {
    pub output: &'a str,
    pub choices: &'a [crate::types::Choice],
}

#[derive(Debug, Clone, Copy)]
pub struct GradeRequest<'a> {
    pub answer: Option<&'a str>,
    pub gold: &'a str,
}

/// A failed plugin call as a whole (a WASM trap, fuel exhausted, plugin not loaded): every
/// request of the batch is marked errored and counted against the plugin.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

pub trait Scorer {
    /// Parse raw dataset lines (one JSON object text each) into examples.
    fn parse_records(
        &mut self,
        plugin: &str,
        lines: &[&str],
    ) -> Result<Vec<Result<Example, String>>, PluginError>;

    /// Generate `count` examples procedurally from `seed` (the WIT `generate`); the inner
    /// `Err` is the plugin's refusal (e.g. a benchmark that reads a dataset).
    fn generate_examples(
        &mut self,
        plugin: &str,
        seed: u64,
        count: u32,
    ) -> Result<Result<Vec<Example>, String>, PluginError> {
        let _ = (seed, count);
        Ok(Err(format!("plugin {plugin} does not generate examples")))
    }

    /// Render the chat messages of each request; one result per request, in order.
    fn render(
        &mut self,
        plugin: &str,
        requests: &[RenderRequest<'_>],
    ) -> Result<Vec<Result<Vec<Message>, String>>, PluginError>;

    /// Extract final answers, each with its voting key (when the plugin gives one) and how it
    /// was found; one result per request, in order. An item `Err` (that item trapped on its
    /// own) marks only that node errored.
    fn extract(
        &mut self,
        plugin: &str,
        requests: &[ExtractRequest<'_>],
    ) -> Result<Vec<Result<Option<Extracted>, String>>, PluginError>;

    /// Grade extracted answers; one result per request, in order. Rewards outside [0, 1] are
    /// treated as plugin errors by the caller.
    fn grade(
        &mut self,
        plugin: &str,
        requests: &[GradeRequest<'_>],
    ) -> Result<Vec<Result<Grade, String>>, PluginError>;

    /// What decides `plugin`'s extraction and grading (its code and options), so that credit
    /// re-scores a stored tree only when it changed since the tree was scored; `None` when
    /// unknown, and then every tree is re-scored.
    fn identity(&self, plugin: &str) -> Option<String> {
        let _ = plugin;
        None
    }
}

/// The identities of every plugin of `chain`, in chain order without repeats; `None` when
/// the scorer does not know one.
pub fn chain_identity(chain: &crate::chain::ChainSpec, scorer: &dyn Scorer) -> Option<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut parts = Vec::new();
    for a in &chain.agents {
        if !seen.contains(&a.plugin.as_str()) {
            seen.push(&a.plugin);
            parts.push(format!("{}={}", a.plugin, scorer.identity(&a.plugin)?));
        }
    }
    Some(parts.join("; "))
}
