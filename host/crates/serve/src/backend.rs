//! What the server needs from a model: the trait the host implements.

use std::time::Instant;

pub use malt_base::SamplingParams;

use crate::protocol::{ChainResponse, Message};

/// The names a backend answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModels {
    /// The base model's id (its config name or path); `"base"` is an alias.
    pub base: String,
    /// One name per agent with a trained adapter (the agent's name).
    pub adapters: Vec<String>,
    /// Whether `POST /v1/malt/chain` is available (the server was started from a config).
    pub chain: bool,
}

impl ServedModels {
    /// `Some(None)` for the base model, `Some(Some(agent))` for an adapter, `None` if unknown.
    pub fn resolve(&self, name: &str) -> Option<Option<String>> {
        if name == self.base || name == "base" {
            Some(None)
        } else if self.adapters.iter().any(|a| a == name) {
            Some(Some(name.to_owned()))
        } else {
            None
        }
    }

    /// Every accepted model name, for error messages.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![self.base.clone(), "base".to_owned()];
        v.extend(self.adapters.iter().cloned());
        v
    }
}

/// How the per-choice seeds are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeds {
    /// `malt_seeds`: one per choice, used as they are.
    Explicit(Vec<u64>),
    /// `seed` (or a random one when the request has none): the backend derives one per choice.
    Derived(u64),
}

/// One validated chat completion request.
#[derive(Debug, Clone)]
pub struct GenerationJob {
    /// The agent whose adapter to use; `None` = the base model.
    pub adapter: Option<String>,
    /// The rendered and tokenized prompt (from [`ServeBackend::tokenize_chat`]).
    pub prompt: Vec<u32>,
    pub messages: Vec<Message>,
    pub n: usize,
    pub sampling: SamplingParams,
    pub seeds: Seeds,
    /// Return each sampled token's log-prob (`logprobs: true`).
    pub logprobs: bool,
    /// Give up (return [`BackendError::Timeout`]) after this instant.
    pub deadline: Instant,
}

/// A validated `POST /v1/load_lora_adapter` (vLLM's and SGLang's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterLoad {
    pub name: String,
    /// A PEFT LoRA directory on the server's disk.
    pub path: String,
    /// Replace an adapter already loaded under `name` (vLLM's `load_inplace`).
    pub replace: bool,
}

/// Why a choice stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model sampled an end-of-turn token.
    EndOfTurn,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` reached (or the client went away).
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason`: "stop" for a stop token or a stop string, else "length".
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::EndOfTurn | FinishReason::StopString => "stop",
            FinishReason::Length => "length",
        }
    }

    /// The extension `malt_finish`, which tells a stop token from a stop string (the names of
    /// malt's tree records: "end_of_turn", "stop_string", "length").
    pub fn detail(self) -> &'static str {
        match self {
            FinishReason::EndOfTurn => "end_of_turn",
            FinishReason::StopString => "stop_string",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOutput {
    pub text: String,
    pub completion_tokens: usize,
    pub finish: FinishReason,
    /// Every sampled token id, in order, the end-of-turn token included (as vLLM's
    /// `return_token_ids` gives them).
    pub token_ids: Vec<u32>,
    /// The seed this choice was sampled with.
    pub seed: u64,
    /// With `logprobs`: each of `token_ids`' log-prob under `softmax(logits / temperature)`,
    /// the distribution it was drawn from (before top-k / top-p), as the embedded sampler
    /// records them. `None` when not asked for or when sampling was greedy.
    pub logprobs: Option<Vec<f32>>,
}

/// `POST /v1/malt/chain`, validated.
#[derive(Debug, Clone)]
pub struct ChainQuery {
    /// A plain question (no reference answer) ...
    pub question: Option<String>,
    /// ... or a dataset record (one JSON object, as in the config's dataset file).
    pub record: Option<serde_json::Value>,
    /// Attempts; `None` = the config's `eval.majority_k`.
    pub k: Option<u32>,
    pub seed: u64,
    pub deadline: Instant,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The request cannot be served as given (400), e.g. a record the plugin rejects.
    #[error("{0}")]
    Invalid(String),
    /// The feature is not available on this server (404), e.g. the chain without a config.
    #[error("{0}")]
    NotAvailable(String),
    /// The deadline passed (503).
    #[error("{0}")]
    Timeout(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

/// Receives `(choice index, text so far)` after every generated token; returning `false`
/// cancels that choice (the client went away).
pub type StepSink<'a> = dyn FnMut(usize, &str) -> bool + 'a;

/// The model side of the server. Methods are called from the handler threads concurrently;
/// `on_step` is always called on the calling thread.
pub trait ServeBackend: Send + Sync {
    fn models(&self) -> ServedModels;

    /// Prompt + completion tokens the model can attend to.
    fn context_length(&self) -> usize;

    /// The messages rendered with the model's chat template (with the generation prompt) and
    /// tokenized.
    fn tokenize_chat(&self, messages: &[Message]) -> Result<Vec<u32>, BackendError>;

    /// Samples the job's `n` choices, in order.
    fn generate(
        &self,
        job: GenerationJob,
        on_step: &mut StepSink<'_>,
    ) -> Result<Vec<ChoiceOutput>, BackendError>;

    /// Runs the agent chain `k` times on one question and votes.
    fn chain(&self, query: ChainQuery) -> Result<ChainResponse, BackendError>;

    /// `POST /v1/load_lora_adapter`: reads a PEFT adapter from the server's disk and serves it
    /// under `load.name`. A path that cannot be read is [`BackendError::Invalid`], and what
    /// was served before stays served.
    fn load_adapter(&self, load: &AdapterLoad) -> Result<(), BackendError> {
        let _ = load;
        Err(BackendError::NotAvailable(
            "this server cannot load adapters at run time".into(),
        ))
    }

    /// `POST /v1/unload_lora_adapter`: stops serving `name`. Requests already accepted for it
    /// finish with it; an unknown name is [`BackendError::NotAvailable`].
    fn unload_adapter(&self, name: &str) -> Result<(), BackendError> {
        let _ = name;
        Err(BackendError::NotAvailable(
            "this server cannot unload adapters at run time".into(),
        ))
    }

    /// Engine counters shown by `GET /health` (free-form JSON).
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
