//! The model side of generation, as a trait: the model layer implements it (batched, with
//! prefix sharing across the n completions of one request); tests use a deterministic fake.

use crate::chain::SamplingParams;
use crate::types::Message;

/// Sample `seeds.len()` completions of one prompt. The n completions are siblings: they share
/// the whole input, so an implementation should prefill the prompt once.
#[derive(Debug, Clone, Copy)]
pub struct SampleRequest<'a> {
    /// The agent whose turn this is: a backend with per-agent adapters picks its LoRA by it.
    pub agent: &'a str,
    pub messages: &'a [Message],
    pub params: &'a SamplingParams,
    /// One seed per completion, derived from run seed + question id + tree path
    /// (see [`crate::generate::node_seed`]); completion j must be a function of
    /// (messages, params, seeds[j]) for resumed runs to reproduce uninterrupted ones.
    pub seeds: &'a [u64],
}

/// A failure of the sampler as a whole (device lost, model not loaded): generation stops.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SamplerError(pub String);

pub trait Sampler {
    /// One result per request, in order; `Ok(v)` must hold exactly `seeds.len()` texts.
    /// A per-request `Err` marks that request's nodes errored and generation goes on.
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<Result<Vec<String>, String>>, SamplerError>;
}
