//! A loaded model: decoder + tokenizer + chat template, from a source string (the embedded
//! default, a HF directory or a GGUF file), plus LoRA merge and merged HF export.

use crate::chat::{ChatTemplate, Message};
use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::fetch;
use crate::lora::{LoraAdapter, LoraConfig, Proj};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The dtype weights are held in when none is asked for: f32 on the CPU (the exact path, and
/// the one the CPU peers are compared in), the checkpoint's own on a GPU (bf16 for most HF
/// checkpoints, as PyTorch and vLLM run them). `stored` is the checkpoint's dtype; quantised
/// GGUF files count as f32.
pub fn default_dtype(device: &Device, stored: DType) -> DType {
    default_dtype_for(device.is_cpu(), stored)
}

/// [`default_dtype`] by whether the device is the CPU, for planning before any device exists.
pub fn default_dtype_for(cpu: bool, stored: DType) -> DType {
    match (cpu, stored) {
        (true, _) => DType::F32,
        (false, DType::BF16 | DType::F16 | DType::F32) => stored,
        (false, _) => DType::F32,
    }
}

/// Parses `f32`, `bf16` or `f16` (a config's `[model] dtype`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(ModelError::Invalid(format!(
            "dtype {other:?}: expected \"f32\", \"bf16\" or \"f16\""
        ))),
    }
}

/// A command's `--dtype`: `None` or "auto" lets the model layer pick (f32 on the CPU, the
/// checkpoint's own on a GPU), anything else as [`parse_dtype`].
pub fn parse_dtype_or_auto(s: Option<&str>) -> Result<Option<DType>> {
    match s.map(str::trim) {
        None | Some("auto") => Ok(None),
        Some(d) => parse_dtype(d).map(Some),
    }
}

/// `torch_dtype` (or `dtype`) of a HF config.json; f32 when it names none.
fn config_torch_dtype(path: &Path) -> Result<DType> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.into(),
        msg: e.to_string(),
    })?;
    match v
        .get("torch_dtype")
        .or_else(|| v.get("dtype"))
        .and_then(|d| d.as_str())
    {
        Some(d) => parse_dtype(d),
        None => Ok(DType::F32),
    }
}

/// The tokenizer of a GGUF file, from its header; errors name the file.
fn gguf_tokenizer(path: &Path) -> Result<Tokenizer> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f)
        .map_err(|e| ModelError::Invalid(format!("reading GGUF {}: {e}", path.display())))?;
    Tokenizer::from_gguf(&ct).map_err(|e| match e {
        ModelError::Tokenizer(msg) => ModelError::Tokenizer(format!("{}: {msg}", path.display())),
        e => e,
    })
}

/// The tokenizer's own chat template, or ChatML (with a warning) when it ships none.
fn chat_template(tokenizer: &Tokenizer, source: &str) -> Result<ChatTemplate> {
    Ok(match &tokenizer.chat_template {
        Some(t) => ChatTemplate::new(
            t,
            tokenizer.bos_token.as_deref().unwrap_or(""),
            tokenizer.eos_token.as_deref().unwrap_or(""),
        )?,
        None => {
            tracing::warn!("{source}: no chat template, using ChatML");
            ChatTemplate::chatml()
        }
    })
}

#[derive(Debug)]
pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    /// Token ids that end a completion.
    pub stop_ids: Vec<u32>,
    /// Where the weights came from (a path), for adapter metadata and logs.
    pub source: String,
}

impl Model {
    /// `smollm2-135m-instruct` (fetched on first use), a HF directory, or a `.gguf` file, with
    /// its weights held in [`default_dtype`].
    pub fn load(source: &str, device: &Device) -> Result<Self> {
        Self::load_as(source, device, None)
    }

    /// [`Model::load`] with the weight matrices held in `dtype` (f32, bf16 or f16); None picks
    /// [`default_dtype`]. Each tensor is converted as it is read, so a bf16 checkpoint loaded as
    /// bf16 never exists in f32.
    pub fn load_as(source: &str, device: &Device, dtype: Option<DType>) -> Result<Self> {
        if source.eq_ignore_ascii_case(fetch::DEFAULT_MODEL) {
            let path = fetch::ensure_smollm2()?;
            return Self::load_gguf(&path, device, dtype);
        }
        let path = PathBuf::from(source);
        if path.is_dir() {
            Self::load_hf_dir(&path, device, dtype)
        } else if path.is_file() {
            if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
                Self::load_gguf(&path, device, dtype)
            } else {
                Err(ModelError::Invalid(format!(
                    "{source}: expected a HF model directory or a .gguf file"
                )))
            }
        } else {
            Err(ModelError::MissingFile { path })
        }
    }

    /// The shape and stored dtype of `source` (as [`Model::load_as`] takes it) from its config
    /// and headers alone, without reading any weights: what memory planning needs. The
    /// embedded default is read from its cached copy; None when it is not fetched yet.
    pub fn inspect(source: &str) -> Result<Option<(ModelConfig, DType)>> {
        if source.eq_ignore_ascii_case(fetch::DEFAULT_MODEL) {
            return fetch::smollm2_cached()
                .map(|p| crate::weights::read_gguf_config(&p))
                .transpose();
        }
        let path = PathBuf::from(source);
        if path.is_dir() {
            let cfg_path = path.join("config.json");
            let cfg = ModelConfig::from_hf_file(&cfg_path)?;
            // Weights not downloaded yet: the dtype the config says they are stored in.
            let stored = match crate::weights::hf_stored_dtype(&path) {
                Ok(d) => d,
                Err(ModelError::MissingFile { .. }) => config_torch_dtype(&cfg_path)?,
                Err(e) => return Err(e),
            };
            Ok(Some((cfg, stored)))
        } else if path.extension().and_then(|e| e.to_str()) == Some("gguf") && path.is_file() {
            crate::weights::read_gguf_config(&path).map(Some)
        } else {
            Err(ModelError::MissingFile { path })
        }
    }

    pub fn load_hf_dir(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = ModelConfig::from_hf_file(&cfg_path)?;
        let stored = crate::weights::hf_stored_dtype(dir)?;
        let dtype = dtype.unwrap_or_else(|| default_dtype(device, stored));
        let (tensors, file) = crate::weights::load_hf_tensors(dir, device, dtype)?;
        let decoder = Decoder::from_tensors(cfg, tensors, &file, device, dtype)?;
        let tokenizer = Tokenizer::from_hf_dir(dir)?;
        Self::assemble(decoder, tokenizer, dir.display().to_string())
    }

    pub fn load_gguf(path: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        // The tokenizer first, from the header alone: a refused tokenizer must not wait for
        // gigabytes of weights.
        let tokenizer = gguf_tokenizer(path)?;
        let ck = crate::weights::load_gguf(path, device, |stored| {
            dtype.unwrap_or_else(|| default_dtype(device, stored))
        })?;
        let decoder = Decoder::from_tensors(ck.config, ck.tensors, path, device, ck.dtype)?;
        Self::assemble(decoder, tokenizer, path.display().to_string())
    }

    /// The tokenizer and chat template of `source` (as [`Model::load`] takes it), without
    /// reading any weights: what a stage needs to know the model's text side.
    pub fn load_tokenizer(source: &str) -> Result<(Tokenizer, ChatTemplate)> {
        let path = if source.eq_ignore_ascii_case(fetch::DEFAULT_MODEL) {
            fetch::ensure_smollm2()?
        } else {
            PathBuf::from(source)
        };
        let tokenizer = if path.is_dir() {
            Tokenizer::from_hf_dir(&path)?
        } else if path.is_file() && path.extension().and_then(|e| e.to_str()) == Some("gguf") {
            gguf_tokenizer(&path)?
        } else if path.is_file() {
            return Err(ModelError::Invalid(format!(
                "{source}: expected a HF model directory or a .gguf file"
            )));
        } else {
            return Err(ModelError::MissingFile { path });
        };
        let chat = chat_template(&tokenizer, source)?;
        Ok((tokenizer, chat))
    }

    /// [`crate::tokenizer::fingerprint`] of this model's tokenizer and chat template.
    pub fn tokenizer_fingerprint(&self) -> Result<String> {
        crate::tokenizer::fingerprint(&self.tokenizer, &self.chat)
    }

    fn assemble(decoder: Decoder, tokenizer: Tokenizer, source: String) -> Result<Self> {
        let chat = chat_template(&tokenizer, &source)?;
        let stop_ids = tokenizer.stop_ids(&decoder.cfg.eos_token_ids);
        Ok(Model {
            decoder,
            tokenizer,
            chat,
            stop_ids,
            source,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.decoder.cfg
    }

    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    /// The chat prompt text for `messages`, from the model's template.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.chat.render(messages, add_generation_prompt)
    }

    /// Rendered and tokenized (the template supplies special tokens, so none are added).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, add_generation_prompt)?;
        self.tokenizer.encode(&text, false)
    }

    /// A fresh adapter for this model (A random from `seed`, B zero).
    pub fn new_adapter(&self, name: &str, config: LoraConfig, seed: u64) -> Result<LoraAdapter> {
        LoraAdapter::new(name, config, self.config(), self.device(), seed)
    }

    pub fn load_adapter(&self, dir: &Path, name: &str) -> Result<LoraAdapter> {
        LoraAdapter::load_peft(dir, name, self.config(), self.device())
    }

    /// All weights with HF names, with `adapter` merged in (`W + alpha/r * B A`).
    /// Tied models have no separate `lm_head.weight`.
    pub fn merged_tensors(&self, adapter: Option<&LoraAdapter>) -> Result<HashMap<String, Tensor>> {
        let d = &self.decoder;
        let mut out = HashMap::new();
        out.insert("model.embed_tokens.weight".into(), d.embed.clone());
        out.insert("model.norm.weight".into(), d.norm.clone());
        if !d.cfg.tie_word_embeddings {
            out.insert("lm_head.weight".into(), d.lm_head.clone());
        }
        for (i, l) in d.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.insert(format!("{p}.input_layernorm.weight"), l.input_norm.clone());
            out.insert(
                format!("{p}.post_attention_layernorm.weight"),
                l.post_norm.clone(),
            );
            if let Some(t) = &l.q_norm {
                out.insert(format!("{p}.self_attn.q_norm.weight"), t.clone());
            }
            if let Some(t) = &l.k_norm {
                out.insert(format!("{p}.self_attn.k_norm.weight"), t.clone());
            }
            for proj in Proj::ALL {
                let lin = l.proj(proj);
                let base = format!("{p}.{}.{}", proj.module(), proj.hf_name());
                // Merged in f32 and stored in the base's dtype: what a user of a bf16 base
                // expects to load back.
                let w = match adapter.map(|a| a.delta(i, proj)).transpose()?.flatten() {
                    Some(delta) => {
                        (lin.w.to_dtype(DType::F32)? + delta)?.to_dtype(lin.w.dtype())?
                    }
                    None => lin.w.clone(),
                };
                out.insert(format!("{base}.weight"), w);
                if let Some(b) = &lin.b {
                    out.insert(format!("{base}.bias"), b.clone());
                }
            }
        }
        Ok(out)
    }

    /// Writes a HF directory (config.json, model.safetensors, tokenizer files) with `adapter`
    /// merged: what `malt export --merge` produces and transformers / vLLM / this crate load.
    pub fn export_merged(&self, dir: &Path, adapter: Option<&LoraAdapter>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let cpath = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.config().to_hf_json())
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        std::fs::write(&cpath, text).map_err(|e| ModelError::io(&cpath, e))?;
        let tensors = self.merged_tensors(adapter)?;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        let mut tok = self.tokenizer.clone();
        if tok.chat_template.is_none() && !self.chat.is_fallback {
            tok.chat_template = Some(self.chat.source.clone());
        }
        tok.save_hf(dir)
    }
}
