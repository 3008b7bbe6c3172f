//! The inference engines behind OpenAI-compatible endpoints and what each does with the request
//! fields a tree's sampling depends on: `n`, `seed`, per-choice seeds, `top_k` and the defaults
//! an engine applies to fields a request leaves out.
//!
//! What each engine honours (checked against their sources; README "Remote generation"):
//! - `malt serve`: everything, including `malt_seeds` (one seed per choice): a node's choices
//!   equal the embedded sampler's.
//! - vLLM: `n` (fanned out into n child requests, child j seeded `seed + j`), `seed` (a signed
//!   64-bit integer; larger values are rejected with 400), `top_k`, and the model's
//!   `generation_config.json` as defaults for left-out fields. Unknown fields are ignored.
//!   Online serving is not batch-invariant unless started with `VLLM_BATCH_INVARIANT=1`.
//! - SGLang: `n`, `top_k`, the model's generation config as defaults; `seed` (as
//!   `sampling_seed`, a 32-bit tensor) only with `--enable-deterministic-inference`.
//! - llama.cpp `llama-server`: `n` up to its `--parallel` slots (more is a 400), `seed`
//!   (32-bit; 0xFFFFFFFF means random), `top_k`; its own defaults `top_k = 40` and
//!   `min_p = 0.05` apply to left-out fields. Older builds and llama-cpp-python's server ignore
//!   `n` and return one choice.
//! - Other OpenAI-compatible APIs: `n` and `seed` best effort; `top_k` is not an OpenAI field.
//!
//! Engines without per-choice seeds get one request per choice (`n = 1`, the choice's own seed),
//! so each choice depends on its seed only, not on which siblings were asked with it (a retry or
//! a follow-up asks for a subset). The engines' prefix caches keep the shared prompt computed
//! once, as `n` would.

use std::fmt;

use malt_tree::SamplingParams;
use serde_json::{json, Map, Value};

/// A known engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Malt,
    Vllm,
    Sglang,
    LlamaCpp,
    /// Any other OpenAI-compatible API.
    Openai,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Malt => "malt serve",
            Engine::Vllm => "vLLM",
            Engine::Sglang => "SGLang",
            Engine::LlamaCpp => "llama.cpp",
            Engine::Openai => "an OpenAI-compatible API",
        })
    }
}

/// An engine's runtime LoRA endpoints, relative to the server's root URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterRoutes {
    pub load: &'static str,
    pub unload: &'static str,
    pub reset_cache: Option<&'static str>,
}

/// How an endpoint's engine is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// Ask the server (`GET /v1/models`) before the first request.
    #[default]
    Auto,
    Fixed(Engine),
}

impl Engine {
    /// The engine a `GET /v1/models` body names in its cards' `owned_by`.
    pub fn from_models(body: &Value) -> Option<Engine> {
        let cards = body.get("data")?.as_array()?;
        cards.iter().find_map(|c| {
            match c.get("owned_by")?.as_str()?.to_ascii_lowercase().as_str() {
                "malt" => Some(Engine::Malt),
                "vllm" => Some(Engine::Vllm),
                "sglang" => Some(Engine::Sglang),
                "llamacpp" | "llama.cpp" | "llama-cpp" => Some(Engine::LlamaCpp),
                _ => None,
            }
        })
    }

    /// Whether a node's choices are asked one per request.
    pub fn one_choice_per_request(self) -> bool {
        !matches!(self, Engine::Malt | Engine::Openai)
    }

    /// `seed` mapped into the range the engine accepts; the same seed always maps the same way.
    pub fn wire_seed(self, seed: u64) -> u64 {
        match self {
            Engine::Malt => seed,
            // Signed 64-bit on the wire.
            Engine::Vllm | Engine::Openai => seed & i64::MAX as u64,
            // A 32-bit signed tensor inside SGLang.
            Engine::Sglang => (seed ^ (seed >> 32)) & 0x7fff_ffff,
            // uint32, where 0xFFFFFFFF asks for a random seed.
            Engine::LlamaCpp => (seed ^ (seed >> 32)) % 0xffff_ffff,
        }
    }

    /// The request body asking for `seeds.len()` completions of `messages`. Fields the tree's
    /// sampling depends on are sent explicitly where the engine would otherwise apply its own
    /// or the model's defaults (`top_k`, `min_p`, `repetition_penalty`).
    pub fn request_body(
        self,
        model: &str,
        messages: &[malt_tree::Message],
        params: &SamplingParams,
        seeds: &[u64],
        malt_seeds: bool,
    ) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("messages".into(), json!(messages));
        body.insert("n".into(), json!(seeds.len()));
        body.insert("temperature".into(), json!(params.temperature));
        body.insert("top_p".into(), json!(params.top_p));
        body.insert("max_tokens".into(), json!(params.max_new_tokens));
        body.insert("stream".into(), json!(false));
        if let Some(&first) = seeds.first() {
            body.insert("seed".into(), json!(self.wire_seed(first)));
        }
        match self {
            Engine::Malt | Engine::Openai => {
                // Only when set: `top_k` is not an OpenAI field and strict APIs reject it.
                if params.top_k > 0 {
                    body.insert("top_k".into(), json!(params.top_k));
                }
            }
            Engine::Vllm | Engine::Sglang => {
                if self == Engine::Vllm {
                    // The sampled ids in `choices[i].token_ids` (vLLM 0.10.2 and later; older
                    // versions ignore the field and malt re-encodes the text).
                    body.insert("return_token_ids".into(), json!(true));
                }
                // -1 disables top-k in every version of both (0 only in recent ones).
                let k = if params.top_k > 0 {
                    params.top_k as i64
                } else {
                    -1
                };
                body.insert("top_k".into(), json!(k));
                body.insert("min_p".into(), json!(0.0));
                body.insert("repetition_penalty".into(), json!(1.0));
            }
            Engine::LlamaCpp => {
                // llama-server defaults to top_k = 40 and min_p = 0.05; 0 disables both.
                body.insert("top_k".into(), json!(params.top_k));
                body.insert("min_p".into(), json!(0.0));
                body.insert("repeat_penalty".into(), json!(1.0));
                // The sampled ids and the stop type ("eos", "word", "limit") come back in the
                // debugging field `__verbose`.
                body.insert("return_tokens".into(), json!(true));
                body.insert("verbose".into(), json!(true));
            }
        }
        if !params.stop.is_empty() {
            body.insert("stop".into(), json!(params.stop));
        }
        if malt_seeds {
            body.insert("malt_seeds".into(), json!(seeds));
        }
        Value::Object(body)
    }

    /// Asks for each sampled token's log-prob (OpenAI's `logprobs`, no alternatives).
    pub fn ask_logprobs(self, body: &mut Value) {
        if let Value::Object(map) = body {
            map.insert("logprobs".into(), json!(true));
            map.insert("top_logprobs".into(), json!(0));
        }
    }

    /// Where the engine loads and unloads LoRA adapters at run time and drops its prefix
    /// cache, relative to the server's root URL; `None` when it cannot load adapters at run
    /// time (llama.cpp only scales adapters given at startup; hosted APIs have no such call).
    pub fn adapter_routes(self) -> Option<AdapterRoutes> {
        match self {
            Engine::Malt => Some(AdapterRoutes {
                load: "/v1/load_lora_adapter",
                unload: "/v1/unload_lora_adapter",
                // Its prefix pool is keyed on each adapter's contents: nothing stale to drop.
                reset_cache: None,
            }),
            // Both registered only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; the cache reset
            // only with VLLM_SERVER_DEV_MODE=1 (a 404 there is logged, not fatal).
            Engine::Vllm => Some(AdapterRoutes {
                load: "/v1/load_lora_adapter",
                unload: "/v1/unload_lora_adapter",
                reset_cache: Some("/reset_prefix_cache"),
            }),
            Engine::Sglang => Some(AdapterRoutes {
                load: "/load_lora_adapter",
                unload: "/unload_lora_adapter",
                reset_cache: Some("/flush_cache"),
            }),
            Engine::LlamaCpp | Engine::Openai => None,
        }
    }

    /// What this engine's log-probs are, when they are not those of the sampling distribution
    /// (`softmax(logits / temperature)`), for the log at the start of an online run.
    pub fn logprob_caveat(self) -> Option<&'static str> {
        match self {
            Engine::Malt => None,
            Engine::Vllm => Some(
                "vLLM returns the log-probs of the unscaled logits unless the server runs with \
                 --logprobs-mode processed_logprobs: start it so, or the log-prob mismatch \
                 metric and [online] importance_cap see the wrong distribution",
            ),
            Engine::Sglang | Engine::LlamaCpp | Engine::Openai => Some(
                "this engine's log-probs may not be those of softmax(logits / temperature): \
                 watch the log-prob mismatch metric before setting [online] importance_cap",
            ),
        }
    }

    /// What this engine does not honour of what malt relies on, one line each, for the log at
    /// the start of a run. `uses_top_k`: some agent samples with top-k.
    pub fn caveats(self, uses_top_k: bool) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Engine::Malt => {}
            Engine::Vllm => {
                out.push(
                    "per-choice seeds (malt_seeds) are not honoured: each choice is requested \
                     on its own (n = 1) with its seed mapped to vLLM's signed 64-bit range, so \
                     the trees differ from the embedded backend's"
                        .into(),
                );
                out.push(
                    "vLLM's online serving is not batch-invariant: a rerun may sample \
                     differently unless the server runs with VLLM_BATCH_INVARIANT=1"
                        .into(),
                );
            }
            Engine::Sglang => {
                out.push(
                    "per-choice seeds (malt_seeds) are not honoured: each choice is requested \
                     on its own (n = 1); the trees differ from the embedded backend's"
                        .into(),
                );
                out.push(
                    "SGLang honours `seed` only when started with \
                     --enable-deterministic-inference; otherwise every run samples anew"
                        .into(),
                );
            }
            Engine::LlamaCpp => {
                out.push(
                    "per-choice seeds (malt_seeds) are not honoured, and `n` only up to the \
                     server's --parallel slots: each choice is requested on its own (n = 1) \
                     with its seed mapped to 32 bits, so the trees differ from the embedded \
                     backend's"
                        .into(),
                );
                out.push(
                    "llama.cpp batches concurrent requests: a rerun may sample differently \
                     unless max_concurrency = 1"
                        .into(),
                );
            }
            Engine::Openai => {
                out.push(
                    "an unidentified OpenAI-compatible server: `seed` is best effort and \
                     per-choice seeds are not honoured, so the trees differ from the embedded \
                     backend's and between runs; set `engine` on the endpoint if it is vLLM, \
                     SGLang, llama.cpp or malt serve"
                        .into(),
                );
                if uses_top_k {
                    out.push(
                        "an agent samples with top_k, which is not an OpenAI request field: \
                         the server may ignore or refuse it"
                            .into(),
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use malt_tree::Message;

    fn params(top_k: u32) -> SamplingParams {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k,
            max_new_tokens: 16,
            stop: vec!["\n\n".into()],
        }
    }

    #[test]
    fn engines_are_recognised_from_their_model_cards() {
        let card =
            |owner: &str| json!({"object": "list", "data": [{"id": "m", "owned_by": owner}]});
        assert_eq!(Engine::from_models(&card("vllm")), Some(Engine::Vllm));
        assert_eq!(Engine::from_models(&card("sglang")), Some(Engine::Sglang));
        assert_eq!(
            Engine::from_models(&card("llamacpp")),
            Some(Engine::LlamaCpp)
        );
        assert_eq!(Engine::from_models(&card("malt")), Some(Engine::Malt));
        assert_eq!(Engine::from_models(&card("openai")), None);
        assert_eq!(Engine::from_models(&json!({"models": []})), None);
    }

    #[test]
    fn seeds_fit_each_engine_and_stay_distinct() {
        for seed in [
            0u64,
            1,
            u32::MAX as u64,
            u64::MAX,
            0x8000_0000_0000_0000,
            12345678901234,
        ] {
            assert!(Engine::Vllm.wire_seed(seed) <= i64::MAX as u64);
            assert!(Engine::Sglang.wire_seed(seed) <= i32::MAX as u64);
            assert!(Engine::LlamaCpp.wire_seed(seed) < u32::MAX as u64);
            assert_eq!(Engine::Malt.wire_seed(seed), seed);
        }
        let distinct: std::collections::BTreeSet<u64> = (0..1000u64)
            .map(|s| Engine::LlamaCpp.wire_seed(s * 7919))
            .collect();
        assert_eq!(distinct.len(), 1000);
    }

    #[test]
    fn bodies_pin_the_defaults_each_engine_would_apply() {
        let msgs = [Message::new("user", "hi")];
        let b = Engine::LlamaCpp.request_body("m", &msgs, &params(0), &[7], false);
        assert_eq!(
            (b["top_k"].clone(), b["min_p"].clone()),
            (json!(0), json!(0.0))
        );
        assert_eq!(b["n"], 1);
        let b = Engine::Vllm.request_body("m", &msgs, &params(0), &[7], false);
        assert_eq!(b["top_k"], -1);
        let b = Engine::Vllm.request_body("m", &msgs, &params(5), &[u64::MAX], false);
        assert_eq!(b["top_k"], 5);
        assert_eq!(b["seed"], json!(i64::MAX));
        let b = Engine::Openai.request_body("m", &msgs, &params(0), &[1, 2], false);
        assert!(b.get("top_k").is_none() && b.get("min_p").is_none());
        assert_eq!(b["n"], 2);
        let b = Engine::Malt.request_body("m", &msgs, &params(3), &[5, 6, 7], true);
        assert_eq!(b["malt_seeds"], json!([5, 6, 7]));
        assert_eq!(b["seed"], 5);
        assert_eq!(b["top_k"], 3);
        assert_eq!(b["stop"], json!(["\n\n"]));
    }

    #[test]
    fn every_engine_but_malt_states_its_caveats() {
        assert!(Engine::Malt.caveats(true).is_empty());
        for e in [
            Engine::Vllm,
            Engine::Sglang,
            Engine::LlamaCpp,
            Engine::Openai,
        ] {
            assert!(!e.caveats(false).is_empty(), "{e}");
        }
        assert!(Engine::Openai.caveats(true).len() > Engine::Openai.caveats(false).len());
    }
}
