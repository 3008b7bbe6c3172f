//! malt-serve: the HTTP side of `malt serve`, an OpenAI-compatible server on a small synchronous
//! stack (`std::net`, `httparse`, one thread per connection, no async runtime). Connections are
//! kept alive between requests; a request must arrive within `read_timeout` of its first byte;
//! with `api_key` set every endpoint but `/health` needs `Authorization: Bearer <key>`.
//!
//! This crate knows the protocol only: request and response types, validation against
//! [`Limits`], routing, Server-Sent Events, admission control and OpenAI-shaped error bodies
//! (`{"error":{"message","type","param","code"}}`). The model lives behind [`ServeBackend`],
//! which the `malt` host implements over the candle model (one engine thread).
//!
//! Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (with `n`,
//! `stream`, `seed` and the extensions `top_k` and `malt_seeds`), `POST /v1/malt/chain`.
//! Every bad request gets a 4xx with a message that says what to change, and the server keeps
//! serving: a panicking handler is caught and answered with a 500.

mod backend;
mod error;
mod http;
mod limits;
mod protocol;
mod server;
mod sse;
mod validate;

pub use backend::{
    AdapterLoad, BackendError, ChainQuery, ChoiceOutput, FinishReason, GenerationJob,
    SamplingParams, Seeds, ServeBackend, ServedModels, StepSink,
};
pub use error::ApiError;
pub use limits::Limits;
pub use protocol::*;
pub use server::{ServeError, Server};
pub use validate::{
    validate_chain, validate_chat, validate_load_adapter, validate_unload_adapter, ChatRequest,
};
