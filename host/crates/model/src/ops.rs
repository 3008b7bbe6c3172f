//! Ops the training path needs that candle does not provide with the right backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `x @ w^T` for a frozen `w`: the backward returns only the input gradient `g @ w`.
///
/// Plain `matmul` always computes the weight gradient as well, one wasted weight-sized matmul per
/// frozen projection in a LoRA step (about 25 % of a step, see notes/candle.md).
struct FrozenMatmul {
    /// (out, in), detached from any graph.
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        let data = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("frozen-matmul: only f32 on cpu"),
        };
        let x = match layout.contiguous_offsets() {
            Some((a, b)) => Tensor::from_slice(&data[a..b], (n, k), &candle_core::Device::Cpu)?,
            None => candle_core::bail!("frozen-matmul: input must be contiguous"),
        };
        let y = x.matmul(&self.w.t()?)?;
        let out = y.dim(1)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(v), Shape::from((n, out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// `x @ w^T` (x 2-D) without a weight gradient. Off CPU (no custom kernel), falls back to a
/// plain matmul against the detached weight: correct, just not the saving.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(FrozenMatmul { w: w.detach() })
    } else {
        x.matmul(&w.detach().t()?)
    }
}

/// Largest row count routed to [`small_matmul`]; above it gemm's blocked kernels win.
pub const SMALL_MATMUL_MAX_ROWS: usize = 16;

/// Dots of `R` input rows (starting at row `b0`) with one weight row: the weight chunk is loaded
/// once for `R` fused multiply-adds.
#[inline(always)]
fn dot_group<const FMA: bool, const R: usize>(
    x: &[f32],
    b0: usize,
    k: usize,
    w_row: &[f32],
    out: &mut [f32],
) {
    let mut acc = [[0f32; 16]; R];
    let chunks = k / 16;
    for c in 0..chunks {
        let ws = &w_row[c * 16..c * 16 + 16];
        for (r, a) in acc.iter_mut().enumerate() {
            let xs = &x[(b0 + r) * k + c * 16..(b0 + r) * k + c * 16 + 16];
            for l in 0..16 {
                a[l] = if FMA {
                    xs[l].mul_add(ws[l], a[l])
                } else {
                    a[l] + xs[l] * ws[l]
                };
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let xr = &x[(b0 + r) * k..(b0 + r + 1) * k];
        let mut s: f32 = a.iter().sum();
        for i in chunks * 16..k {
            s += xr[i] * w_row[i];
        }
        out[b0 + r] = s;
    }
}

#[inline(always)]
fn dot_rows<const FMA: bool>(x: &[f32], n: usize, k: usize, w_row: &[f32], out: &mut [f32]) {
    let mut b = 0;
    while b + 4 <= n {
        dot_group::<FMA, 4>(x, b, k, w_row, out);
        b += 4;
    }
    while b < n {
        dot_group::<FMA, 1>(x, b, k, w_row, out);
        b += 1;
    }
}

#[inline(always)]
fn chunk_kernel<const FMA: bool>(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    first_row: usize,
    yt: &mut [f32],
) {
    for (r, out) in yt.chunks_mut(n).enumerate() {
        let j = first_row + r;
        dot_rows::<FMA>(x, n, k, &w[j * k..(j + 1) * k], out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_kernel_avx2(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    first_row: usize,
    yt: &mut [f32],
) {
    chunk_kernel::<true>(x, n, k, w, first_row, yt)
}

fn run_chunk(x: &[f32], n: usize, k: usize, w: &[f32], first_row: usize, yt: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            unsafe { chunk_kernel_avx2(x, n, k, w, first_row, yt) };
            return;
        }
    }
    chunk_kernel::<false>(x, n, k, w, first_row, yt)
}

/// `x @ w^T` for few rows (decode steps): reads each weight row once and splits the output rows
/// over the rayon pool. gemm runs these shapes single-threaded and packs the transposed weight,
/// which makes batch-1 decode GEMV-bound at a fraction of memory bandwidth (notes/candle.md).
/// Returns None when the fast path does not apply (not CPU f32 contiguous, too many rows).
pub fn small_matmul(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let (n, k) = x.dims2()?;
    let (out, k2) = w.dims2()?;
    if n > SMALL_MATMUL_MAX_ROWS
        || k != k2
        || !x.device().is_cpu()
        || x.dtype() != candle_core::DType::F32
        || w.dtype() != candle_core::DType::F32
    {
        return Ok(None);
    }
    if n > 4 && std::env::var_os("MALT_EXP_GEMM").is_some() {
        return Ok(Some(w.matmul(&x.t()?)?.t()?.contiguous()?));
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (
        candle_core::Storage::Cpu(CpuStorage::F32(xv)),
        candle_core::Storage::Cpu(CpuStorage::F32(wv)),
    ) = (&*xs, &*ws)
    else {
        return Ok(None);
    };
    let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
    else {
        return Ok(None);
    };
    let xd = &xv[xa..xb];
    let wd = &wv[wa..wb];
    let mut yt = vec![0f32; out * n];
    const ROWS: usize = 64;
    yt.par_chunks_mut(ROWS * n)
        .enumerate()
        .for_each(|(ci, chunk)| run_chunk(xd, n, k, wd, ci * ROWS, chunk));
    drop(xs);
    drop(ws);
    let y = Tensor::from_vec(yt, (out, n), x.device())?;
    Ok(Some(if n == 1 {
        y.reshape((1, out))?
    } else {
        y.t()?.contiguous()?
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn small_matmul_matches_gemm() {
        for (n, k, out) in [(1, 37, 70), (9, 384, 130), (16, 64, 64)] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out, k), &Device::Cpu).unwrap();
            let a = small_matmul(&x, &w).unwrap().unwrap();
            let b = x.matmul(&w.t().unwrap()).unwrap();
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "{n}x{k}x{out}: {d}");
        }
        let big = Tensor::zeros((17, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(small_matmul(&big, &w).unwrap().is_none());
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
