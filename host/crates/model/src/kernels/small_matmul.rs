//! `x @ w^T` for the few rows of a decode step (and prompts of up to 28 tokens): the weight streams
//! through once, split over the rayon pool, with an AVX-512, AVX2+FMA or portable kernel chosen at
//! run time.

use candle_core::{CpuStorage, Result, Tensor};

/// Largest row count routed to [`small_matmul`]: a 27-leaf decode step fits. On the matmuls of a
/// SmolLM2-135M forward (AVX-512), gemm through `crate::kernels::matmul` took 1.1-1.2x as long at 16-24
/// rows and was 0.8-0.9x at 32, 0.7x at 64.
pub const SMALL_MATMUL_MAX_ROWS: usize = 28;

/// Where a job writes its outputs: the value for input row `r` and the job's weight row `j` goes
/// to `ptr + r * ld + j`, `ptr` being the job's first column of the (n, out) output and `ld` its
/// row length. Kernels write straight into the output, which starts uninitialised: no memset of
/// the output and no scatter pass from a local block (the two measured the same, within noise;
/// this one is the simpler).
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    ld: usize,
}

impl Out {
    /// # Safety
    /// `(r, j)` lies in the job's block of the output, which no other thread writes.
    #[inline(always)]
    unsafe fn set(self, r: usize, j: usize, v: f32) {
        *self.ptr.add(r * self.ld + j) = v;
    }
}

/// Dots of `R` input rows (starting at row `b0`) with the job's weight row `j`: the weight chunk
/// is loaded once for `R` fused multiply-adds.
#[inline(always)]
fn dot_group<const FMA: bool, const R: usize>(
    x: &[f32],
    b0: usize,
    k: usize,
    w_row: &[f32],
    out: Out,
    j: usize,
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
        // SAFETY: the caller's job owns weight row `j` for every input row.
        unsafe { out.set(b0 + r, j, s) };
    }
}

#[inline(always)]
fn dot_rows<const FMA: bool>(x: &[f32], n: usize, k: usize, w_row: &[f32], out: Out, j: usize) {
    let mut b = 0;
    while b + 4 <= n {
        dot_group::<FMA, 4>(x, b, k, w_row, out, j);
        b += 4;
    }
    while b < n {
        dot_group::<FMA, 1>(x, b, k, w_row, out, j);
        b += 1;
    }
}

/// Weight rows `first_row..first_row + rows`, one at a time.
#[inline(always)]
fn chunk_kernel<const FMA: bool>(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    first_row: usize,
    rows: usize,
    out: Out,
) {
    for r in 0..rows {
        let j = first_row + r;
        dot_rows::<FMA>(x, n, k, &w[j * k..(j + 1) * k], out, r);
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
    rows: usize,
    out: Out,
) {
    chunk_kernel::<true>(x, n, k, w, first_row, rows, out)
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

    /// Outputs of weight rows `first_row..first_row + rows` for all `n` input rows, into `out`.
    ///
    /// # Safety
    /// `out` must be valid for writes of that (n, rows) block, which no other thread writes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        x: &[f32],
        n: usize,
        k: usize,
        w: &[f32],
        first_row: usize,
        rows: usize,
        out: Out,
    ) {
        debug_assert!(self.available());
        match self {
            // SAFETY (both arms): `available()` checked that the CPU has the features the
            // functions were compiled for.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::skinny(x, n, k, w, first_row, rows, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                if n >= 3 {
                    block_kernel_avx2(x, n, k, w, first_row, rows, out)
                } else {
                    chunk_kernel_avx2(x, n, k, w, first_row, rows, out)
                }
            },
            _ => chunk_kernel::<false>(x, n, k, w, first_row, rows, out),
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
    if n > SMALL_MATMUL_MAX_ROWS || !f32_cpu(x) {
        return Ok(None);
    }
    let half_cpu = |t: &Tensor| {
        t.device().is_cpu()
            && matches!(
                t.dtype(),
                candle_core::DType::BF16 | candle_core::DType::F16
            )
    };
    if ws.iter().all(|w| half_cpu(w) && w.dtype() == ws[0].dtype()) && !ws.is_empty() {
        return small_half(x, ws);
    }
    if !ws.iter().all(|w| f32_cpu(w)) {
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
    // Each output is (n, out), written in place by the jobs, which cover disjoint column ranges
    // `first..first + rows`. The buffers start uninitialised: zeroing them first was a
    // memset of every output.
    let mut ys: Vec<Vec<f32>> = outs
        .iter()
        .map(|&out| Vec::with_capacity(n * out))
        .collect();
    let dests: Vec<Dest> = ys.iter_mut().map(|y| Dest(y.as_mut_ptr())).collect();
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
        // SAFETY: `ys[wi]` has capacity n * outs[wi]; this job alone writes columns
        // `first..first + rows` of its n rows.
        unsafe {
            let out = Out {
                ptr: dests[wi].0.add(first),
                ld: outs[wi],
            };
            kernel.run(xd, n, k, wds[wi], first, rows, out);
        }
    });
    drop(wds);
    drop(wsl);
    drop(xs);
    for (y, &out) in ys.iter_mut().zip(&outs) {
        // SAFETY: the jobs above wrote every element of the (n, out) output.
        unsafe { y.set_len(n * out) };
    }
    ys.into_iter()
        .zip(outs)
        .map(|(y, out)| Tensor::from_vec(y, (n, out), x.device()))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// [`small_matmuls`] with bf16 / f16 weights: `crate::kernels::half_matmul`'s kernels, all weights in one
/// dispatch.
fn small_half(x: &Tensor, ws: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    use crate::kernels::half_matmul::Half;
    let (n, k) = x.dims2()?;
    let xd = x.flatten_all()?.to_vec1::<f32>()?;
    let mut outs = Vec::with_capacity(ws.len());
    for w in ws {
        let (out, k2) = w.dims2()?;
        if k2 != k || !w.is_contiguous() {
            return Ok(None);
        }
        outs.push(out);
    }
    let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let mut halves = Vec::with_capacity(ws.len());
    for (st, l) in &guards {
        let Some((a, b)) = l.contiguous_offsets() else {
            return Ok(None);
        };
        halves.push(match &**st {
            candle_core::Storage::Cpu(CpuStorage::BF16(v)) => Half::Bf16(&v[a..b]),
            candle_core::Storage::Cpu(CpuStorage::F16(v)) => Half::F16(&v[a..b]),
            _ => return Ok(None),
        });
    }
    let mut ys: Vec<Vec<f32>> = outs.iter().map(|&o| vec![0f32; n * o]).collect();
    let mut refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
    crate::kernels::half_matmul::matmul_wt_multi(n, k, &xd, &halves, &mut refs, false);
    drop(halves);
    drop(guards);
    ys.into_iter()
        .zip(outs)
        .map(|(y, out)| Tensor::from_vec(y, (n, out), x.device()))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// An output buffer shared by the jobs that fill disjoint column ranges of it.
struct Dest(*mut f32);

// SAFETY: jobs only write disjoint column ranges (see `small_matmuls_with`).
unsafe impl Sync for Dest {}

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
    rows: usize,
    out: Out,
) {
    use std::arch::x86_64::*;
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
                if b == 0 && c % 16 == 0 {
                    // The next block of 4 rows into L2, in address order (see `avx512`).
                    let next = wp.wrapping_add((first_row + j + 4) * k + c * 4);
                    for q in 0..4 {
                        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(q * 16) as *const i8);
                    }
                }
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
                    out.set(b + r, j + q, s);
                }
            }
            b += 3;
        }
        for (q, &r0) in wr.iter().enumerate() {
            let w_row = &w[r0..r0 + k];
            for bb in full_b..n {
                dot_group::<true, 1>(x, bb, k, w_row, out, j + q);
            }
        }
        j += 4;
    }
    for jj in full_j..rows {
        let r0 = (first_row + jj) * k;
        dot_rows::<true>(x, n, k, &w[r0..r0 + k], out, jj);
    }
}

/// The AVX-512 kernel of [`small_matmul`]: tiles of 4 weight rows x up to 5 input rows, one
/// 16-lane accumulator per output, reduced once at the end of the row; the k tail is a masked
/// load, not a scalar loop. Each weight vector loaded feeds up to 5 FMAs and each input vector 4.
///
/// The first tile of each block of 4 weight rows also prefetches the next block into L2, one
/// line per weight vector loaded, in address order. The tiles read 4 rows side by side, which
/// the hardware prefetchers follow poorly; the prefetches turn that into one sequential stream.
/// Measured on the decode matmuls of SmolLM2-135M (one step, medians of 8 interleaved rounds):
/// batch 9 37-38 ms -> 25 ms, batch 1 25.7 -> 22.7 ms.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Out;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn skinny(
        x: &[f32],
        n: usize,
        k: usize,
        w: &[f32],
        first_row: usize,
        rows: usize,
        out: Out,
    ) {
        assert!(x.len() >= n * k && w.len() >= (first_row + rows) * k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr().add(first_row * k));
        let p = Panel { xp, wp, n, k, out };
        let mut j = 0;
        while j + 4 <= rows {
            p.rows::<4>(j);
            j += 4;
        }
        while j < rows {
            p.rows::<1>(j);
            j += 1;
        }
    }

    /// One job's operands: `n` input rows of length `k` at `xp`, the job's weight rows at `wp`,
    /// its outputs at `out`.
    #[derive(Clone, Copy)]
    struct Panel {
        xp: *const f32,
        wp: *const f32,
        n: usize,
        k: usize,
        out: Out,
    }

    // The feature on every helper too: an intrinsic is only inlined into a function that has
    // its feature, and a called intrinsic spills every vector to the stack.
    impl Panel {
        /// Weight rows `j..j + W` against every input row, in tiles of 5. Only the first tile of
        /// a block of 4 prefetches: the later ones find the block in L1.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn rows<const W: usize>(self, j: usize) {
            let mut b = 0;
            while b < self.n {
                let x = (self.n - b).min(5);
                macro_rules! tile {
                    ($($x:literal)*) => {
                        match (x, b == 0 && W == 4) {
                            $(($x, true) => self.tile::<W, $x, true>(j, b),
                              ($x, false) => self.tile::<W, $x, false>(j, b),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(1 2 3 4 5);
                b += x;
            }
        }

        /// Outputs of weight rows `j..j + W` and input rows `b..b + X`; with `PREFETCH`, weight
        /// rows `j + W..j + 2W` are fetched into L2 on the way.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn tile<const W: usize, const X: usize, const PREFETCH: bool>(
            self,
            j: usize,
            b: usize,
        ) {
            let Panel { xp, wp, k, out, .. } = self;
            // The next block is the W * k floats after this one; the prefetch for weight
            // vector `q` of step `c` covers line `c / 16 * W + q` of it. Past the last block it
            // names memory that may not be this weight's: a prefetch never faults, and the
            // address is computed with wrapping arithmetic.
            let next = wp.wrapping_add((j + W) * k);
            // Index loops over the const bounds (not iterators) so LLVM unrolls them and keeps
            // every accumulator in a register.
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
                    if PREFETCH {
                        let line = next.wrapping_add(c * W + q * 16);
                        _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
                    }
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
                    out.set(b + r, j + q, _mm512_reduce_add_ps(acc[q][r]));
                }
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
            (27, 50, 70),
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
