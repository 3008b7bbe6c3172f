//! The modules of one decoder layer, in candle's style (each a struct with its own `forward`):
//! [`Linear`], a frozen projection with its LoRA update, and [`Layer`], pre-norm grouped-query
//! attention then a pre-norm SwiGLU MLP. [`crate::decoder::Decoder`] stacks them between the
//! embeddings and the head; the kernels they call are [`crate::kernels`]', chosen per
//! [`Mode`] by [`crate::mode_ops`].

use crate::config::ModelConfig;
use crate::dropout::{dropout_mask, seeded_dropout};
use crate::error::{ModelError, Result};
use crate::kernels::fused;
use crate::kernels::ops::frozen_matmul;
use crate::kernels::small_matmul::small_matmuls;
use crate::lora::{LoraAdapter, Proj};
use crate::mode_ops::{
    flatten_rows, fused_train, infer_small, rms_norm, rope, softmax, swiglu, Mode,
};
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in), HF layout.
    pub w: Tensor,
    pub b: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Indexed by `Proj as usize`.
    pub proj: [Linear; 7],
    /// q, k and v weights as one (q + k + v outputs, hidden) matrix when they lie back to back in
    /// the weight arena: prefill then runs one gemm for the three (a third faster than three).
    pub qkv: Option<Tensor>,
}

/// Per-call attention context: rotary tables for the rows' positions, an additive mask and the
/// past keys/values per layer.
pub(crate) struct Ctx<'a> {
    /// (s, d/2) when all rows share positions, else (b, s, d/2).
    pub cos: Tensor,
    pub sin: Tensor,
    /// Additive mask broadcastable to (b, kv_heads, n_rep, s, L); None = no masking needed.
    pub mask: Option<Tensor>,
    pub past: Option<&'a [(Tensor, Tensor)]>,
    /// Some(n): `past` holds preallocated buffers (b, kv_heads, capacity, head_dim) whose first
    /// n positions are valid; this step's keys/values are written in place at n and the
    /// returned keys/values are the same buffers. Decoding then copies one position per layer
    /// and step instead of the whole cache (a `cat` of past and new).
    pub past_len: Option<usize>,
    pub adapter: Option<&'a LoraAdapter>,
    pub mode: Mode,
}

impl Linear {
    /// `x @ w^T + b` plus the LoRA update of projection `p` of layer `layer` when `adapter`
    /// has one (its dropout, in training, drawn from the stream of that layer and projection).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        p: Proj,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (dims, x2) = flatten_rows(x)?;
        let pair = adapter.and_then(|a| a.get(layer, p).map(|pair| (a, pair)));
        if fused_train(&x2, mode) {
            let y = match pair {
                Some((a, pair)) => {
                    let mask = match mode {
                        Mode::Train {
                            dropout_seed: Some(seed),
                        } if a.config.dropout > 0.0 => {
                            Some(dropout_mask(&x2, a.config.dropout, seed, layer, p)?)
                        }
                        _ => None,
                    };
                    fused::lora_linear(
                        &x2,
                        &self.w,
                        self.b.as_ref(),
                        pair.a.as_tensor(),
                        pair.b.as_tensor(),
                        a.scale(),
                        mask,
                    )?
                }
                None => {
                    let y = fused::frozen_linear(&x2, &self.w)?;
                    match &self.b {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    }
                }
            };
            let mut out_dims = dims;
            let last = out_dims.len() - 1;
            out_dims[last] = y.dim(1)?;
            return Ok(y.reshape(out_dims)?);
        }
        let y = match infer_small(&x2, &self.w, mode)? {
            Some(y) => y,
            None => frozen_matmul(&x2, &self.w)?,
        };
        self.finish(&x2, y, dims, layer, p, adapter, mode)
    }

    /// Bias, the adapter's low-rank update and the output shape, after the base product `y` of
    /// the flattened input `x2` (input dims `dims`).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        x2: &Tensor,
        mut y: Tensor,
        dims: Vec<usize>,
        layer: usize,
        p: Proj,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        if let Some(pair) = adapter.and_then(|a| a.get(layer, p)) {
            let scale = adapter.map(|a| a.scale()).unwrap_or(1.0);
            // The adapter's tensors are `Var`s: used as they are, every op after them would be
            // recorded for backprop and an inference cache would keep the whole graph of its
            // prompt alive (an evaluation of a trained chain peaked near 20 GB that way).
            let (a_t, b_t) = match mode {
                Mode::Infer => (pair.a.as_tensor().detach(), pair.b.as_tensor().detach()),
                Mode::Train { .. } => (pair.a.as_tensor().clone(), pair.b.as_tensor().clone()),
            };
            // LoRA parameters are f32 whatever the base; activations of another dtype (a GPU
            // running bf16) meet them in f32 (the dropout mask's dtype too) and the update is
            // rounded once, at the end.
            let act = y.dtype();
            let x_lora = if act == a_t.dtype() {
                x2.clone()
            } else {
                x2.to_dtype(a_t.dtype())?
            };
            let xd = match (mode, adapter) {
                (
                    Mode::Train {
                        dropout_seed: Some(seed),
                    },
                    Some(a),
                ) if a.config.dropout > 0.0 => {
                    seeded_dropout(&x_lora, a.config.dropout, seed, layer, p)?
                }
                _ => x_lora,
            };
            let delta = (xd.matmul(&a_t.t()?)?.matmul(&b_t.t()?)? * scale)?;
            y = (y + delta.to_dtype(act)?)?;
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
}

impl Layer {
    pub fn proj(&self, p: Proj) -> &Linear {
        &self.proj[p as usize]
    }

    /// The layer on its input `x` (b, s, h), pre-norm attention then pre-norm MLP, each added to
    /// the residual stream: the stream after it and the layer's keys/values (past ++ new).
    pub(crate) fn forward(
        &self,
        x: Tensor,
        i: usize,
        ctx: &Ctx,
        c: &ModelConfig,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let mode = ctx.mode;
        let h = rms_norm(&x, &self.input_norm, c.rms_norm_eps, mode)?;
        let (o, kv) = self.attention(&h, i, ctx, c)?;
        let x = (x + o)?;
        let h = rms_norm(&x, &self.post_norm, c.rms_norm_eps, mode)?;
        let m = self.mlp(&h, i, ctx.adapter, mode)?;
        Ok(((x + m)?, kv))
    }

    /// Grouped-query attention of the normed input `h` (b, s, h) with rotary positions, over the
    /// context's past keys/values: the output projection's result and the keys/values.
    fn attention(
        &self,
        h: &Tensor,
        i: usize,
        ctx: &Ctx,
        c: &ModelConfig,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (b, s, _) = h.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let n_rep = c.n_rep();
        let mode = ctx.mode;
        let ad = ctx.adapter;
        let [q, k, v] = self.projections(h, i, [Proj::Q, Proj::K, Proj::V], ad, mode)?;
        let mut q = q.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let mut k = k.reshape((b, s, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, s, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q, qn, c.rms_norm_eps, mode)?;
            k = rms_norm(&k, kn, c.rms_norm_eps, mode)?;
        }
        let q = rope(&q, &ctx.cos, &ctx.sin, mode)?;
        let k = rope(&k, &ctx.cos, &ctx.sin, mode)?;
        let (k, v, valid) = match (ctx.past, ctx.past_len) {
            (Some(past), Some(n)) => {
                let (pk, pv) = &past[i];
                pk.slice_set(&k, 2, n)?;
                pv.slice_set(&v, 2, n)?;
                (pk.clone(), pv.clone(), Some(n + s))
            }
            (Some(past), None) => {
                let (pk, pv) = &past[i];
                (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?, None)
            }
            (None, _) => (k, v, None),
        };
        // The inference path uses fused attention kernels where they apply: decode steps
        // (one query per row, any mask) and prompts (causal: every caller with s > 1 asks
        // for the causal mask, offset by the cached positions).
        let scale = 1.0 / (hd as f32).sqrt();
        let fused = match (mode, s) {
            (Mode::Infer, 1) => {
                let q4 = q.reshape((b, nkv, n_rep, hd))?;
                crate::kernels::ops::decode_attention(&q4, &k, &v, valid, ctx.mask.as_ref(), scale)?
                    .map(|o| o.reshape((b, 1, nh * hd)))
                    .transpose()?
            }
            (Mode::Infer, _) if valid.is_none() => {
                let q5 = q.reshape((b, nkv, n_rep, s, hd))?;
                crate::kernels::attention::prefill_attention(&q5, &k, &v, scale)?
            }
            _ => None,
        };
        // The general path attends over the valid part of a buffer.
        let (k_att, v_att) = match valid {
            Some(n) if fused.is_none() => (k.narrow(2, 0, n)?, v.narrow(2, 0, n)?),
            _ => (k.clone(), v.clone()),
        };
        let o = match fused {
            Some(o) => o,
            None => {
                let (k, v) = (&k_att, &v_att);
                let l = k.dim(2)?;
                // GQA without materialising repeat_kv: query heads of one kv head are contiguous.
                let q5 = q.reshape((b, nkv, n_rep * s, hd))?;
                let scale = 1.0 / (hd as f64).sqrt();
                let o = if fused_train(&q5, mode) && ctx.past.is_none() {
                    // Training forwards start at position 0: the mask is the causal one,
                    // which the fused op applies by construction.
                    fused::causal_attention(&q5, k, v, scale, s)?
                } else {
                    let att = (q5.matmul(&k.t()?)? * scale)?;
                    let mut att = att.reshape((b, nkv, n_rep, s, l))?;
                    if let Some(m) = &ctx.mask {
                        att = att.broadcast_add(m)?;
                    }
                    // After cached keys/values (a shared prompt in training) no fused
                    // training kernel applies: the composed op is the path, not a fallback.
                    softmax(&att, mode, ctx.past.is_none())?
                        .reshape((b, nkv, n_rep * s, l))?
                        .matmul(v)?
                };
                o // (b, nkv, n_rep*s, hd)
                    .reshape((b, nh, s, hd))?
                    .transpose(1, 2)?
                    .reshape((b, s, nh * hd))?
            }
        };
        let o = self.proj(Proj::O).forward(&o, i, Proj::O, ad, mode)?;
        Ok((o, (k, v)))
    }

    /// The SwiGLU MLP of the normed input `h`: `down(silu(gate(h)) * up(h))`.
    fn mlp(&self, h: &Tensor, i: usize, ad: Option<&LoraAdapter>, mode: Mode) -> Result<Tensor> {
        let [g, u] = self.projections(h, i, [Proj::Gate, Proj::Up], ad, mode)?;
        let m = swiglu(&g, &u, mode)?;
        self.proj(Proj::Down).forward(&m, i, Proj::Down, ad, mode)
    }

    /// Projections `ps` of the same input. The inference path computes their base products in
    /// one parallel dispatch ([`small_matmuls`]) when it applies (or the fused q/k/v matrix);
    /// otherwise one [`Linear::forward`] each.
    fn projections<const N: usize>(
        &self,
        x: &Tensor,
        layer: usize,
        ps: [Proj; N],
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<[Tensor; N]> {
        if mode == Mode::Infer {
            let (dims, x2) = flatten_rows(x)?;
            let ws: Vec<&Tensor> = ps.iter().map(|&p| &self.proj(p).w).collect();
            let ys = match (small_matmuls(&x2, &ws)?, &self.qkv) {
                (Some(ys), _) => Some(ys),
                (None, Some(qkv)) if ps[..] == [Proj::Q, Proj::K, Proj::V] => {
                    let y = frozen_matmul(&x2, qkv)?;
                    let mut start = 0;
                    let mut ys = Vec::with_capacity(N);
                    for w in &ws {
                        let n = w.dim(0)?;
                        ys.push(y.narrow(1, start, n)?);
                        start += n;
                    }
                    Some(ys)
                }
                _ => None,
            };
            if let Some(ys) = ys {
                let mut out = Vec::with_capacity(N);
                for (y, &p) in ys.into_iter().zip(&ps) {
                    out.push(
                        self.proj(p)
                            .finish(&x2, y, dims.clone(), layer, p, adapter, mode)?,
                    );
                }
                return out
                    .try_into()
                    .map_err(|_| ModelError::Invalid("projection count".into()));
            }
        }
        let mut out = Vec::with_capacity(N);
        for &p in &ps {
            out.push(self.proj(p).forward(x, layer, p, adapter, mode)?);
        }
        out.try_into()
            .map_err(|_| ModelError::Invalid("projection count".into()))
    }
}
