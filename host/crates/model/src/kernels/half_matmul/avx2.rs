use std::arch::x86_64::*;

use super::Job;

/// 8 weights at `p` widened to f32.
#[inline(always)]
unsafe fn load<const F16: bool>(p: *const u16) -> __m256 {
    let h = _mm_loadu_si128(p.cast());
    if F16 {
        _mm256_cvtph_ps(h)
    } else {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

#[inline(always)]
fn scalar<const F16: bool>(bits: u16) -> f32 {
    if F16 {
        half::f16::from_bits(bits).to_f32()
    } else {
        half::bf16::from_bits(bits).to_f32()
    }
}

/// 4 weight rows x 3 input rows per tile (12 accumulators), scalar k tail.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn widen<const F16: bool>(job: Job, x: *const f32) {
    let k = job.k;
    let k8 = k / 8 * 8;
    let dot = |r: usize, j: usize| -> f32 {
        let xr = x.add(r * k);
        let wr = job.w.add(j * k);
        let mut acc = _mm256_setzero_ps();
        let mut c = 0;
        while c < k8 {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(c)), load::<F16>(wr.add(c)), acc);
            c += 8;
        }
        let mut t = [0f32; 8];
        _mm256_storeu_ps(t.as_mut_ptr(), acc);
        let mut s: f32 = t.iter().sum();
        for i in k8..k {
            s += *xr.add(i) * scalar::<F16>(*wr.add(i));
        }
        s
    };
    let mut j = job.j0;
    let jend = job.j0 + job.rows;
    while j + 4 <= jend {
        let mut r = job.r0;
        let rend = job.r0 + job.xn;
        while r + 3 <= rend {
            let z = _mm256_setzero_ps();
            let mut acc = [[z; 3]; 4];
            let mut c = 0;
            while c < k8 {
                let xv = [
                    _mm256_loadu_ps(x.add(r * k + c)),
                    _mm256_loadu_ps(x.add((r + 1) * k + c)),
                    _mm256_loadu_ps(x.add((r + 2) * k + c)),
                ];
                for (q, a) in acc.iter_mut().enumerate() {
                    let wv = load::<F16>(job.w.add((j + q) * k + c));
                    for (ar, xr) in a.iter_mut().zip(&xv) {
                        *ar = _mm256_fmadd_ps(*xr, wv, *ar);
                    }
                }
                c += 8;
            }
            for (q, a) in acc.iter().enumerate() {
                for (i, v) in a.iter().enumerate() {
                    let mut t = [0f32; 8];
                    _mm256_storeu_ps(t.as_mut_ptr(), *v);
                    let mut s: f32 = t.iter().sum();
                    for c in k8..k {
                        s += *x.add((r + i) * k + c) * scalar::<F16>(*job.w.add((j + q) * k + c));
                    }
                    job.out.put(r + i, j + q, s);
                }
            }
            r += 3;
        }
        for rr in r..rend {
            for q in 0..4 {
                job.out.put(rr, j + q, dot(rr, j + q));
            }
        }
        j += 4;
    }
    for jj in j..jend {
        for r in job.r0..job.r0 + job.xn {
            job.out.put(r, jj, dot(r, jj));
        }
    }
}
