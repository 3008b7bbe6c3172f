//! The model side of generation, as a trait: the model layer implements it (batched, with
//! prefix sharing across the n completions of one request); tests use a deterministic fake.

use serde::{Deserialize, Serialize};

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

/// Why sampling of one completion stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model sampled an end-of-turn token (its EOS, `<|im_end|>`, ...): the turn is whole.
    /// The token is the last of [`Completion::token_ids`] and is not in the text.
    EndOfTurn,
    /// A stop string of the agent's sampling parameters appeared. The text is cut before the
    /// stop string; the token ids run through the token in which the stop string ends, so when
    /// it ends inside a token, that whole token is kept (the ids spell the text, the stop
    /// string, and possibly the rest of that last token).
    StopString,
    /// `max_new_tokens` reached: the output was cut.
    Length,
    /// An engine answered "stop" without saying whether a stop token or a stop string ended
    /// the output (OpenAI-compatible servers that return no token ids).
    Stop,
}

/// One sampled completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The output text (special tokens not included).
    pub text: String,
    /// The sampled token ids, exactly as sampled, including the end-of-turn token when
    /// `finish` is [`FinishReason::EndOfTurn`] (see [`FinishReason`] for stop strings).
    /// `None` when the backend could not say (a remote engine that returns no ids).
    pub token_ids: Option<Vec<u32>>,
    pub finish: Option<FinishReason>,
    /// The per-token log-probs of the sampling distribution (one per token id): the embedded
    /// sampler's when it samples at a temperature > 0; `None` from remote engines.
    pub logprobs: Option<Vec<f32>>,
}

impl Completion {
    /// A completion known only by its text (tests, fakes, engines that return nothing else).
    pub fn text(text: impl Into<String>) -> Self {
        Completion {
            text: text.into(),
            ..Default::default()
        }
    }
}

/// A failure of the sampler as a whole (device lost, model not loaded): generation stops.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SamplerError(pub String);

/// The completions of one request, or why that request failed.
pub type RequestResult = Result<Vec<Completion>, String>;

pub trait Sampler {
    /// One result per request, in order; `Ok(v)` must hold exactly `seeds.len()` completions.
    /// A per-request `Err` marks that request's nodes errored and generation goes on.
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<RequestResult>, SamplerError>;
}
