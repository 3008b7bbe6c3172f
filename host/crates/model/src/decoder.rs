//! The Llama / Qwen2 / Qwen3 decoder on candle-core ops, with two paths over the same weights:
//! `Mode::Infer` uses candle's fused kernels (rms_norm, softmax_last_dim, rope), which have no
//! backward; `Mode::Train` uses differentiable equivalents and a frozen-weight matmul, so only
//! LoRA variables get gradients and none is silently dropped (notes/candle.md, "Training traps").

use crate::arena::adjacent_rows;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kernels::ops::frozen_matmul;
pub(crate) use crate::layer::Ctx;
pub use crate::layer::{Layer, Linear};
use crate::lora::{LoraAdapter, Proj};
pub use crate::mode_ops::Mode;
use crate::mode_ops::{flatten_rows, infer_small, rms_norm};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Upper bound on the RoPE table; longer contexts are rejected rather than silently wrong.
const MAX_ROPE_POSITIONS: usize = 32_768;

#[derive(Debug)]
pub struct Decoder {
    pub cfg: ModelConfig,
    /// The dtype the matrices (projections, embeddings, head) are held in.
    dtype: DType,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// Same storage as `embed` when embeddings are tied.
    pub lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    prefill_computed: AtomicUsize,
}

/// The dtype activations run in for weights held in `weights`: f32 on the CPU, whatever the
/// weights (bf16/f16 matrices are widened in registers by `crate::kernels::half_matmul`, and f32 keeps
/// norms, softmax and residual sums exact); the weights' own dtype on a GPU, where the matmuls
/// run in it with f32 accumulation and candle's norm and softmax kernels keep f32 statistics.
pub fn activation_dtype(device: &Device, weights: DType) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        weights
    }
}

impl Decoder {
    /// Builds the decoder from tensors named as in HF checkpoints (`model.layers.0.self_attn.q_proj.weight`),
    /// checking every shape; `file` names the source in errors. The matrices are held in
    /// `dtype`, the norms and biases in the activations' dtype ([`activation_dtype`]); each
    /// tensor is converted as it is taken, so no second copy of the whole model exists.
    pub fn from_tensors(
        cfg: ModelConfig,
        mut t: HashMap<String, Tensor>,
        file: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let act = activation_dtype(device, dtype);
        let mut take = |name: &str, shape: &[usize], to: DType| -> Result<Tensor> {
            let x = t.remove(name).ok_or_else(|| ModelError::MissingTensor {
                tensor: name.to_string(),
                file: file.into(),
            })?;
            if x.dims() != shape {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.to_string(),
                    file: file.into(),
                    expected: shape.to_vec(),
                    found: x.dims().to_vec(),
                });
            }
            Ok(x.to_device(device)?.to_dtype(to)?)
        };
        let c = &cfg;
        let h = c.hidden_size;
        let embed = take("model.embed_tokens.weight", &[c.vocab_size, h], dtype)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let mut lin = |p: Proj| -> Result<Linear> {
                let (out, inp) = p.dims(c);
                let base = format!("model.layers.{i}.{}.{}", p.module(), p.hf_name());
                let w = take(&format!("{base}.weight"), &[out, inp], dtype)?;
                let has_bias = match p {
                    Proj::Q | Proj::K | Proj::V => c.qkv_bias,
                    Proj::O => c.o_bias,
                    _ => false,
                };
                let b = if has_bias {
                    Some(take(&format!("{base}.bias"), &[out], act)?)
                } else {
                    None
                };
                Ok(Linear { w, b })
            };
            let proj = [
                lin(Proj::Q)?,
                lin(Proj::K)?,
                lin(Proj::V)?,
                lin(Proj::O)?,
                lin(Proj::Gate)?,
                lin(Proj::Up)?,
                lin(Proj::Down)?,
            ];
            let input_norm = take(
                &format!("model.layers.{i}.input_layernorm.weight"),
                &[h],
                act,
            )?;
            let post_norm = take(
                &format!("model.layers.{i}.post_attention_layernorm.weight"),
                &[h],
                act,
            )?;
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(take(
                        &format!("model.layers.{i}.self_attn.q_norm.weight"),
                        &[c.head_dim],
                        act,
                    )?),
                    Some(take(
                        &format!("model.layers.{i}.self_attn.k_norm.weight"),
                        &[c.head_dim],
                        act,
                    )?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm,
                post_norm,
                q_norm,
                k_norm,
                proj,
                qkv: None,
            });
        }
        let norm = take("model.norm.weight", &[h], act)?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            take("lm_head.weight", &[c.vocab_size, h], dtype)?
        };
        Self::assemble(cfg, embed, layers, norm, lm_head, device, dtype)
    }

    /// The decoder over the given tensors, each converted to the dtype it is held in (the
    /// matrices `dtype`, norms and biases the activations'); on the CPU the matrices are then
    /// packed into one huge-page arena.
    pub(crate) fn assemble(
        cfg: ModelConfig,
        mut embed: Tensor,
        mut layers: Vec<Layer>,
        mut norm: Tensor,
        mut lm_head: Tensor,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::Invalid(format!(
                "weights can be held in f32, bf16 or f16, not {dtype:?}"
            )));
        }
        let act = activation_dtype(device, dtype);
        let to = |t: &mut Tensor, d: DType| -> Result<()> {
            if t.dtype() != d {
                *t = t.to_dtype(d)?;
            }
            Ok(())
        };
        to(&mut embed, dtype)?;
        to(&mut norm, act)?;
        if cfg.tie_word_embeddings {
            lm_head = embed.clone();
        } else {
            to(&mut lm_head, dtype)?;
        }
        for l in layers.iter_mut() {
            to(&mut l.input_norm, act)?;
            to(&mut l.post_norm, act)?;
            for n in [&mut l.q_norm, &mut l.k_norm].into_iter().flatten() {
                to(n, act)?;
            }
            for p in l.proj.iter_mut() {
                to(&mut p.w, dtype)?;
                if let Some(b) = &mut p.b {
                    to(b, act)?;
                }
            }
        }
        if device.is_cpu() {
            // In the order a forward pass reads them.
            let tied = cfg.tie_word_embeddings;
            let mut weights: Vec<&mut Tensor> = vec![&mut embed];
            weights.extend(
                layers
                    .iter_mut()
                    .flat_map(|l| l.proj.iter_mut().map(|p| &mut p.w)),
            );
            if tied {
                // Let go of the second handle on the embeddings, so packing can free them.
                lm_head = Tensor::zeros((), dtype, device)?;
            } else {
                weights.push(&mut lm_head);
            }
            let arena = crate::arena::pack(&mut weights)?;
            if tied {
                lm_head = embed.clone();
            }
            if let Some(arena) = arena {
                for l in layers.iter_mut() {
                    l.qkv = adjacent_rows(&arena, [&l.proj[0].w, &l.proj[1].w, &l.proj[2].w])?;
                }
            }
        }
        let n_pos = cfg.max_position_embeddings.clamp(1, MAX_ROPE_POSITIONS);
        let inv = cfg.rope_inv_freq();
        let half = inv.len();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let t = Tensor::arange(0u32, n_pos as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((n_pos, 1))?;
        let freqs = t.matmul(&inv)?;
        Ok(Decoder {
            dtype,
            cos: freqs.cos()?.contiguous()?,
            sin: freqs.sin()?.contiguous()?,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            device: device.clone(),
            prefill_computed: AtomicUsize::new(0),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the weight matrices are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of hidden states, keys/values and logits ([`activation_dtype`]).
    pub fn activation_dtype(&self) -> DType {
        activation_dtype(&self.device, self.dtype)
    }

    /// Tokens pushed through prefill since load (or the last reset): the measure of prefix sharing.
    pub fn prefill_tokens_computed(&self) -> usize {
        self.prefill_computed.load(Ordering::Relaxed)
    }
    pub fn reset_prefill_counter(&self) {
        self.prefill_computed.store(0, Ordering::Relaxed)
    }
    pub(crate) fn count_prefill(&self, n: usize) {
        self.prefill_computed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Rotary tables for `s` consecutive positions starting at `offset`.
    pub(crate) fn rope_range(&self, offset: usize, s: usize) -> Result<(Tensor, Tensor)> {
        if offset + s > self.max_positions() {
            return Err(ModelError::Invalid(format!(
                "sequence of {} tokens exceeds the supported {} positions",
                offset + s,
                self.max_positions()
            )));
        }
        let act = self.activation_dtype();
        Ok((
            self.cos.narrow(0, offset, s)?.to_dtype(act)?,
            self.sin.narrow(0, offset, s)?.to_dtype(act)?,
        ))
    }

    /// Rotary tables for one new token per row at the given positions: (b, 1, d/2).
    pub(crate) fn rope_at(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        if let Some(&p) = positions.iter().max() {
            if p >= self.max_positions() {
                return Err(ModelError::Invalid(format!(
                    "position {p} exceeds the supported {} positions",
                    self.max_positions()
                )));
            }
        }
        let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let idx = Tensor::from_vec(idx, positions.len(), &self.device)?;
        let half = self.cos.dim(1)?;
        let b = positions.len();
        let act = self.activation_dtype();
        Ok((
            self.cos
                .index_select(&idx, 0)?
                .reshape((b, 1, half))?
                .to_dtype(act)?,
            self.sin
                .index_select(&idx, 0)?
                .reshape((b, 1, half))?
                .to_dtype(act)?,
        ))
    }

    /// Runs all layers on embedded input `x` (b, s, h). Returns the final-normed hidden states and,
    /// per layer, the full keys/values (past ++ new), each (b, kv_heads, L, head_dim).
    pub(crate) fn run(&self, x: Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (x, kvs) = self.run_layers(x, ctx, 0..self.layers.len())?;
        let x = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, ctx.mode)?;
        Ok((x, kvs))
    }

    /// Runs the layers `range` on their input `x` (b, s, h): the residual stream after the last
    /// of them (not normed) and the keys/values of each (`ctx.past` is indexed by layer).
    pub(crate) fn run_layers(
        &self,
        x: Tensor,
        ctx: &Ctx,
        range: std::ops::Range<usize>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let mut x = x;
        let mut kvs = Vec::with_capacity(range.len());
        for (i, layer) in self
            .layers
            .iter()
            .enumerate()
            .take(range.end)
            .skip(range.start)
        {
            let (y, kv) = layer.forward(x, i, ctx, &self.cfg)?;
            x = y;
            kvs.push(kv);
        }
        Ok((x, kvs))
    }

    /// Token embeddings for ids (b, s) -> (b, s, h).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self
            .embed
            .index_select(&flat, 0)?
            .to_dtype(self.activation_dtype())?
            .reshape((b, s, self.cfg.hidden_size))?)
    }

    /// Logits for hidden states (..., h). In training mode the head is frozen (input gradient only),
    /// so the trainer can select completion positions first and pay for the vocab matmul only there.
    pub fn logits(&self, hidden: &Tensor, mode: Mode) -> Result<Tensor> {
        let (dims, x2) = flatten_rows(hidden)?;
        let y = match infer_small(&x2, &self.lm_head, mode)? {
            Some(y) => y,
            None => frozen_matmul(&x2, &self.lm_head)?,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.cfg.vocab_size;
        Ok(y.reshape(out)?)
    }

    pub(crate) fn causal_mask(&self, s: usize) -> Result<Option<Tensor>> {
        self.causal_mask_after(s, 0)
    }

    /// The additive causal mask (1, 1, 1, s, offset + s) of `s` new positions after `offset`
    /// cached ones: position i sees every cached one and the new ones up to itself.
    fn causal_mask_after(&self, s: usize, offset: usize) -> Result<Option<Tensor>> {
        if s <= 1 {
            return Ok(None);
        }
        let l = offset + s;
        let m: Vec<f32> = (0..s)
            .flat_map(|i| {
                (0..l).map(move |j| {
                    if j > offset + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Ok(Some(
            Tensor::from_vec(m, (1, 1, 1, s, l), &self.device)?
                .to_dtype(self.activation_dtype())?,
        ))
    }

    /// Forward of `ids` (b, s), right-padded, at positions `offset..offset + s` after `past`,
    /// each layer's keys/values of the `offset` earlier positions with `b` rows (or none when
    /// `offset` is 0): the final hidden states (b, s, h) and every layer's keys and values
    /// (past ++ new). What scores several continuations of one prompt computed once; in
    /// [`Mode::Train`] the graph runs through `past` to the prompt's adapter products, so one
    /// backward gives the gradients of the prompt and every continuation.
    pub fn forward_hidden_after(
        &self,
        ids: &Tensor,
        offset: usize,
        past: Option<&[(Tensor, Tensor)]>,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (_, s) = ids.dims2()?;
        let (cos, sin) = self.rope_range(offset, s)?;
        let ctx = Ctx {
            cos,
            sin,
            mask: self.causal_mask_after(s, offset)?,
            past,
            past_len: None,
            adapter,
            mode,
        };
        let x = self.embed(ids)?;
        let out = crate::process::on_pool(|| self.run(x, &ctx))?;
        self.count_prefill(ids.elem_count());
        Ok(out)
    }

    /// Full causal forward from position 0 without cache; returns the final hidden states (b, s, h).
    /// Batches must be right-padded (pads after the real tokens do not affect them).
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (_, s) = ids.dims2()?;
        let (cos, sin) = self.rope_range(0, s)?;
        let ctx = Ctx {
            cos,
            sin,
            mask: self.causal_mask(s)?,
            past: None,
            past_len: None,
            adapter,
            mode,
        };
        Ok(self.run(self.embed(ids)?, &ctx)?.0)
    }

    /// A second handle on the same weights (every tensor shares its storage): what a
    /// checkpointed layer's backward holds to run the layer again after this borrow has ended.
    pub(crate) fn share(&self) -> Decoder {
        Decoder {
            cfg: self.cfg.clone(),
            dtype: self.dtype,
            embed: self.embed.clone(),
            layers: self.layers.clone(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            device: self.device.clone(),
            prefill_computed: AtomicUsize::new(0),
        }
    }

    /// Full causal forward: logits (b, s, vocab).
    pub fn forward(
        &self,
        ids: &Tensor,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(ids, adapter, mode)?;
        self.logits(&h, mode)
    }

    /// Inference-path forward of `tokens` (one sequence) after `past` (keys/values of `offset`
    /// earlier tokens). Returns the logits of the last position and the updated keys/values.
    pub(crate) fn forward_cached(
        &self,
        tokens: &[u32],
        offset: usize,
        past: Option<&[(Tensor, Tensor)]>,
        adapter: Option<&LoraAdapter>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let s = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (1, s), &self.device)?;
        let (h, kvs) = self.forward_hidden_after(&ids, offset, past, adapter, Mode::Infer)?;
        let last = h.narrow(1, s - 1, 1)?;
        let logits = self
            .logits(&last, Mode::Infer)?
            .flatten_all()?
            .to_dtype(DType::F32)?;
        Ok((logits, kvs))
    }
}
