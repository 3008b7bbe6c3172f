use std::arch::x86_64::*;

use super::Job;

/// A 2-byte weight format widened to f32 in registers.
pub(super) trait Format {
    /// 16 weights at `p` as f32, the first `m` bits of the mask (all 16 when None).
    unsafe fn load(p: *const u16, m: Option<__mmask16>) -> __m512;
}

pub(super) struct Bf16;
pub(super) struct F16;

impl Format for Bf16 {
    #[inline(always)]
    unsafe fn load(p: *const u16, m: Option<__mmask16>) -> __m512 {
        let h = match m {
            None => _mm256_loadu_si256(p.cast()),
            Some(m) => _mm256_maskz_loadu_epi16(m, p.cast()),
        };
        // bf16 is the top half of an f32.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

impl Format for F16 {
    #[inline(always)]
    unsafe fn load(p: *const u16, m: Option<__mmask16>) -> __m512 {
        let h = match m {
            None => _mm256_loadu_si256(p.cast()),
            Some(m) => _mm256_maskz_loadu_epi16(m, p.cast()),
        };
        _mm512_cvtph_ps(h)
    }
}

/// Prefetches, into L2, the `bytes` after `next` that step `step` of `steps` covers, so that
/// the first tile of a block of weight rows streams the next block in address order.
#[inline(always)]
unsafe fn prefetch_share(next: *const u8, bytes: usize, step: usize, steps: usize) {
    let from = bytes * step / steps;
    let to = bytes * (step + 1) / steps;
    let mut line = from / 64 * 64;
    while line < to {
        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(line) as *const i8);
        line += 64;
    }
}

/// f32 inputs, weights widened to f32: tiles of 4 weight rows x up to 5 input rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn widen<F: Format>(job: Job, x: *const f32) {
    let mut j = 0;
    while j + 4 <= job.rows {
        widen_rows::<F, 4>(job, x, j);
        j += 4;
    }
    while j < job.rows {
        widen_rows::<F, 1>(job, x, j);
        j += 1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn widen_rows<F: Format, const W: usize>(job: Job, x: *const f32, j: usize) {
    let mut b = 0;
    while b < job.xn {
        let n = (job.xn - b).min(5);
        macro_rules! tile {
            ($($x:literal)*) => {
                match (n, b == 0 && W == 4) {
                    $(($x, true) => widen_tile::<F, W, $x, true>(job, x, j, b),
                      ($x, false) => widen_tile::<F, W, $x, false>(job, x, j, b),)*
                    _ => unreachable!(),
                }
            };
        }
        tile!(1 2 3 4 5);
        b += n;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn widen_tile<F: Format, const W: usize, const X: usize, const PREFETCH: bool>(
    job: Job,
    x: *const f32,
    j: usize,
    b: usize,
) {
    let k = job.k;
    let wp = job.w.add((job.j0 + j) * k);
    let xp = x.add((job.r0 + b) * k);
    let next = wp.wrapping_add(W * k) as *const u8;
    let steps = k.div_ceil(16);
    let mut acc = [[_mm512_setzero_ps(); X]; W];
    let full = k / 16 * 16;
    let mut c = 0;
    while c < full {
        let mut xv = [_mm512_setzero_ps(); X];
        #[allow(clippy::needless_range_loop)]
        for r in 0..X {
            xv[r] = _mm512_loadu_ps(xp.add(r * k + c));
        }
        if PREFETCH {
            prefetch_share(next, W * k * 2, c / 16, steps);
        }
        #[allow(clippy::needless_range_loop)]
        for q in 0..W {
            let wv = F::load(wp.add(q * k + c), None);
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
            xv[r] = _mm512_maskz_loadu_ps(m, xp.add(r * k + full));
        }
        #[allow(clippy::needless_range_loop)]
        for q in 0..W {
            let wv = F::load(wp.add(q * k + full), Some(m));
            for r in 0..X {
                acc[q][r] = _mm512_fmadd_ps(xv[r], wv, acc[q][r]);
            }
        }
    }
    #[allow(clippy::needless_range_loop)]
    for q in 0..W {
        for r in 0..X {
            job.out.put(
                job.r0 + b + r,
                job.j0 + j + q,
                _mm512_reduce_add_ps(acc[q][r]),
            );
        }
    }
}

/// bf16 inputs and weights, `vdpbf16ps` over 32 pairs a step: tiles of 4 x up to 5.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn dot_bf16(job: Job, x: *const u16) {
    let mut j = 0;
    while j + 4 <= job.rows {
        dot_rows::<4>(job, x, j);
        j += 4;
    }
    while j < job.rows {
        dot_rows::<1>(job, x, j);
        j += 1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn dot_rows<const W: usize>(job: Job, x: *const u16, j: usize) {
    let mut b = 0;
    while b < job.xn {
        let n = (job.xn - b).min(5);
        macro_rules! tile {
            ($($x:literal)*) => {
                match (n, b == 0 && W == 4) {
                    $(($x, true) => dot_tile::<W, $x, true>(job, x, j, b),
                      ($x, false) => dot_tile::<W, $x, false>(job, x, j, b),)*
                    _ => unreachable!(),
                }
            };
        }
        tile!(1 2 3 4 5);
        b += n;
    }
}

#[inline(always)]
unsafe fn bh(v: __m512i) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(v)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn dot_tile<const W: usize, const X: usize, const PREFETCH: bool>(
    job: Job,
    x: *const u16,
    j: usize,
    b: usize,
) {
    let k = job.k;
    let wp = job.w.add((job.j0 + j) * k);
    let xp = x.add((job.r0 + b) * k);
    let next = wp.wrapping_add(W * k) as *const u8;
    let steps = k.div_ceil(32);
    let mut acc = [[_mm512_setzero_ps(); X]; W];
    let full = k / 32 * 32;
    let mut c = 0;
    while c < full {
        let mut xv = [_mm512_setzero_si512(); X];
        #[allow(clippy::needless_range_loop)]
        for r in 0..X {
            xv[r] = _mm512_loadu_si512(xp.add(r * k + c).cast());
        }
        if PREFETCH {
            prefetch_share(next, W * k * 2, c / 32, steps);
        }
        #[allow(clippy::needless_range_loop)]
        for q in 0..W {
            let wv = bh(_mm512_loadu_si512(wp.add(q * k + c).cast()));
            for r in 0..X {
                acc[q][r] = _mm512_dpbf16_ps(acc[q][r], bh(xv[r]), wv);
            }
        }
        c += 32;
    }
    if full < k {
        let m: __mmask32 = ((1u64 << (k - full)) - 1) as u32;
        let mut xv = [_mm512_setzero_si512(); X];
        #[allow(clippy::needless_range_loop)]
        for r in 0..X {
            xv[r] = _mm512_maskz_loadu_epi16(m, xp.add(r * k + full).cast());
        }
        #[allow(clippy::needless_range_loop)]
        for q in 0..W {
            let wv = bh(_mm512_maskz_loadu_epi16(m, wp.add(q * k + full).cast()));
            for r in 0..X {
                acc[q][r] = _mm512_dpbf16_ps(acc[q][r], bh(xv[r]), wv);
            }
        }
    }
    #[allow(clippy::needless_range_loop)]
    for q in 0..W {
        for r in 0..X {
            job.out.put(
                job.r0 + b + r,
                job.j0 + j + q,
                _mm512_reduce_add_ps(acc[q][r]),
            );
        }
    }
}

/// `src` rounded to bf16 bits (nearest even), 32 at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn round_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let full = n / 32 * 32;
    let mut i = 0;
    while i < full {
        let lo = _mm512_loadu_ps(src.as_ptr().add(i));
        let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
        // The second operand fills the low half of the result.
        let v: __m512i = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), v);
        i += 32;
    }
    for t in full..n {
        dst[t] = half::bf16::from_f32(src[t]).to_bits();
    }
}
