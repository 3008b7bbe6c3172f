//! How far a device's numbers are from the CPU's, and whether that is within a stated tolerance.

use serde::Serialize;

/// Differences of `got` from `reference`, and the verdict against `tolerance`.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Values compared.
    pub values: usize,
    /// `max |got - ref|`.
    pub max_abs_err: f64,
    /// `max |got - ref| / max |ref|`.
    pub max_rel_err: f64,
    /// `||got - ref|| / ||ref||` (Euclidean): the figure the tolerance bounds.
    pub rel_l2_err: f64,
    /// Largest `rel_l2_err` that passes.
    pub tolerance: f64,
    /// Finite everywhere, same length, and `rel_l2_err <= tolerance`.
    pub pass: bool,
}

impl Agreement {
    pub fn of(got: &[f32], reference: &[f32], tolerance: f64) -> Agreement {
        let mut max_abs = 0f64;
        let mut max_ref = 0f64;
        let (mut diff2, mut ref2) = (0f64, 0f64);
        let mut finite = got.len() == reference.len();
        for (&g, &r) in got.iter().zip(reference) {
            let (g, r) = (g as f64, r as f64);
            finite &= g.is_finite() && r.is_finite();
            let d = (g - r).abs();
            max_abs = max_abs.max(d);
            max_ref = max_ref.max(r.abs());
            diff2 += d * d;
            ref2 += r * r;
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { a };
        let rel_l2 = ratio(diff2.sqrt(), ref2.sqrt());
        Agreement {
            values: reference.len(),
            max_abs_err: max_abs,
            max_rel_err: ratio(max_abs, max_ref),
            rel_l2_err: rel_l2,
            tolerance,
            // NaN never passes: `finite` catches it before the comparison could.
            pass: finite && !reference.is_empty() && rel_l2 <= tolerance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_pass_and_a_perturbation_beyond_the_tolerance_fails() {
        let r = [1.0f32, -2.0, 3.0];
        let same = Agreement::of(&r, &r, 1e-6);
        assert!(same.pass && same.max_abs_err == 0.0);
        let off = Agreement::of(&[1.0, -2.0, 3.5], &r, 0.1);
        assert!(!off.pass);
        assert!((off.max_abs_err - 0.5).abs() < 1e-9);
        assert!((off.max_rel_err - 0.5 / 3.0).abs() < 1e-9);
        assert!((off.rel_l2_err - 0.5 / 14f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn nan_or_a_length_mismatch_never_passes() {
        assert!(!Agreement::of(&[f32::NAN], &[1.0], 1e9).pass);
        assert!(!Agreement::of(&[1.0], &[1.0, 2.0], 1e9).pass);
        assert!(!Agreement::of(&[], &[], 1e9).pass);
    }
}
