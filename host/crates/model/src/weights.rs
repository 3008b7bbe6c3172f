//! Reading checkpoints into HF-named f32 tensors: Hugging Face directories (single or sharded
//! safetensors) and GGUF files (dequantised, q/k un-permuted back to HF's RoPE layout so one
//! decoder and one RoPE kernel serve both).

use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Loads every tensor of a HF directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. Returns the tensors and the file named in errors.
pub fn load_hf_tensors(dir: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: index.clone(),
            msg: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Config {
                file: index.clone(),
                msg: "missing `weight_map`".into(),
            })?;
        let names: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else if single.exists() {
        vec![single.clone()]
    } else {
        return Err(ModelError::MissingFile { path: single });
    };
    let mut all = HashMap::new();
    for f in &files {
        if !f.exists() {
            return Err(ModelError::MissingFile { path: f.clone() });
        }
        let t = candle_core::safetensors::load(f, device)
            .map_err(|e| ModelError::Invalid(format!("reading {}: {e}", f.display())))?;
        all.extend(t);
    }
    let named = if files.len() == 1 {
        files[0].clone()
    } else {
        index
    };
    Ok((all, named))
}

fn md_u(ct: &gguf_file::Content, key: &str, path: &Path) -> Result<usize> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config {
            file: path.into(),
            msg: format!("missing GGUF metadata `{key}`"),
        })
}

fn md_f(ct: &gguf_file::Content, key: &str) -> Option<f64> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_f32().map(f64::from).ok().or_else(|| v.to_f64().ok()))
}

/// Inverse of llama.cpp's `permute` (convert_hf_to_gguf.py) for q/k: GGUF stores each head's
/// rows interleaved (pairs) for `rope_i`; HF stores the two halves separately.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?
        .contiguous()?)
}

/// The forward permutation (HF -> GGUF), used by tests that write GGUF files.
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?
        .contiguous()?)
}

/// GGUF tensor name -> HF name.
fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (i, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let m = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{m}.{kind}"))
}

/// A GGUF checkpoint: config from metadata, tensors dequantised to f32 with HF names.
pub struct GgufCheckpoint {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
    pub content: gguf_file::Content,
}

pub fn load_gguf(path: &Path, device: &Device) -> Result<GgufCheckpoint> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| ModelError::Invalid(format!("reading GGUF {}: {e}", path.display())))?;
    let arch_name = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "<none>".into());
    let arch = Arch::detect(&arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
        arch: arch_name.clone(),
        file: path.into(),
    })?;
    let a = arch_name.as_str();
    let hidden = md_u(&ct, &format!("{a}.embedding_length"), path)?;
    let n_head = md_u(&ct, &format!("{a}.attention.head_count"), path)?;
    let n_kv = md_u(&ct, &format!("{a}.attention.head_count_kv"), path).unwrap_or(n_head);
    let head_dim =
        md_u(&ct, &format!("{a}.attention.key_length"), path).unwrap_or(hidden / n_head.max(1));
    let embd_info =
        ct.tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: "token_embd.weight".into(),
                file: path.into(),
            })?;
    let vocab = embd_info.shape.dims()[0];
    let tied = !ct.tensor_infos.contains_key("output.weight");
    let has_bias = ct.tensor_infos.contains_key("blk.0.attn_q.bias");
    let id = |k: &str| ct.metadata.get(k).and_then(|v| v.to_u32().ok());
    let config = ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: md_u(&ct, &format!("{a}.feed_forward_length"), path)?,
        num_hidden_layers: md_u(&ct, &format!("{a}.block_count"), path)?,
        num_attention_heads: n_head,
        num_key_value_heads: n_kv,
        head_dim,
        rms_norm_eps: md_f(&ct, &format!("{a}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        rope_theta: md_f(&ct, &format!("{a}.rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: md_u(&ct, &format!("{a}.context_length"), path).unwrap_or(4096),
        tie_word_embeddings: tied,
        qkv_bias: has_bias,
        o_bias: ct.tensor_infos.contains_key("blk.0.attn_output.bias"),
        qk_norm: arch == Arch::Qwen3,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
    };
    // llama.cpp permutes q/k only for the llama architecture (qwen2/3 use NEOX-style RoPE).
    let permuted = arch == Arch::Llama;
    let mut tensors = HashMap::new();
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    for name in names {
        let Some(hf) = hf_name(&name) else {
            tracing::debug!("ignoring GGUF tensor {name}");
            continue;
        };
        let q = ct.tensor(&mut f, &name, device).map_err(|e| {
            ModelError::Invalid(format!("GGUF {} tensor {name}: {e}", path.display()))
        })?;
        let mut t = q.dequantize(device)?.to_dtype(DType::F32)?;
        if permuted && t.rank() == 2 {
            if name.ends_with("attn_q.weight") {
                t = unpermute_qk(&t, n_head)?;
            } else if name.ends_with("attn_k.weight") {
                t = unpermute_qk(&t, n_kv)?;
            }
        }
        tensors.insert(hf, t);
    }
    Ok(GgufCheckpoint {
        config,
        tensors,
        content: ct,
    })
}
