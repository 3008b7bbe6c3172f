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

/// The safetensors files of a HF directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`; and the file to name in errors.
fn hf_files(dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    if index.exists() {
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
        Ok((names.into_iter().map(|n| dir.join(n)).collect(), index))
    } else if single.exists() {
        Ok((vec![single.clone()], single))
    } else {
        Err(ModelError::MissingFile { path: single })
    }
}

/// A safetensors file's header: the tensors' dtypes, shapes and byte ranges, and where the data
/// starts. Only the header is read.
fn read_header(path: &Path, f: &mut std::fs::File) -> Result<(safetensors::tensor::Metadata, u64)> {
    use std::io::Read;
    let bad = |msg: String| ModelError::Invalid(format!("reading {}: {msg}", path.display()));
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| ModelError::io(path, e))?;
    let n = u64::from_le_bytes(len);
    // safetensors' own limit on the header.
    if n > 100_000_000 {
        return Err(bad(format!("header of {n} bytes: not a safetensors file")));
    }
    let mut buf = vec![0u8; 8 + n as usize];
    buf[..8].copy_from_slice(&len);
    f.read_exact(&mut buf[8..])
        .map_err(|e| ModelError::io(path, e))?;
    let text = std::str::from_utf8(&buf[8..]).map_err(|e| bad(format!("header: {e}")))?;
    // `Metadata`'s own deserialisation checks that the tensors tile the data without gaps.
    let meta: safetensors::tensor::Metadata =
        serde_json::from_str(text).map_err(|e| bad(format!("header: {e}")))?;
    let end = meta
        .tensors()
        .values()
        .map(|t| t.data_offsets.1)
        .max()
        .unwrap_or(0) as u64;
    let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if 8 + n + end != len {
        return Err(bad(format!(
            "the header describes {} bytes of data but the file holds {} (truncated or padded file)",
            end,
            len.saturating_sub(8 + n)
        )));
    }
    Ok((meta, 8 + n))
}

fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::BF16 => DType::BF16,
        S::F16 => DType::F16,
        S::F64 => DType::F64,
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        _ => return None,
    })
}

/// The dtype a HF checkpoint stores its weights in (that of its embeddings, else of its first
/// floating-point tensor).
pub fn hf_stored_dtype(dir: &Path) -> Result<DType> {
    let (files, _) = hf_files(dir)?;
    let mut found = None;
    for path in &files {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let (meta, _) = read_header(path, &mut f)?;
        let tensors = meta.tensors();
        if let Some(info) = tensors.get("model.embed_tokens.weight") {
            return Ok(candle_dtype(info.dtype).unwrap_or(DType::F32));
        }
        if found.is_none() {
            found = tensors
                .values()
                .filter_map(|i| candle_dtype(i.dtype))
                .find(|d| d.is_float());
        }
    }
    Ok(found.unwrap_or(DType::F32))
}

/// Loads every tensor of a HF directory, floating-point ones converted to `dtype`. Tensors are
/// read one at a time (never the whole file into memory), so the peak is the converted tensors
/// plus one tensor as stored. Returns the tensors and the file named in errors.
pub fn load_hf_tensors(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    use std::io::{Read, Seek, SeekFrom};
    let (files, named) = hf_files(dir)?;
    let mut all = HashMap::new();
    for path in &files {
        if !path.exists() {
            return Err(ModelError::MissingFile { path: path.clone() });
        }
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let size = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let (meta, data_start) = read_header(path, &mut f)?;
        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
            meta.tensors().into_iter().collect();
        // In file order, so the reads stream.
        infos.sort_by_key(|(_, i)| i.data_offsets.0);
        let mut bytes = Vec::new();
        for (name, info) in infos {
            let bad = |msg: String| {
                ModelError::Invalid(format!("reading {} tensor {name}: {msg}", path.display()))
            };
            let stored = candle_dtype(info.dtype)
                .ok_or_else(|| bad(format!("unsupported dtype {:?}", info.dtype)))?;
            let (a, b) = info.data_offsets;
            if data_start + b as u64 > size {
                return Err(bad(format!(
                    "data ends at byte {} of a {size}-byte file (truncated?)",
                    data_start + b as u64
                )));
            }
            bytes.resize(b - a, 0);
            f.seek(SeekFrom::Start(data_start + a as u64))
                .and_then(|_| f.read_exact(&mut bytes))
                .map_err(|e| ModelError::io(path, e))?;
            let t = Tensor::from_raw_buffer(&bytes, stored, &info.shape, &Device::Cpu)
                .map_err(|e| bad(e.to_string()))?;
            let t = if stored.is_float() && stored != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            all.insert(name, t.to_device(device)?);
        }
    }
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
    /// The dtype the matrices were converted to.
    pub dtype: DType,
}

/// [`gguf_config`] of a GGUF file, reading its header only.
pub fn read_gguf_config(path: &Path) -> Result<(ModelConfig, DType)> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| ModelError::Invalid(format!("reading GGUF {}: {e}", path.display())))?;
    gguf_config(&ct, path)
}

/// The model's shape and the dtype its embeddings are stored in (quantised types count as
/// f32), from a GGUF file's metadata alone.
fn gguf_config(ct: &gguf_file::Content, path: &Path) -> Result<(ModelConfig, DType)> {
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
    let hidden = md_u(ct, &format!("{a}.embedding_length"), path)?;
    let n_head = md_u(ct, &format!("{a}.attention.head_count"), path)?;
    let n_kv = md_u(ct, &format!("{a}.attention.head_count_kv"), path).unwrap_or(n_head);
    let head_dim =
        md_u(ct, &format!("{a}.attention.key_length"), path).unwrap_or(hidden / n_head.max(1));
    let embd_info =
        ct.tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: "token_embd.weight".into(),
                file: path.into(),
            })?;
    let vocab = embd_info.shape.dims()[0];
    let stored = match embd_info.ggml_dtype {
        candle_core::quantized::GgmlDType::BF16 => DType::BF16,
        candle_core::quantized::GgmlDType::F16 => DType::F16,
        _ => DType::F32,
    };
    let tied = !ct.tensor_infos.contains_key("output.weight");
    let has_bias = ct.tensor_infos.contains_key("blk.0.attn_q.bias");
    let id = |k: &str| ct.metadata.get(k).and_then(|v| v.to_u32().ok());
    let config = ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: md_u(ct, &format!("{a}.feed_forward_length"), path)?,
        num_hidden_layers: md_u(ct, &format!("{a}.block_count"), path)?,
        num_attention_heads: n_head,
        num_key_value_heads: n_kv,
        head_dim,
        rms_norm_eps: md_f(ct, &format!("{a}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        rope_theta: md_f(ct, &format!("{a}.rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: md_u(ct, &format!("{a}.context_length"), path).unwrap_or(4096),
        tie_word_embeddings: tied,
        qkv_bias: has_bias,
        o_bias: ct.tensor_infos.contains_key("blk.0.attn_output.bias"),
        qk_norm: arch == Arch::Qwen3,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
    };
    Ok((config, stored))
}

/// Reads a GGUF file, dequantising each tensor and converting it to the dtype `dtype_for` picks
/// from the file's own (that of its embeddings: f32, bf16 or f16, quantised types count as f32),
/// one tensor at a time.
pub fn load_gguf(
    path: &Path,
    device: &Device,
    dtype_for: impl FnOnce(DType) -> DType,
) -> Result<GgufCheckpoint> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| ModelError::Invalid(format!("reading GGUF {}: {e}", path.display())))?;
    let (config, stored) = gguf_config(&ct, path)?;
    let dtype = dtype_for(stored);
    let (arch, n_head, n_kv) = (
        config.arch,
        config.num_attention_heads,
        config.num_key_value_heads,
    );
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
        let mut t = q.dequantize(device)?;
        if permuted && t.rank() == 2 {
            if name.ends_with("attn_q.weight") {
                t = unpermute_qk(&t, n_head)?;
            } else if name.ends_with("attn_k.weight") {
                t = unpermute_qk(&t, n_kv)?;
            }
        }
        // Norms stay f32 (the decoder keeps them in the activations' dtype); matrices take the
        // chosen dtype now, so the file never exists whole in f32.
        if t.rank() == 2 && t.dtype() != dtype {
            t = t.to_dtype(dtype)?;
        }
        tensors.insert(hf, t);
    }
    Ok(GgufCheckpoint {
        config,
        tensors,
        content: ct,
        dtype,
    })
}
