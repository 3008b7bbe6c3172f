//! Request bodies -> validated jobs. Fields are read one by one so that an error names the
//! field at fault (`param`) and says what is accepted. Unknown fields are ignored, as vLLM
//! does, so stock OpenAI clients (which send `user`, `presence_penalty: 0`, ...) work.

use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::backend::{
    AdapterLoad, BackendError, ChainQuery, GenerationJob, SamplingParams, Seeds, ServeBackend,
    ServedModels,
};
use crate::error::ApiError;
use crate::limits::Limits;
use crate::protocol::Message;

/// Most stop strings a request may give.
const MAX_STOP: usize = 8;

/// A validated `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model name as requested (echoed in the response).
    pub model: String,
    pub job: GenerationJob,
    pub stream: bool,
    pub include_usage: bool,
}

/// The body as a JSON object, or a 400 saying why not.
fn json_object(body: &[u8]) -> Result<Fields, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("malformed JSON body: {e}")).with_code("invalid_json")
    })?;
    match value {
        Value::Object(map) => Ok(Fields(map)),
        other => Err(ApiError::invalid(format!(
            "the body must be a JSON object, got {}",
            kind_of(&other)
        ))
        .with_code("invalid_json")),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Fields(Map<String, Value>);

impl Fields {
    /// The field `name` (absent and `null` are both `None`), or a 400 naming it.
    fn take<T: DeserializeOwned>(
        &mut self,
        name: &str,
        expected: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.0.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let got = kind_of(&v);
                serde_json::from_value(v).map(Some).map_err(|e| {
                    ApiError::invalid_field(
                        name,
                        format!("`{name}` must be {expected}, got {got} ({e})"),
                    )
                })
            }
        }
    }
}

pub(crate) fn map_backend_error(e: BackendError) -> ApiError {
    match e {
        BackendError::Invalid(m) => ApiError::invalid(m),
        BackendError::NotAvailable(m) => ApiError::not_found(m),
        BackendError::Timeout(m) => ApiError::timeout(m),
        BackendError::Internal(m) => ApiError::internal(m),
    }
}

/// A seed for requests that give none: OpenAI leaves such requests unseeded, so the choices
/// differ from call to call (the seed used is returned in `malt_seeds`).
fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn messages(fields: &mut Fields) -> Result<Vec<Message>, ApiError> {
    let raw: Vec<Value> = fields
        .take("messages", "an array of {role, content} objects")?
        .ok_or_else(|| {
            ApiError::invalid_field("messages", "`messages` is required (a non-empty array)")
        })?;
    if raw.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(mut map) = m else {
            return Err(ApiError::invalid_field(
                &param,
                format!("{param} must be an object with `role` and `content`"),
            ));
        };
        let role = match map.remove("role") {
            Some(Value::String(r)) if matches!(r.as_str(), "system" | "user" | "assistant") => r,
            other => {
                return Err(ApiError::invalid_field(
                    &format!("{param}.role"),
                    format!(
                        "{param}.role must be \"system\", \"user\" or \"assistant\", got {}",
                        other
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "nothing".into())
                    ),
                ))
            }
        };
        let content = match map.remove("content") {
            Some(Value::String(s)) => s,
            // Content parts: only text parts carry meaning for a text model.
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid_field(
                                &format!("{param}.content[{j}]"),
                                format!(
                                    "{param}.content[{j}]: only {{\"type\": \"text\", \"text\": \
                                     ...}} parts are supported"
                                ),
                            ))
                        }
                    }
                }
                text
            }
            other => {
                return Err(ApiError::invalid_field(
                    &format!("{param}.content"),
                    format!(
                        "{param}.content must be a string, got {}",
                        other.as_ref().map(kind_of).unwrap_or("nothing")
                    ),
                ))
            }
        };
        out.push(Message { role, content });
    }
    Ok(out)
}

fn stop_strings(fields: &mut Fields) -> Result<Vec<String>, ApiError> {
    let stop = match fields.take::<Value>("stop", "a string or an array of strings")? {
        None => vec![],
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(ApiError::invalid_field(
                    "stop",
                    format!("`stop` entries must be strings, got {}", kind_of(&other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "stop",
                format!(
                    "`stop` must be a string or an array of strings, got {}",
                    kind_of(&other)
                ),
            ))
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_field(
            "stop",
            format!(
                "`stop` has {} strings; at most {MAX_STOP} are allowed",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_field(
            "stop",
            "`stop` strings must not be empty",
        ));
    }
    Ok(stop)
}

/// Validates a chat completion body against the limits and the backend's models and context.
pub fn validate_chat(
    body: &[u8],
    backend: &dyn ServeBackend,
    limits: &Limits,
) -> Result<ChatRequest, ApiError> {
    let mut f = json_object(body)?;
    let model: String = f
        .take("model", "a string")?
        .ok_or_else(|| ApiError::invalid_field("model", "`model` is required"))?;
    let served = backend.models();
    let adapter = served.resolve(&model).ok_or_else(|| {
        ApiError::not_found(format!(
            "model `{model}` does not exist on this server; served models: {}",
            served.names().join(", ")
        ))
        .with_param("model")
        .with_code("model_not_found")
    })?;
    let messages = messages(&mut f)?;

    let n: u64 = f.take("n", "a positive integer")?.unwrap_or(1);
    if n == 0 || n > limits.max_n as u64 {
        return Err(ApiError::invalid_field(
            "n",
            format!(
                "n = {n} is out of range: this server allows 1..={} choices per request \
                 ([serve] max_n)",
                limits.max_n
            ),
        ));
    }
    let n = n as usize;
    let temperature: f64 = f.take("temperature", "a number")?.unwrap_or(1.0);
    if !(0.0..=5.0).contains(&temperature) {
        return Err(ApiError::invalid_field(
            "temperature",
            format!("temperature = {temperature} is out of range: expected 0..=5 (0 = greedy)"),
        ));
    }
    let top_p: f64 = f.take("top_p", "a number")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_field(
            "top_p",
            format!("top_p = {top_p} is out of range: expected 0 < top_p <= 1"),
        ));
    }
    // vLLM's convention: -1 (or 0) disables top-k.
    let top_k: i64 = f.take("top_k", "an integer (-1 or 0 = off)")?.unwrap_or(0);
    if top_k < -1 {
        return Err(ApiError::invalid_field(
            "top_k",
            format!("top_k = {top_k} is out of range: expected -1 or 0 (off) or a positive count"),
        ));
    }
    let max_tokens: Option<u64> = f.take("max_tokens", "a positive integer")?;
    let max_completion: Option<u64> = f.take("max_completion_tokens", "a positive integer")?;
    let asked = match (max_tokens, max_completion) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid_field(
                "max_completion_tokens",
                format!("max_tokens = {a} and max_completion_tokens = {b} disagree; give only one"),
            ))
        }
        (a, b) => a.or(b),
    };
    let param = if max_completion.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    if let Some(m) = asked {
        if m == 0 || m > limits.max_tokens as u64 {
            return Err(ApiError::invalid_field(
                param,
                format!(
                    "{param} = {m} is out of range: this server allows 1..={} ([serve] max_tokens)",
                    limits.max_tokens
                ),
            ));
        }
    }
    let stop = stop_strings(&mut f)?;
    let seed: Option<u64> = f.take("seed", "a non-negative integer")?;
    let malt_seeds: Option<Vec<u64>> = f.take("malt_seeds", "an array of non-negative integers")?;
    let seeds = match malt_seeds {
        Some(s) if s.len() != n => {
            return Err(ApiError::invalid_field(
                "malt_seeds",
                format!(
                    "malt_seeds has {} seeds but n = {n}: give one seed per choice",
                    s.len()
                ),
            ))
        }
        Some(s) => Seeds::Explicit(s),
        None => Seeds::Derived(seed.unwrap_or_else(random_seed)),
    };
    let stream: bool = f.take("stream", "a boolean")?.unwrap_or(false);
    let include_usage = f
        .take::<Value>("stream_options", "an object")?
        .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
        .unwrap_or(false);
    let logprobs = f.take::<bool>("logprobs", "a boolean")?.unwrap_or(false);
    if logprobs && stream {
        return Err(ApiError::invalid_field(
            "logprobs",
            "`logprobs` is supported without streaming only: set `stream` to false",
        ));
    }
    if let Some(k) = f.take::<u64>("top_logprobs", "a non-negative integer")? {
        if k > 0 {
            return Err(ApiError::invalid_field(
                "top_logprobs",
                format!(
                    "top_logprobs = {k} is not supported: this server returns the log-prob of \
                     each sampled token only (`logprobs: true`, top_logprobs 0 or absent)"
                ),
            ));
        }
    }

    let prompt = backend
        .tokenize_chat(&messages)
        .map_err(map_backend_error)?;
    let context = backend.context_length();
    let room = context.saturating_sub(prompt.len());
    let max_tokens = match asked {
        Some(m) => m as usize,
        None => limits.max_tokens.min(room),
    };
    if max_tokens == 0 || prompt.len() + max_tokens > context {
        return Err(ApiError::invalid_field(
            "messages",
            format!(
                "this model's maximum context length is {context} tokens, but the request \
                 needs {} tokens ({} in the messages, {max_tokens} for the completion); \
                 shorten the messages or lower {param}",
                prompt.len() + max_tokens.max(1),
                prompt.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        job: GenerationJob {
            adapter,
            prompt,
            messages,
            n,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k: u32::try_from(top_k.max(0)).unwrap_or(u32::MAX),
                max_new_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
                stop,
            },
            seeds,
            logprobs,
            deadline: Instant::now() + limits.request_timeout,
        },
    })
}

/// Validates a `POST /v1/load_lora_adapter` body: `lora_name`, `lora_path`, `load_inplace`.
pub fn validate_load_adapter(body: &[u8], served: &ServedModels) -> Result<AdapterLoad, ApiError> {
    let mut f = json_object(body)?;
    let name = adapter_name(&mut f)?;
    if name == served.base || name == "base" {
        return Err(ApiError::invalid_field(
            "lora_name",
            format!("`{name}` names the base model; choose another name for the adapter"),
        ));
    }
    let path: String = f
        .take("lora_path", "a string")?
        .filter(|p: &String| !p.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid_field(
                "lora_path",
                "`lora_path` is required: a PEFT LoRA directory (adapter_config.json + \
                 adapter_model.safetensors) on the server's disk",
            )
        })?;
    let replace = f.take("load_inplace", "a boolean")?.unwrap_or(false);
    Ok(AdapterLoad {
        name,
        path,
        replace,
    })
}

/// Validates a `POST /v1/unload_lora_adapter` body; returns `lora_name`.
pub fn validate_unload_adapter(body: &[u8]) -> Result<String, ApiError> {
    adapter_name(&mut json_object(body)?)
}

fn adapter_name(f: &mut Fields) -> Result<String, ApiError> {
    f.take("lora_name", "a string")?
        .filter(|n: &String| !n.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_field("lora_name", "`lora_name` is required"))
}

/// Validates a `POST /v1/malt/chain` body.
pub fn validate_chain(body: &[u8], limits: &Limits) -> Result<ChainQuery, ApiError> {
    let mut f = json_object(body)?;
    let question: Option<String> = f.take("question", "a string")?;
    let record: Option<Value> = f.take("record", "a dataset record (a JSON object)")?;
    match (&question, &record) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::invalid_field(
                "question",
                "give exactly one of `question` (text) and `record` (a dataset record object)",
            ))
        }
        (Some(q), None) if q.trim().is_empty() => {
            return Err(ApiError::invalid_field("question", "`question` is empty"))
        }
        (None, Some(r)) if !r.is_object() => {
            return Err(ApiError::invalid_field(
                "record",
                format!("`record` must be a JSON object, got {}", kind_of(r)),
            ))
        }
        _ => {}
    }
    let k: Option<u64> = f.take("k", "a positive integer")?;
    if let Some(k) = k {
        if k == 0 || k > limits.max_n as u64 {
            return Err(ApiError::invalid_field(
                "k",
                format!(
                    "k = {k} is out of range: this server allows 1..={} attempts ([serve] max_n)",
                    limits.max_n
                ),
            ));
        }
    }
    let seed: u64 = f.take("seed", "a non-negative integer")?.unwrap_or(0);
    Ok(ChainQuery {
        question,
        record,
        k: k.map(|k| k as u32),
        seed,
        deadline: Instant::now() + limits.request_timeout,
    })
}
