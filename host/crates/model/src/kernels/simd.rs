//! Vector kernels the crate's hot elementwise loops share. The crate is built for baseline
//! x86-64, so loops LLVM vectorises run 4 lanes wide and `f32::exp` is a scalar libm call; these
//! run 16 lanes wide where the CPU has AVX-512 (checked at run time) and fall back to plain
//! loops elsewhere.

/// Whether this CPU runs the AVX-512 kernels.
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = silu(g) * u = g * u / (1 + e^-g)`, element by element (the three slices of one length).
pub(crate) fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32]) {
    assert!(g.len() == u.len() && u.len() == y.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512 checked; the slices have equal lengths.
        unsafe { avx512::silu_mul(g, u, y) };
        return;
    }
    for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
        *y = g * u / (1.0 + (-g).exp());
    }
}

/// `x = e^(x - shift)`, element by element (softmax numerators).
pub(crate) fn exp_shifted(x: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512 checked.
        unsafe { avx512::exp_shifted(x, shift) };
        return;
    }
    x.iter_mut().for_each(|v| *v = (*v - shift).exp());
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::exp_shifted`]; the tail is masked.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_shifted(x: &mut [f32], shift: f32) {
        let (n, s) = (x.len(), _mm512_set1_ps(shift));
        let mut c = 0;
        while c < n {
            let m: __mmask16 = if n - c >= 16 {
                0xffff
            } else {
                ((1u32 << (n - c)) - 1) as u16
            };
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(c));
            _mm512_mask_storeu_ps(x.as_mut_ptr().add(c), m, exp(_mm512_sub_ps(v, s)));
            c += 16;
        }
    }

    /// [`super::silu_mul`]; the tail is masked.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32]) {
        let n = g.len();
        let full = n / 16 * 16;
        for c in (0..full).step_by(16) {
            silu_mul16(g, u, y, c, 0xffff);
        }
        if full < n {
            silu_mul16(g, u, y, full, ((1u32 << (n - full)) - 1) as u16);
        }
    }

    /// The lanes `m` of `y[c..c + 16]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn silu_mul16(g: &[f32], u: &[f32], y: &mut [f32], c: usize, m: __mmask16) {
        let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(c));
        let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(c));
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let v = _mm512_div_ps(_mm512_mul_ps(gv, uv), _mm512_add_ps(_mm512_set1_ps(1.0), e));
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(c), m, v);
    }

    /// `e^x`: Cephes' single-precision polynomial on `x - n ln 2`, scaled by `2^n`; relative
    /// error about 2e-7. Below -87 the result underflows to 0 (or a denormal) and above 88.7 it
    /// is infinite, as `f32::exp`; NaN stays NaN.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn exp(x: __m512) -> __m512 {
        // Past these bounds the result is 0 or infinite anyway, and the reduction below stays
        // exact. MAXPS and MINPS return their second operand when either is NaN: x, so NaN
        // passes through.
        let x = _mm512_max_ps(_mm512_set1_ps(-103.0), x);
        let x = _mm512_min_ps(_mm512_set1_ps(89.0), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, so that n * ln 2 is subtracted without rounding error.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(
            y,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(y, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_matches_f32_exp() {
        if !has_avx512() {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let xs: Vec<f32> = (0..=4000)
            .map(|i| -100.0 + i as f32 * 0.05)
            .chain([f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -1e30, 1e30])
            .collect();
        for c in xs.chunks(16) {
            let mut lane = [0f32; 16];
            lane[..c.len()].copy_from_slice(c);
            let mut out = [0f32; 16];
            // SAFETY: AVX-512 checked above.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(
                    out.as_mut_ptr(),
                    avx512::exp(_mm512_loadu_ps(lane.as_ptr())),
                );
            }
            for (x, y) in lane.iter().zip(out) {
                let want = x.exp();
                if want.is_nan() {
                    assert!(y.is_nan(), "exp(NaN) = {y}");
                    continue;
                }
                let err = (y - want).abs() / want.max(f32::MIN_POSITIVE);
                assert!(
                    err < 1e-6
                        || (y - want).abs() < 1e-37
                        || (y.is_infinite() && want.is_infinite()),
                    "exp({x}) = {y}, want {want}"
                );
            }
        }
    }

    #[test]
    fn exp_shifted_matches_f32_exp_including_the_tail() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 30.0) * 1.7).collect();
        let mut y = xs.clone();
        exp_shifted(&mut y, 2.5);
        for (x, y) in xs.iter().zip(&y) {
            let want = (x - 2.5).exp();
            assert!(
                (y - want).abs() <= 1e-6 * want.max(1e-30),
                "{x}: {y} vs {want}"
            );
        }
    }

    #[test]
    fn silu_mul_matches_the_scalar_formula_including_the_tail_and_extremes() {
        let g: Vec<f32> = (0..37)
            .map(|i| (i as f32 - 18.0) * 7.3)
            .chain([f32::NAN])
            .collect();
        let u: Vec<f32> = (0..38).map(|i| 1.0 + i as f32 * 0.25).collect();
        let mut y = vec![0f32; g.len()];
        silu_mul(&g, &u, &mut y);
        for i in 0..g.len() {
            let want = g[i] * u[i] / (1.0 + (-g[i]).exp());
            if want.is_nan() {
                assert!(y[i].is_nan());
            } else {
                assert!(
                    (y[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{i}: {} vs {want}",
                    y[i]
                );
            }
        }
    }
}
