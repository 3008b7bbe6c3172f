//! Ops candle does not provide the way the decoder needs them: a frozen-weight matmul whose
//! backward skips the weight gradient, and single-token attention over a batch's cache.

use candle_core::{CpuStorage, Result, Tensor};

/// `x @ w^T` (x 2-D) for a frozen `w`: the backward returns only the input gradient `g @ w`. The
/// inference path uses it too, for inputs of more rows than the small-batch matmul takes: on CPU
/// its product reads `w` in place (`crate::kernels::matmul::matmul_wt`) where candle's matmul packs it.
///
/// Plain `matmul` always computes the weight gradient as well, one wasted weight-sized matmul
/// (and a weight-sized buffer) per frozen projection in a LoRA step (about 25 % of a step, see
/// notes/candle.md). `crate::kernels::fused::frozen_linear` avoids it on CPU f32 and on CUDA; elsewhere
/// this falls back to a plain matmul against the detached weight: correct, just not the saving,
/// and logged once when a gradient will flow through it.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if crate::kernels::fused::frozen_linear_runs_on(x, w) {
        crate::kernels::fused::frozen_linear(x, w)
    } else {
        if x.track_op() {
            crate::kernels::composed::warn_once("frozen-linear (training)", x.device());
        }
        x.matmul(&w.detach().t()?)
    }
}

/// Dot product with 16 independent partial sums, so LLVM vectorises it (a single running sum
/// is a chain of dependent adds the compiler may not reorder).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Attention for one new token per row (decode), q (b, kv_heads, n_rep, hd), k/v (b, kv_heads, L, hd),
/// optional additive mask (b, L). Plain loops over (row, kv head) on the rayon pool: with gemm each
/// (row, head) pair is a separate tiny matmul call whose overhead grows with the batch.
/// Returns None when the fast path does not apply.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    valid: Option<usize>,
    mask: Option<&Tensor>,
    scale: f32,
) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let (b, nkv, n_rep, hd) = q.dims4()?;
    // Keys/values may be preallocated buffers: `cap` positions stored, the first `l` valid.
    let cap = k.dim(2)?;
    let l = valid.unwrap_or(cap);
    if !q.device().is_cpu()
        || q.dtype() != candle_core::DType::F32
        || k.dtype() != candle_core::DType::F32
        || v.dtype() != candle_core::DType::F32
        || k.dims() != [b, nkv, cap, hd]
        || v.dims() != [b, nkv, cap, hd]
        || l > cap
    {
        return Ok(None);
    }
    let maskv: Option<Vec<f32>> = match mask {
        Some(m) => {
            if m.elem_count() != b * l {
                return Ok(None);
            }
            Some(m.flatten_all()?.to_vec1::<f32>()?)
        }
        None => None,
    };
    let q = q.contiguous()?;
    let k = k.contiguous()?;
    let v = v.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (
        candle_core::Storage::Cpu(CpuStorage::F32(qv)),
        candle_core::Storage::Cpu(CpuStorage::F32(kv)),
        candle_core::Storage::Cpu(CpuStorage::F32(vv)),
    ) = (&*qs, &*ks, &*vs)
    else {
        return Ok(None);
    };
    let (Some((qa, qb)), Some((ka, kb)), Some((va, vb))) = (
        ql.contiguous_offsets(),
        kl.contiguous_offsets(),
        vl.contiguous_offsets(),
    ) else {
        return Ok(None);
    };
    let (qd, kd, vd) = (&qv[qa..qb], &kv[ka..kb], &vv[va..vb]);
    if let Some(out) = crate::kernels::attention::decode_attention(
        qd,
        kd,
        vd,
        maskv.as_deref(),
        (b, nkv, n_rep, hd),
        cap,
        l,
        scale,
    ) {
        drop((qs, ks, vs));
        return Ok(Some(Tensor::from_vec(
            out,
            (b, nkv, n_rep, hd),
            q.device(),
        )?));
    }
    let mut out = vec![0f32; b * nkv * n_rep * hd];
    out.par_chunks_mut(n_rep * hd)
        .enumerate()
        .for_each(|(bh, o)| {
            let row = bh / nkv;
            let kbase = bh * cap * hd;
            let mut scores = vec![0f32; l];
            for r in 0..n_rep {
                let qr = &qd[(bh * n_rep + r) * hd..(bh * n_rep + r + 1) * hd];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let kr = &kd[kbase + j * hd..kbase + (j + 1) * hd];
                    let mut s = dot(qr, kr) * scale;
                    if let Some(m) = &maskv {
                        s += m[row * l + j];
                    }
                    *sc = s;
                    max = max.max(s);
                }
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let or = &mut o[r * hd..(r + 1) * hd];
                or.iter_mut().for_each(|x| *x = 0.0);
                let inv = 1.0 / sum;
                for (j, &p) in scores.iter().enumerate() {
                    let p = p * inv;
                    let vr = &vd[kbase + j * hd..kbase + (j + 1) * hd];
                    for (o, v) in or.iter_mut().zip(vr) {
                        *o += p * v;
                    }
                }
            }
        });
    drop((qs, ks, vs));
    Ok(Some(Tensor::from_vec(
        out,
        (b, nkv, n_rep, hd),
        q.device(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dot_matches_a_plain_sum() {
        for len in [0, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - want).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn frozen_matmul_gives_only_the_input_gradient() {
        let x = candle_core::Var::randn(0f32, 1.0, (3, 5), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 5), &Device::Cpu).unwrap();
        let y = frozen_matmul(x.as_tensor(), &w).unwrap();
        let want = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let d = (&y - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5);
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        let want = Tensor::ones((3, 4), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .matmul(&w)
            .unwrap();
        let d = (gx - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5);
    }
}
