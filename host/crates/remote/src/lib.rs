//! malt-remote: sample the trees' completions from OpenAI-compatible chat-completions servers
//! (`malt serve`, vLLM, llama.cpp, hosted APIs) instead of the embedded model.
//!
//! [`RemoteSampler`] implements [`malt_tree::Sampler`]. Before the first request it identifies
//! each endpoint's engine ([`engine`]: `malt serve`, vLLM, SGLang, llama.cpp or a generic
//! OpenAI-compatible API) and reports what that engine does not honour. `malt serve` is asked
//! for a node's `n` siblings in one call with the `malt_seeds` extension listing every sibling's
//! seed, and returns exactly the completions the embedded sampler would; engines without
//! per-choice seeds are asked one choice per request with the choice's own seed. The agent picks
//! the served model name, which is how vLLM and SGLang select a LoRA adapter.
//!
//! Failures: connection errors, timeouts, 408, 429 (honouring `Retry-After`) and 5xx are
//! retried with exponential backoff and deterministic jitter, on any live endpoint; other 4xx
//! mark that request's nodes errored with the server's message, except 401/403/404 (a wrong
//! key, URL or model name), which stop the run. A request that exhausts its retry budget fails
//! the batch with a [`malt_tree::SamplerError`] naming the endpoint(s) and the last error; the
//! run store then holds every finished tree once and a rerun resumes. API keys are read by the
//! caller from the environment and never appear in `Debug` output or logs.

pub mod adapters;
mod call;
pub mod endpoint;
pub mod engine;
pub mod protocol;
pub mod retry;
mod sampler;

pub use adapters::AdapterVersion;
pub use endpoint::Endpoint;
pub use engine::{Engine, EngineChoice};
pub use retry::RetryPolicy;
pub use sampler::{EngineReport, RemoteSampler, RemoteSettings, RemoteStats};
