//! The wire types: OpenAI chat completions (request, response, stream chunk, model list) and
//! malt's chain endpoint. Requests are parsed field by field in `validate.rs` so that a wrong
//! field is named in the error; these types are what the handlers produce and what clients
//! (tests, the benchmark, malt's remote backend) read back.

use serde::{Deserialize, Serialize};

/// One chat message, malt-base's: `{"role", "content"}` on the wire. In a request `content`
/// may also be an array of `{"type":"text","text"}` parts; `validate.rs` joins them into one
/// string when the request is read, so the type itself needs no custom deserializer.
pub use malt_base::Message;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
    /// Extension: the sampling seed of each choice, in order. Sending them back as `malt_seeds`
    /// reproduces the choices exactly.
    pub malt_seeds: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub message: Message,
    /// `"stop"` (end of turn or a stop string) or `"length"` (`max_tokens` reached).
    pub finish_reason: String,
    pub logprobs: Option<serde_json::Value>,
    /// Extension: the sampled token ids, the end-of-turn token included (vLLM's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// Extension: "end_of_turn", "stop_string" or "length", where `finish_reason` says only
    /// "stop" or "length".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub malt_finish: Option<String>,
}

/// One Server-Sent Event of a streamed completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Only on the last chunk, and only when `stream_options.include_usage` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    pub logprobs: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The base model an adapter applies to (as vLLM lists LoRA modules); `None` for the base.
    pub parent: Option<String>,
    /// The model's context length in tokens (prompt + completion).
    pub max_model_len: usize,
}

/// `POST /v1/malt/chain`: the answer of the whole agent chain with majority voting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainResponse {
    pub object: String,
    /// `"trained-chain"` when at least one agent has a trained adapter, else `"untrained-chain"`.
    pub system: String,
    pub question: String,
    /// The reference answer when the request gave a dataset record.
    pub gold: Option<String>,
    pub k: u32,
    pub seed: u64,
    pub attempts: Vec<ChainAttempt>,
    /// The majority answer over the attempts (`None` when no attempt produced one).
    pub answer: Option<String>,
    /// The attempt whose answer won (ties go to the earliest attempt).
    pub answer_attempt: Option<usize>,
    /// Whether the majority answer matches `gold` (only with a record).
    pub correct: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainAttempt {
    pub attempt: u32,
    pub turns: Vec<ChainTurn>,
    /// The final answer of the attempt (the last answering agent's).
    pub answer: Option<String>,
    /// Why the attempt failed (a plugin or generation error), if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainTurn {
    pub agent: String,
    /// Whether this turn ran with the agent's trained adapter.
    pub adapter: bool,
    pub output: String,
    pub answer: Option<String>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// Generation and chain requests admitted and not finished.
    pub in_flight: usize,
    pub max_queue: usize,
    /// The backend's counters (for the model engine: requests, decode batches, largest batch).
    #[serde(default)]
    pub engine: serde_json::Value,
}
