//! The training forward's causal attention, one op whose backward recomputes the probabilities.

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, slice, tensor, with_data};
use crate::kernels::matmul::sgemm_serial;
use crate::kernels::simd::exp_shifted;

/// Causal attention of training forwards, `softmax(scale * q k^T + causal mask) v`, per row and
/// key/value head: q (b, kv_heads, n_rep * s, hd), its rows being query positions `row % s` of a
/// block of `s` queries following `l - s` earlier keys; k, v (b, kv_heads, l, hd). The
/// probabilities are not kept: the forward stores each query row's log-sum-exp and the backward
/// recomputes them block by block (as FlashAttention does). Kept, the scores and probabilities
/// were two (b, heads, s, l) tensors per layer until the backward: 1.1 GB of a SmolLM2-135M step
/// at 8 x 256 tokens, a fifth of its peak.
struct CausalAttention {
    scale: f32,
    s: usize,
    lse: OnceLock<Vec<f32>>,
}

/// The sizes of one (row, kv head) block.
#[derive(Clone, Copy)]
struct AttnDims {
    rows: usize,
    l: usize,
    hd: usize,
    s: usize,
}

impl AttnDims {
    /// Keys query row `r` sees: its position, the earlier ones and the `l - s` cached ones.
    fn valid(&self, r: usize) -> usize {
        self.l - self.s + r % self.s + 1
    }
}

impl CausalAttention {
    /// `p (rows, l) = scale * q k^T`, to be turned into probabilities by the caller.
    fn scores(&self, d: AttnDims, q: &[f32], k: &[f32], p: &mut [f32]) {
        sgemm_serial(d.rows, d.l, d.hd, p, false, q, false, k, true, self.scale);
    }

    /// Recomputes a block's probabilities from its scores and stored log-sum-exps.
    fn probs(&self, d: AttnDims, q: &[f32], k: &[f32], lse: &[f32], p: &mut [f32]) {
        self.scores(d, q, k, p);
        for (r, row) in p.chunks_mut(d.l).enumerate() {
            let (seen, masked) = row.split_at_mut(d.valid(r));
            exp_shifted(seen, lse[r]);
            masked.iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            slice(qs, ql, self.name())?,
            slice(ks, kl, self.name())?,
            slice(vs, vl, self.name())?,
        );
        let (b, nkv, rows, hd) = ql.shape().dims4()?;
        let l = kl.shape().dims4()?.2;
        let s = self.s;
        if kl.shape().dims() != [b, nkv, l, hd] || vl.shape() != kl.shape() {
            bail!(
                "causal-attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if s == 0 || s > l || rows % s != 0 {
            bail!("causal-attention: {rows} query rows in blocks of {s} over {l} keys");
        }
        let d = AttnDims { rows, l, hd, s };
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; b * nkv * rows];
        out.par_chunks_mut(rows * hd)
            .zip(lse.par_chunks_mut(rows))
            .enumerate()
            .for_each_init(
                || vec![0f32; rows * l],
                |p, (blk, (o, lse))| {
                    let (q, kv) = (&q[blk * rows * hd..][..rows * hd], blk * l * hd);
                    let (k, v) = (&k[kv..][..l * hd], &v[kv..][..l * hd]);
                    self.scores(d, q, k, p);
                    for (r, row) in p.chunks_mut(l).enumerate() {
                        let (seen, masked) = row.split_at_mut(d.valid(r));
                        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        exp_shifted(seen, max);
                        let sum: f32 = seen.iter().sum();
                        let inv = 1.0 / sum;
                        seen.iter_mut().for_each(|x| *x *= inv);
                        masked.iter_mut().for_each(|x| *x = 0.0);
                        lse[r] = max + sum.ln();
                    }
                    sgemm_serial(rows, hd, l, o, false, p, false, v, false, 1.0);
                },
            );
        // A second forward of the same op (never made) would store the same values.
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    /// With `p` recomputed and `g` the output's gradient: `dv = p^T g`, `dp = g v^T`,
    /// `ds = p * (dp - rowsum(p * dp))`, `dq = scale * ds k`, `dk = scale * ds^T q`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else {
            bail!("causal-attention: backward before forward")
        };
        let (b, nkv, rows, hd) = q.dims4()?;
        let l = k.dim(2)?;
        let d = AttnDims {
            rows,
            l,
            hd,
            s: self.s,
        };
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.elem_count()],
            vec![0f32; k.elem_count()],
            vec![0f32; v.elem_count()],
        );
        with_data(q, self.name(), |q| {
            with_data(k, self.name(), |k| {
                with_data(v, self.name(), |v| {
                    with_data(g, self.name(), |g| {
                        dq.par_chunks_mut(rows * hd)
                            .zip(dk.par_chunks_mut(l * hd).zip(dv.par_chunks_mut(l * hd)))
                            .enumerate()
                            .for_each_init(
                                || (vec![0f32; rows * l], vec![0f32; rows * l]),
                                |(p, dp), (blk, (dq, (dk, dv)))| {
                                    let qo = blk * rows * hd;
                                    let (q, g) = (&q[qo..][..rows * hd], &g[qo..][..rows * hd]);
                                    let kv = blk * l * hd;
                                    let (k, v) = (&k[kv..][..l * hd], &v[kv..][..l * hd]);
                                    self.probs(d, q, k, &lse[blk * rows..][..rows], p);
                                    sgemm_serial(l, hd, rows, dv, false, p, true, g, false, 1.0);
                                    sgemm_serial(rows, l, hd, dp, false, g, false, v, true, 1.0);
                                    for (p, dp) in p.chunks(l).zip(dp.chunks_mut(l)) {
                                        let dot: f32 =
                                            p.iter().zip(dp.iter()).map(|(p, d)| p * d).sum();
                                        for (d, p) in dp.iter_mut().zip(p) {
                                            *d = p * (*d - dot);
                                        }
                                    }
                                    let sc = self.scale;
                                    sgemm_serial(rows, hd, l, dq, false, dp, false, k, false, sc);
                                    sgemm_serial(l, hd, rows, dk, false, dp, true, q, false, sc);
                                },
                            );
                        Ok(())
                    })
                })
            })
        })?;
        debug_assert_eq!(dq.len(), b * nkv * rows * hd);
        Ok((
            Some(tensor(dq, q.shape().clone())?),
            Some(tensor(dk, k.shape().clone())?),
            Some(tensor(dv, v.shape().clone())?),
        ))
    }
}

/// Causal attention `softmax(scale * q k^T + mask) v` of a training forward: q (b, kv_heads,
/// n_rep * s, hd) whose rows are query positions `row % s`, k and v (b, kv_heads, l, hd);
/// returns (b, kv_heads, n_rep * s, hd). CPU f32 only (elsewhere: an additive mask and candle's
/// softmax between two matmuls).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    s: usize,
) -> Result<Tensor> {
    for t in [q, k, v] {
        cpu_f32(t, "causal-attention")?;
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CausalAttention {
            scale: scale as f32,
            s,
            lse: OnceLock::new(),
        },
    )
}
