//! The plain-candle baseline for `malt bench generate`: candle-transformers' own Llama running
//! over the same f32 weights (shared, not copied), so the benchmark prints malt's throughput as
//! a ratio against a decoder measured in the same run on the same machine state.
//!
//! Only what that model supports: Llama-architecture checkpoints without q/k/v bias, q/k norm or
//! RoPE scaling (SmolLM2 is one).

use candle_core::{DType, Tensor, D};
use candle_transformers::models::llama::{Cache, Config, Llama};
use malt_model::config::Arch;
use malt_model::error::{ModelError, Result};
use malt_model::lora::Proj;
use malt_model::model::Model;
use std::collections::HashMap;
use std::time::Instant;

pub struct PlainCandle {
    llama: Llama,
    cfg: Config,
    device: candle_core::Device,
    /// The decoder's weight dtype: candle-transformers runs everything in it.
    dtype: DType,
}

impl PlainCandle {
    /// candle-transformers' Llama over `m`'s weights.
    pub fn new(m: &Model) -> Result<Self> {
        let c = m.config();
        if c.arch != Arch::Llama || c.qkv_bias || c.o_bias || c.qk_norm || c.rope_scaling.is_some()
        {
            return Err(ModelError::Invalid(
                "the plain-candle baseline runs only Llama checkpoints without biases, q/k norm \
                 or RoPE scaling"
                    .into(),
            ));
        }
        let d = &m.decoder;
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert("model.embed_tokens.weight".into(), d.embed.clone());
        t.insert("model.norm.weight".into(), d.norm.clone());
        if !c.tie_word_embeddings {
            t.insert("lm_head.weight".into(), d.lm_head.clone());
        }
        for (i, layer) in d.layers.iter().enumerate() {
            let pre = format!("model.layers.{i}");
            for p in Proj::ALL {
                let name = format!("{pre}.{}.{}.weight", p.module(), p.hf_name());
                t.insert(name, layer.proj(p).w.clone());
            }
            t.insert(
                format!("{pre}.input_layernorm.weight"),
                layer.input_norm.clone(),
            );
            t.insert(
                format!("{pre}.post_attention_layernorm.weight"),
                layer.post_norm.clone(),
            );
        }
        let cfg = Config {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            use_flash_attn: false,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
        };
        let device = d.device().clone();
        let dtype = d.dtype();
        let vb = candle_nn::VarBuilder::from_tensors(t, dtype, &device);
        let llama = Llama::load(vb, &cfg)?;
        Ok(PlainCandle {
            llama,
            cfg,
            device,
            dtype,
        })
    }

    fn cache(&self) -> Result<Cache> {
        Ok(Cache::new(true, self.dtype, &self.cfg, &self.device)?)
    }

    /// Seconds to prefill `tokens` into a fresh cache.
    pub fn prefill_secs(&self, tokens: &[u32]) -> Result<f64> {
        let mut cache = self.cache()?;
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let t = Instant::now();
        self.llama.forward(&ids, 0, &mut cache)?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Seconds to decode `new_tokens` greedy tokens for `batch` copies of `prompt` (prefill
    /// excluded).
    pub fn decode_secs(&self, prompt: &[u32], batch: usize, new_tokens: usize) -> Result<f64> {
        let mut cache = self.cache()?;
        let ids = Tensor::new(prompt, &self.device)?
            .unsqueeze(0)?
            .repeat((batch, 1))?;
        let mut logits = self.llama.forward(&ids, 0, &mut cache)?;
        let t = Instant::now();
        for step in 0..new_tokens {
            let next = logits.argmax(D::Minus1)?.reshape((batch, 1))?;
            logits = self.llama.forward(&next, prompt.len() + step, &mut cache)?;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}
