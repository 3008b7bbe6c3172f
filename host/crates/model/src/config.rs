//! The decoder's hyper-parameters, parsed from a Hugging Face `config.json` (or GGUF metadata)
//! into one architecture-neutral struct, so the decoder has a single code path for Llama, Qwen2
//! and Qwen3 and the differences are plain flags.

use crate::error::{ModelError, Result};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
    /// Recognises HF class names (`LlamaForCausalLM`), `model_type` values and GGUF
    /// `general.architecture` values. Mistral is a Llama for our purposes.
    pub fn detect(name: &str) -> Option<Arch> {
        let n = name.to_ascii_lowercase();
        if n.starts_with("qwen3") && !n.contains("moe") {
            Some(Arch::Qwen3)
        } else if n.starts_with("qwen2") && !n.contains("moe") && !n.contains("vl") {
            Some(Arch::Qwen2)
        } else if n.starts_with("llama") || n.starts_with("mistral") {
            Some(Arch::Llama)
        } else {
            None
        }
    }
}

/// Llama-3 style frequency-dependent RoPE scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always on for Qwen2, `attention_bias` elsewhere).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama's `attention_bias` also covers o_proj).
    pub o_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// A Llama shape with the usual defaults: `head_dim = hidden / heads`, RoPE theta 10 000
    /// without scaling, RMSNorm eps 1e-5, 2048 positions, tied embeddings, no biases, no special
    /// tokens. Tests and benchmarks build their random checkpoints from it (struct update syntax
    /// for anything else).
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }
}

fn get_usize(v: &Value, key: &str, file: &Path) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config {
            file: file.into(),
            msg: format!("missing or non-integer `{key}`"),
        })
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    pub fn n_rep(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Parses a HF `config.json` value; `file` only names the source in errors.
    pub fn from_hf_json(v: &Value, file: &Path) -> Result<Self> {
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| v.get("model_type").and_then(Value::as_str))
            .unwrap_or("<none>");
        let arch = Arch::detect(arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
            arch: arch_name.to_string(),
            file: file.into(),
        })?;
        let hidden_size = get_usize(v, "hidden_size", file)?;
        let num_attention_heads = get_usize(v, "num_attention_heads", file)?;
        let num_key_value_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_attention_heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Config {
                file: file.into(),
                msg: format!(
                    "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
                ),
            });
        }
        if v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false) {
            return Err(ModelError::Config {
                file: file.into(),
                msg: "mlp_bias = true is not supported".into(),
            });
        }
        // transformers >= 5 writes the RoPE settings as one `rope_parameters` object (`rope_theta`,
        // `rope_type` and the scaling keys); earlier configs have top-level `rope_theta` and
        // `rope_scaling`, which win when both are present.
        let rope_parameters = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_scaling = match v
            .get("rope_scaling")
            .filter(|rs| rs.is_object())
            .or(rope_parameters)
        {
            Some(rs) => {
                let kind = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str, d: f64| rs.get(k).and_then(Value::as_f64).unwrap_or(d);
                        Some(Llama3RopeScaling {
                            factor: f("factor", 8.0),
                            low_freq_factor: f("low_freq_factor", 1.0),
                            high_freq_factor: f("high_freq_factor", 4.0),
                            original_max_position_embeddings: rs
                                .get("original_max_position_embeddings")
                                .and_then(Value::as_u64)
                                .unwrap_or(8192)
                                as usize,
                        })
                    }
                    other => {
                        return Err(ModelError::Config {
                            file: file.into(),
                            msg: format!("unsupported rope_scaling type `{other}`"),
                        })
                    }
                }
            }
            _ => None,
        };
        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(ModelConfig {
            arch,
            vocab_size: get_usize(v, "vocab_size", file)?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", file)?,
            num_hidden_layers: get_usize(v, "num_hidden_layers", file)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta: v
                .get("rope_theta")
                .or_else(|| rope_parameters.and_then(|p| p.get("rope_theta")))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            qk_norm: arch == Arch::Qwen3,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids: ids(v.get("eos_token_id")),
        })
    }

    /// Reads and parses `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: path.into(),
            msg: e.to_string(),
        })?;
        Self::from_hf_json(&v, path)
    }

    /// A `config.json` that transformers, vLLM and this crate read back into the same config.
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        let obj = v.as_object_mut().expect("json! object");
        match self.arch {
            Arch::Llama => {
                obj.insert("attention_bias".into(), json!(self.qkv_bias));
                obj.insert("mlp_bias".into(), json!(false));
            }
            Arch::Qwen2 => {}
            Arch::Qwen3 => {
                obj.insert("attention_bias".into(), json!(self.qkv_bias));
            }
        }
        if let Some(rs) = &self.rope_scaling {
            obj.insert(
                "rope_scaling".into(),
                json!({
                    "rope_type": "llama3",
                    "factor": rs.factor,
                    "low_freq_factor": rs.low_freq_factor,
                    "high_freq_factor": rs.high_freq_factor,
                    "original_max_position_embeddings": rs.original_max_position_embeddings,
                }),
            );
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(b));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), json!(one));
            }
            many => {
                obj.insert("eos_token_id".into(), json!(many));
            }
        }
        v
    }

    /// RoPE inverse frequencies, with Llama-3 scaling applied when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / d as f64))
            .collect();
        let Some(rs) = &self.rope_scaling else {
            return base.into_iter().map(|x| x as f32).collect();
        };
        let orig = rs.original_max_position_embeddings as f64;
        let low_wavelen = orig / rs.low_freq_factor;
        let high_wavelen = orig / rs.high_freq_factor;
        base.into_iter()
            .map(|freq| {
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / rs.factor
                } else {
                    let smooth = (orig / wavelen - rs.low_freq_factor)
                        / (rs.high_freq_factor - rs.low_freq_factor);
                    (1.0 - smooth) * freq / rs.factor + smooth * freq
                };
                f as f32
            })
            .collect()
    }
}
