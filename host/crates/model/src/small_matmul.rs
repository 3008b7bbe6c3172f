//! `x @ w^T` for the few rows of a decode step: the weight streams through once, split over the
//! rayon pool, with an AVX-512, AVX2+FMA or portable kernel chosen at run time.

use candle_core::{CpuStorage, Result, Tensor};

/// Largest row count routed to [`small_matmul`]; above it gemm's blocked kernels win.
pub const SMALL_MATMUL_MAX_ROWS: usize = 28;

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

/// The kernels of [`small_matmul`], best first; [`Kernel::best`] picks the best this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            [Kernel::Avx512, Kernel::Avx2]
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(Kernel::Portable)
        })
    }

    fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn run(self, x: &[f32], n: usize, k: usize, w: &[f32], first_row: usize, yt: &mut [f32]) {
        debug_assert!(self.available());
        match self {
            // SAFETY (both arms): `available()` checked that the CPU has the features the
            // functions were compiled for.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::skinny(x, n, k, w, first_row, yt) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                if n >= 3 {
                    block_kernel_avx2(x, n, k, w, first_row, yt)
                } else {
                    chunk_kernel_avx2(x, n, k, w, first_row, yt)
                }
            },
            _ => chunk_kernel::<false>(x, n, k, w, first_row, yt),
        }
    }
}

/// `x @ w^T` for few rows (decode steps): reads each weight row once and splits the output rows
/// over the rayon pool. gemm runs these shapes single-threaded and packs the transposed weight,
/// which makes batch-1 decode GEMV-bound at a fraction of memory bandwidth (notes/candle.md).
/// Returns None when the fast path does not apply (not CPU f32 contiguous, too many rows).
pub fn small_matmul(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    small_matmul_with(Kernel::best(), x, w)
}

fn small_matmul_with(kernel: Kernel, x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    Ok(small_matmuls_with(kernel, x, &[w])?.and_then(|mut ys| ys.pop()))
}

/// [`small_matmul`] of one input with several weights (a layer's q/k/v, or gate/up) in one
/// parallel dispatch: a decode step makes hundreds of these calls, and waking the pool for each
/// was a tenth of a batch-1 step.
pub fn small_matmuls(x: &Tensor, ws: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    small_matmuls_with(Kernel::best(), x, ws)
}

fn small_matmuls_with(kernel: Kernel, x: &Tensor, ws: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    use rayon::prelude::*;
    let (n, k) = x.dims2()?;
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if n > SMALL_MATMUL_MAX_ROWS || !f32_cpu(x) || !ws.iter().all(|w| f32_cpu(w)) {
        return Ok(None);
    }
    let mut outs = Vec::with_capacity(ws.len());
    for w in ws {
        let (out, k2) = w.dims2()?;
        if k2 != k {
            return Ok(None);
        }
        outs.push(out);
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let wsl: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let candle_core::Storage::Cpu(CpuStorage::F32(xv)) = &*xs else {
        return Ok(None);
    };
    let Some((xa, xb)) = xl.contiguous_offsets() else {
        return Ok(None);
    };
    let xd = &xv[xa..xb];
    let mut wds = Vec::with_capacity(ws.len());
    for (st, l) in &wsl {
        let (candle_core::Storage::Cpu(CpuStorage::F32(wv)), Some((wa, wb))) =
            (&**st, l.contiguous_offsets())
        else {
            return Ok(None);
        };
        wds.push(&wv[wa..wb]);
    }
    // Each output is written as (n, out) directly: a job computes a block of 32 weight rows into
    // a small local buffer and scatters it into its own columns. Writing (out, n) and
    // transposing after was one more single-threaded pass, and for the LM head one more
    // multi-megabyte allocation per step.
    let mut ys: Vec<Vec<f32>> = outs.iter().map(|&out| vec![0f32; n * out]).collect();
    let dests: Vec<Columns> = ys
        .iter_mut()
        .zip(&outs)
        .map(|(y, &out)| Columns {
            ptr: y.as_mut_ptr(),
            row_len: out,
        })
        .collect();
    // 32 rows: a 576-row projection splits into 18 chunks, even on 2 threads; 64 left one
    // thread a chunk behind (9 chunks).
    const ROWS: usize = 32;
    let jobs: Vec<(usize, usize, usize)> = outs
        .iter()
        .enumerate()
        .flat_map(|(wi, &out)| {
            (0..out)
                .step_by(ROWS)
                .map(move |first| (wi, first, ROWS.min(out - first)))
        })
        .collect();
    jobs.into_par_iter().for_each(|(wi, first, rows)| {
        let mut block = [0f32; ROWS * SMALL_MATMUL_MAX_ROWS];
        let block = &mut block[..rows * n];
        kernel.run(xd, n, k, wds[wi], first, block);
        // SAFETY: the jobs of one weight cover disjoint column ranges `first..first + rows` of
        // its (n, out) output, which outlives this loop.
        unsafe { dests[wi].write(first, rows, n, block) };
    });
    drop(wds);
    drop(wsl);
    drop(xs);
    ys.into_iter()
        .zip(outs)
        .map(|(y, out)| Tensor::from_vec(y, (n, out), x.device()))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The output columns of one weight, shared by the jobs that fill disjoint ranges of them.
struct Columns {
    ptr: *mut f32,
    row_len: usize,
}

// SAFETY: jobs only write disjoint column ranges (see `small_matmuls_with`).
unsafe impl Sync for Columns {}

impl Columns {
    /// Writes `block` (weight-row-major: `rows` x `n`) into columns `first..first + rows`.
    ///
    /// # Safety
    /// No other thread writes these columns, and `first + rows <= row_len`.
    unsafe fn write(&self, first: usize, rows: usize, n: usize, block: &[f32]) {
        for r in 0..n {
            let dst = self.ptr.add(r * self.row_len + first);
            for j in 0..rows {
                *dst.add(j) = block[j * n + r];
            }
        }
    }
}

/// 4 weight rows x 3 input rows per block, 12 accumulators in registers: each weight load feeds
/// 3 FMAs and each input load 4, instead of one FMA per two loads in the plain dot product.
/// Used when there are enough input rows (>= 3) for the decode step to be compute-bound.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_kernel_avx2(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    first_row: usize,
    yt: &mut [f32],
) {
    use std::arch::x86_64::*;
    let rows = yt.len() / n;
    let k8 = k / 8 * 8;
    let full_j = rows / 4 * 4;
    let full_b = n / 3 * 3;
    assert!(x.len() >= n * k && w.len() >= (first_row + rows) * k);
    let xp = x.as_ptr();
    let wp = w.as_ptr();
    let mut j = 0;
    while j < full_j {
        let wr = [
            (first_row + j) * k,
            (first_row + j + 1) * k,
            (first_row + j + 2) * k,
            (first_row + j + 3) * k,
        ];
        let mut b = 0;
        while b < full_b {
            let xr = [b * k, (b + 1) * k, (b + 2) * k];
            let z = _mm256_setzero_ps();
            let (mut a00, mut a01, mut a02) = (z, z, z);
            let (mut a10, mut a11, mut a12) = (z, z, z);
            let (mut a20, mut a21, mut a22) = (z, z, z);
            let (mut a30, mut a31, mut a32) = (z, z, z);
            let mut c = 0;
            while c < k8 {
                // SAFETY: c + 8 <= k and the row offsets are within the asserted lengths.
                let x0 = _mm256_loadu_ps(xp.add(xr[0] + c));
                let x1 = _mm256_loadu_ps(xp.add(xr[1] + c));
                let x2 = _mm256_loadu_ps(xp.add(xr[2] + c));
                let w0 = _mm256_loadu_ps(wp.add(wr[0] + c));
                a00 = _mm256_fmadd_ps(x0, w0, a00);
                a01 = _mm256_fmadd_ps(x1, w0, a01);
                a02 = _mm256_fmadd_ps(x2, w0, a02);
                let w1 = _mm256_loadu_ps(wp.add(wr[1] + c));
                a10 = _mm256_fmadd_ps(x0, w1, a10);
                a11 = _mm256_fmadd_ps(x1, w1, a11);
                a12 = _mm256_fmadd_ps(x2, w1, a12);
                let w2 = _mm256_loadu_ps(wp.add(wr[2] + c));
                a20 = _mm256_fmadd_ps(x0, w2, a20);
                a21 = _mm256_fmadd_ps(x1, w2, a21);
                a22 = _mm256_fmadd_ps(x2, w2, a22);
                let w3 = _mm256_loadu_ps(wp.add(wr[3] + c));
                a30 = _mm256_fmadd_ps(x0, w3, a30);
                a31 = _mm256_fmadd_ps(x1, w3, a31);
                a32 = _mm256_fmadd_ps(x2, w3, a32);
                c += 8;
            }
            let acc = [
                [a00, a01, a02],
                [a10, a11, a12],
                [a20, a21, a22],
                [a30, a31, a32],
            ];
            for (q, row) in acc.iter().enumerate() {
                for (r, v) in row.iter().enumerate() {
                    let mut t = [0f32; 8];
                    _mm256_storeu_ps(t.as_mut_ptr(), *v);
                    let mut s: f32 = t.iter().sum();
                    for i in k8..k {
                        s += x[xr[r] + i] * w[wr[q] + i];
                    }
                    yt[(j + q) * n + b + r] = s;
                }
            }
            b += 3;
        }
        for (q, &r0) in wr.iter().enumerate() {
            let w_row = &w[r0..r0 + k];
            let out = &mut yt[(j + q) * n..(j + q + 1) * n];
            for bb in full_b..n {
                dot_group::<true, 1>(x, bb, k, w_row, out);
            }
        }
        j += 4;
    }
    for jj in full_j..rows {
        let r0 = (first_row + jj) * k;
        dot_rows::<true>(x, n, k, &w[r0..r0 + k], &mut yt[jj * n..(jj + 1) * n]);
    }
}

/// The AVX-512 kernel of [`small_matmul`]: tiles of `RW` weight rows x `RX` input rows, one
/// 16-lane accumulator per output, reduced once at the end of the row. Each weight vector loaded
/// feeds `RX` FMAs and each input vector `RW`, so few input rows still keep the FMA units busy
/// while the weight streams through once; the k tail is a masked load, not a scalar loop.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const RW: usize = 4;
    const RX: usize = 5;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn skinny(
        x: &[f32],
        n: usize,
        k: usize,
        w: &[f32],
        first_row: usize,
        yt: &mut [f32],
    ) {
        let rows = yt.len() / n;
        assert!(x.len() >= n * k && w.len() >= (first_row + rows) * k);
        let (xp, wp, out) = (x.as_ptr(), w.as_ptr().add(first_row * k), yt.as_mut_ptr());
        let mut j = 0;
        while j + RW <= rows {
            row_block::<RW>(xp, wp, n, k, j, out);
            j += RW;
        }
        while j < rows {
            row_block::<1>(xp, wp, n, k, j, out);
            j += 1;
        }
    }

    /// Outputs of weight rows `j..j + W` for every input row.
    // The feature on every helper too: an intrinsic is only inlined into a function that has
    // its feature, and a called intrinsic spills every vector to the stack.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn row_block<const W: usize>(
        xp: *const f32,
        wp: *const f32,
        n: usize,
        k: usize,
        j: usize,
        out: *mut f32,
    ) {
        let mut b = 0;
        while b + RX <= n {
            tile::<W, RX>(xp, wp, n, k, j, b, out);
            b += RX;
        }
        match n - b {
            0 => {}
            1 => tile::<W, 1>(xp, wp, n, k, j, b, out),
            2 => tile::<W, 2>(xp, wp, n, k, j, b, out),
            3 => tile::<W, 3>(xp, wp, n, k, j, b, out),
            _ => tile::<W, 4>(xp, wp, n, k, j, b, out),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const W: usize, const X: usize>(
        xp: *const f32,
        wp: *const f32,
        n: usize,
        k: usize,
        j: usize,
        b: usize,
        out: *mut f32,
    ) {
        // Index loops over the const bounds (not iterators) so LLVM unrolls them and keeps every
        // accumulator in a register.
        let mut acc = [[_mm512_setzero_ps(); X]; W];
        let full = k / 16 * 16;
        let mut c = 0;
        while c < full {
            let mut xv = [_mm512_setzero_ps(); X];
            #[allow(clippy::needless_range_loop)]
            for r in 0..X {
                xv[r] = _mm512_loadu_ps(xp.add((b + r) * k + c));
            }
            #[allow(clippy::needless_range_loop)]
            for q in 0..W {
                let wv = _mm512_loadu_ps(wp.add((j + q) * k + c));
                for r in 0..X {
                    acc[q][r] = _mm512_fmadd_ps(xv[r], wv, acc[q][r]);
                }
            }
            c += 16;
        }
        if full < k {
            let m: __mmask16 = ((1u32 << (k - full)) - 1) as u16;
            let mut xv = [_mm512_setzero_ps(); X];
            #[allow(clippy::needless_range_loop)]
            for r in 0..X {
                xv[r] = _mm512_maskz_loadu_ps(m, xp.add((b + r) * k + full));
            }
            #[allow(clippy::needless_range_loop)]
            for q in 0..W {
                let wv = _mm512_maskz_loadu_ps(m, wp.add((j + q) * k + full));
                for r in 0..X {
                    acc[q][r] = _mm512_fmadd_ps(xv[r], wv, acc[q][r]);
                }
            }
        }
        #[allow(clippy::needless_range_loop)]
        for q in 0..W {
            for r in 0..X {
                *out.add((j + q) * n + b + r) = _mm512_reduce_add_ps(acc[q][r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn small_matmul_matches_gemm_with_every_kernel_this_cpu_runs() {
        let kernels = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];
        let kernels: Vec<Kernel> = kernels.into_iter().filter(|k| k.available()).collect();
        // Row counts around the tile sizes, k with and without a 16-lane tail.
        for (n, k, out) in [
            (1, 37, 70),
            (2, 16, 9),
            (9, 384, 130),
            (16, 64, 64),
            (7, 45, 67),
            (3, 8, 4),
            (5, 576, 1536),
            (11, 100, 33),
            (SMALL_MATMUL_MAX_ROWS, 81, 131),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out, k), &Device::Cpu).unwrap();
            let b = x.matmul(&w.t().unwrap()).unwrap();
            for &kernel in &kernels {
                let a = small_matmul_with(kernel, &x, &w).unwrap().unwrap();
                let d = (a - &b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-4, "{kernel:?} {n}x{k}x{out}: {d}");
            }
        }
        let big = Tensor::zeros(
            (SMALL_MATMUL_MAX_ROWS + 1, 4),
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let w = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(small_matmul(&big, &w).unwrap().is_none());
    }

    #[test]
    fn small_matmuls_equal_one_call_per_weight() {
        let x = Tensor::randn(0f32, 1.0, (5, 40), &Device::Cpu).unwrap();
        let ws: Vec<Tensor> = [70, 3, 130]
            .iter()
            .map(|&o| Tensor::randn(0f32, 1.0, (o, 40), &Device::Cpu).unwrap())
            .collect();
        let refs: Vec<&Tensor> = ws.iter().collect();
        let ys = small_matmuls(&x, &refs).unwrap().unwrap();
        assert_eq!(ys.len(), 3);
        for (y, w) in ys.iter().zip(&ws) {
            let one = small_matmul(&x, w).unwrap().unwrap();
            assert_eq!(y.dims(), one.dims());
            let (a, b) = (y.flatten_all().unwrap(), one.flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
        let bad = Tensor::zeros((4, 41), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(small_matmuls(&x, &[&ws[0], &bad]).unwrap().is_none());
    }
}
