//! Products with bf16 / f16 weights on the CPU. The activations stay f32, every sum accumulates
//! in f32, and the weights are read in their own 2-byte format: half the bytes of f32, which is
//! what a memory-bound decode step pays for, and no f32 copy of the model in memory.
//!
//! `y = x @ w^T` ([`matmul_wt`], [`matmul_wt_multi`]) has one kernel per CPU kind, chosen at run
//! time:
//! - bf16 on CPUs with AVX512-BF16 (Zen 4, Sapphire Rapids): the input rows are rounded to bf16
//!   once per call and `vdpbf16ps` multiplies 32 pairs per instruction into f32 lanes, twice the
//!   multiply-adds of an f32 FMA, the way llama.cpp and oneDNN run bf16 on these CPUs;
//! - bf16 or f16 with AVX-512 (F, BW, VL) or AVX2 + FMA + F16C: 16 (8) weights are widened to f32
//!   in registers and fed to f32 FMAs, so the inputs keep full precision;
//! - a portable scalar loop elsewhere.
//!
//! The register tiles are those of `crate::kernels::small_matmul` (4 weight rows x up to 5 input rows,
//! one accumulator per output, reduced once per row). Work splits over the rayon pool in blocks
//! of 32 weight rows x 64 input rows, so a block's inputs stay in L2 while its weights stream.
//!
//! `dx = g @ w` ([`matmul_nn`], the input gradient of training) widens blocks of weight rows to
//! f32 and hands them to gemm: it runs on many rows, where the widening is a small fraction of
//! the product.

use half::{bf16, f16};
use rayon::prelude::*;

/// A weight matrix (out, k), row-major, in a 2-byte float format.
#[derive(Clone, Copy, Debug)]
pub enum Half<'a> {
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Half<'_> {
    fn len(&self) -> usize {
        match self {
            Half::Bf16(w) => w.len(),
            Half::F16(w) => w.len(),
        }
    }

    fn bits(&self) -> *const u16 {
        match self {
            Half::Bf16(w) => w.as_ptr().cast(),
            Half::F16(w) => w.as_ptr().cast(),
        }
    }

    fn is_bf16(&self) -> bool {
        matches!(self, Half::Bf16(_))
    }

    /// Rows `first..first + rows` (of length `k`) widened to f32 into `dst`.
    fn widen_rows(&self, first: usize, rows: usize, k: usize, dst: &mut [f32]) {
        let range = first * k..(first + rows) * k;
        match self {
            Half::Bf16(w) => dst
                .par_chunks_mut(k)
                .zip(w[range].par_chunks(k))
                .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32())),
            Half::F16(w) => dst
                .par_chunks_mut(k)
                .zip(w[range].par_chunks(k))
                .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32())),
        }
    }
}

/// A weight matrix's data on the CPU in any of the formats the decoder holds weights in.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    Half(Half<'a>),
}

/// Runs `f` on the contiguous CPU data of weight `w` (f32, bf16 or f16).
pub fn with_weight<R>(
    w: &candle_core::Tensor,
    f: impl FnOnce(WeightRef) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    use candle_core::{CpuStorage, Storage};
    let w = w.contiguous()?;
    let (st, l) = w.storage_and_layout();
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("weight must be contiguous");
    };
    match &*st {
        Storage::Cpu(CpuStorage::F32(v)) => f(WeightRef::F32(&v[a..b])),
        Storage::Cpu(CpuStorage::BF16(v)) => f(WeightRef::Half(Half::Bf16(&v[a..b]))),
        Storage::Cpu(CpuStorage::F16(v)) => f(WeightRef::Half(Half::F16(&v[a..b]))),
        _ => candle_core::bail!(
            "weights must be f32, bf16 or f16 on the cpu, got {:?}",
            w.dtype()
        ),
    }
}

/// Weight rows per job: a 576-row projection splits into 18 jobs, even on 2 threads.
const JOB_ROWS: usize = 32;
/// Input rows per job: 64 rows of a 576-wide input are 144 KiB of f32, which stay in L2 while the
/// job's weight rows stream past them.
const JOB_INPUTS: usize = 64;

/// Where a job writes: output `(r, j)` (input row `r`, weight row `j`, both absolute) lives at
/// `ptr + r * ld + j`.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    ld: usize,
    accumulate: bool,
}

impl Out {
    /// # Safety
    /// `(r, j)` lies in the calling job's block of the output, which no other thread writes.
    #[inline(always)]
    unsafe fn put(self, r: usize, j: usize, v: f32) {
        let p = self.ptr.add(r * self.ld + j);
        *p = if self.accumulate { *p + v } else { v };
    }
}

// SAFETY: jobs write disjoint blocks of the outputs (see `matmul_wt_multi`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// The kernels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// bf16 weights only.
    Avx512Bf16,
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    fn best(w: &Half) -> Kernel {
        static BEST: std::sync::OnceLock<[Kernel; 2]> = std::sync::OnceLock::new();
        let [for_bf16, for_f16] = *BEST.get_or_init(|| {
            let pick = |ks: &[Kernel]| {
                ks.iter()
                    .copied()
                    .find(|k| k.available())
                    .unwrap_or(Kernel::Portable)
            };
            [
                pick(&[Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2]),
                pick(&[Kernel::Avx512, Kernel::Avx2]),
            ]
        });
        if w.is_bf16() {
            for_bf16
        } else {
            for_f16
        }
    }

    fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            match self {
                Kernel::Avx512Bf16 => avx512 && has!("avx512bf16"),
                Kernel::Avx512 => avx512,
                Kernel::Avx2 => has!("avx2") && has!("fma") && has!("f16c"),
                Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }
}

/// `y (n, out) = [y +] x (n, k) @ w^T` for `w` (out, k) in bf16 or f16.
pub fn matmul_wt(n: usize, k: usize, x: &[f32], w: Half, y: &mut [f32], accumulate: bool) {
    matmul_wt_multi(n, k, x, &[w], &mut [y], accumulate)
}

/// [`matmul_wt`] of one input with several weights (a layer's q/k/v, or gate/up) in one
/// parallel dispatch, the input rounded to bf16 once for all of them when the kernel needs it.
pub fn matmul_wt_multi(
    n: usize,
    k: usize,
    x: &[f32],
    ws: &[Half],
    ys: &mut [&mut [f32]],
    accumulate: bool,
) {
    let Some(first) = ws.first() else { return };
    matmul_wt_multi_with(Kernel::best(first), n, k, x, ws, ys, accumulate)
}

fn matmul_wt_multi_with(
    kernel: Kernel,
    n: usize,
    k: usize,
    x: &[f32],
    ws: &[Half],
    ys: &mut [&mut [f32]],
    accumulate: bool,
) {
    assert_eq!(ws.len(), ys.len());
    assert!(x.len() >= n * k);
    if n == 0 || k == 0 {
        if !accumulate {
            ys.iter_mut()
                .for_each(|y| y.iter_mut().for_each(|v| *v = 0.0));
        }
        return;
    }
    let outs: Vec<usize> = ws.iter().map(|w| w.len() / k).collect();
    for ((w, y), &out) in ws.iter().zip(ys.iter()).zip(&outs) {
        assert!(w.len() == out * k && y.len() >= n * out);
        assert_eq!(w.is_bf16(), ws[0].is_bf16(), "one format per call");
    }
    // The dot-product kernel multiplies bf16 by bf16: round the input once for every weight.
    let x16: Vec<u16> = if kernel == Kernel::Avx512Bf16 {
        to_bf16_bits(&x[..n * k])
    } else {
        Vec::new()
    };
    let dests: Vec<Out> = ys
        .iter_mut()
        .zip(&outs)
        .map(|(y, &out)| Out {
            ptr: y.as_mut_ptr(),
            ld: out,
            accumulate,
        })
        .collect();
    let jobs: Vec<(usize, usize, usize, usize, usize)> = outs
        .iter()
        .enumerate()
        .flat_map(|(wi, &out)| {
            (0..n).step_by(JOB_INPUTS).flat_map(move |r0| {
                (0..out)
                    .step_by(JOB_ROWS)
                    .map(move |j0| (wi, j0, JOB_ROWS.min(out - j0), r0, JOB_INPUTS.min(n - r0)))
            })
        })
        .collect();
    let run = |&(wi, j0, rows, r0, xn): &(usize, usize, usize, usize, usize)| {
        let w = ws[wi];
        let job = Job {
            k,
            w: w.bits(),
            j0,
            rows,
            r0,
            xn,
            out: dests[wi],
        };
        // SAFETY: `available()` holds for the chosen kernel; the asserts above bound every
        // index a job reaches; jobs write disjoint (rows r0.., cols j0..) blocks.
        unsafe {
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Bf16 => avx512::dot_bf16(job, x16.as_ptr()),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => match w {
                    Half::Bf16(_) => avx512::widen::<avx512::Bf16>(job, x.as_ptr()),
                    Half::F16(_) => avx512::widen::<avx512::F16>(job, x.as_ptr()),
                },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => match w {
                    Half::Bf16(_) => avx2::widen::<false>(job, x.as_ptr()),
                    Half::F16(_) => avx2::widen::<true>(job, x.as_ptr()),
                },
                _ => portable(job, x, w),
            }
        }
    };
    if jobs.len() == 1 {
        run(&jobs[0]);
    } else {
        jobs.par_iter().for_each(run);
    }
}

/// One block of work: weight rows `j0..j0 + rows` against input rows `r0..r0 + xn`.
#[derive(Clone, Copy)]
struct Job {
    k: usize,
    /// The whole weight, as raw 2-byte values.
    w: *const u16,
    j0: usize,
    rows: usize,
    r0: usize,
    xn: usize,
    out: Out,
}

fn portable(job: Job, x: &[f32], w: Half) {
    let k = job.k;
    for j in job.j0..job.j0 + job.rows {
        for r in job.r0..job.r0 + job.xn {
            let xr = &x[r * k..(r + 1) * k];
            let s: f32 = match w {
                Half::Bf16(w) => xr
                    .iter()
                    .zip(&w[j * k..(j + 1) * k])
                    .map(|(a, b)| a * b.to_f32())
                    .sum(),
                Half::F16(w) => xr
                    .iter()
                    .zip(&w[j * k..(j + 1) * k])
                    .map(|(a, b)| a * b.to_f32())
                    .sum(),
            };
            // SAFETY: (r, j) is in this job's block.
            unsafe { job.out.put(r, j, s) };
        }
    }
}

/// `x` rounded to bf16 (nearest, ties to even), as raw bits.
fn to_bf16_bits(x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; x.len()];
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                // SAFETY: the features were just checked.
                unsafe { avx512::round_bf16(s, d) };
                return;
            }
            d.iter_mut()
                .zip(s)
                .for_each(|(d, s)| *d = bf16::from_f32(*s).to_bits());
        });
    out
}

/// `dx (n, k) = [dx +] g (n, out) @ w (out, k)`: the input gradient through a frozen 2-byte
/// weight. Blocks of weight rows are widened to f32 and multiplied by gemm.
pub fn matmul_nn(n: usize, out: usize, g: &[f32], w: Half, dx: &mut [f32], accumulate: bool) {
    let k = w.len() / out.max(1);
    assert!(g.len() >= n * out && dx.len() >= n * k && w.len() == out * k);
    if n == 0 || k == 0 {
        return;
    }
    if out == 0 {
        if !accumulate {
            dx[..n * k].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    // About 4 MiB of widened weights at a time.
    let block = ((1 << 20) / k).max(16).min(out);
    let mut wide = vec![0f32; block * k];
    let mut j0 = 0;
    while j0 < out {
        let rows = block.min(out - j0);
        w.widen_rows(j0, rows, k, &mut wide[..rows * k]);
        // dx += g[:, j0..j0 + rows] @ wide: the lhs is a column block of g (row stride `out`).
        let acc = accumulate || j0 > 0;
        crate::kernels::matmul::sgemm_strided(
            n,
            k,
            rows,
            dx,
            acc,
            &g[j0..],
            out,
            &wide[..rows * k],
        );
        j0 += rows;
    }
}

/// The 2-byte-weight kernels for each x86 instruction set, chosen at run time.
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The product in f64 of `x` and the weights as stored (widened exactly).
    fn reference(n: usize, k: usize, x: &[f32], w: &[f32], out: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * out];
        for r in 0..n {
            for j in 0..out {
                y[r * out + j] = (0..k)
                    .map(|c| x[r * k + c] as f64 * w[j * k + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 37, 70),
        (2, 16, 9),
        (9, 384, 130),
        (5, 576, 67),
        (7, 45, 33),
        (27, 64, 70),
        (70, 100, 41),
        (130, 96, 65),
        (3, 1, 5),
    ];

    #[test]
    fn every_kernel_this_cpu_runs_matches_the_definition() {
        let kernels = [
            Kernel::Avx512Bf16,
            Kernel::Avx512,
            Kernel::Avx2,
            Kernel::Portable,
        ];
        for (n, k, out) in SHAPES {
            let x = rand(n * k, 1 + n as u64);
            let wf = rand(out * k, 7 + k as u64);
            let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
            for (name, w, widened) in [
                (
                    "bf16",
                    Half::Bf16(&wb),
                    wb.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                ),
                (
                    "f16",
                    Half::F16(&wh),
                    wh.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                ),
            ] {
                let want = reference(n, k, &x, &widened, out);
                for kernel in kernels {
                    if !kernel.available() || (kernel == Kernel::Avx512Bf16 && !w.is_bf16()) {
                        continue;
                    }
                    // The dot-product kernel rounds the input to bf16 too: 2^-8 relative per
                    // term, so its bound scales with the sum of |x w|.
                    let tol = if kernel == Kernel::Avx512Bf16 {
                        0.01 * k as f32
                    } else {
                        1e-4 * k as f32
                    };
                    for accumulate in [false, true] {
                        let mut y = vec![0.5f32; n * out];
                        matmul_wt_multi_with(kernel, n, k, &x, &[w], &mut [&mut y], accumulate);
                        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                            let b = b + if accumulate { 0.5 } else { 0.0 };
                            assert!(
                                (a - b).abs() <= tol.max(1e-5),
                                "{kernel:?} {name} {n}x{k}x{out} acc={accumulate} [{i}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn several_weights_equal_one_call_each() {
        let (n, k) = (6, 80);
        let x = rand(n * k, 3);
        let ws: Vec<Vec<bf16>> = [70, 3, 130]
            .iter()
            .map(|&o| {
                rand(o * k, o as u64)
                    .into_iter()
                    .map(bf16::from_f32)
                    .collect()
            })
            .collect();
        let halves: Vec<Half> = ws.iter().map(|w| Half::Bf16(w)).collect();
        let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; n * w.len() / k]).collect();
        let mut refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
        matmul_wt_multi(n, k, &x, &halves, &mut refs, false);
        for (w, y) in halves.iter().zip(&ys) {
            let mut one = vec![0f32; y.len()];
            matmul_wt(n, k, &x, *w, &mut one, false);
            assert_eq!(&one, y);
        }
    }

    #[test]
    fn input_gradient_matches_the_definition() {
        for (n, out, k) in [(3, 5, 7), (40, 300, 64), (1, 1, 1), (17, 2000, 33)] {
            let g = rand(n * out, 5);
            let wf = rand(out * k, 6);
            let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let widened: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            for accumulate in [false, true] {
                let mut dx = vec![0.25f32; n * k];
                matmul_nn(n, out, &g, Half::Bf16(&wb), &mut dx, accumulate);
                for r in 0..n {
                    for c in 0..k {
                        let want: f64 = (0..out)
                            .map(|j| g[r * out + j] as f64 * widened[j * k + c] as f64)
                            .sum::<f64>()
                            + if accumulate { 0.25 } else { 0.0 };
                        let got = dx[r * k + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * out as f64,
                            "{n}x{out}x{k} acc={accumulate} ({r},{c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
