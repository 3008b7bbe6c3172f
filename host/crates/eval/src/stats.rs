//! Mean and spread over seeds.
//!
//! The spread is the standard deviation of `[eval] std` ([`StdConvention`], in the plan):
//! by default the *sample* std (Bessel's n-1 correction), since the seeds are a small sample of
//! possible question subsets and we estimate the spread of that population; `population` (n)
//! is the paper's convention. With a single seed it is undefined and reported as `None` rather
//! than 0, which would claim a certainty the run does not have.

pub use malt_base::StdConvention;

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    Some(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (n-1); `None` for fewer than two values.
pub fn sample_std(xs: &[f64]) -> Option<f64> {
    StdConvention::Sample.std(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // Paper-like accuracies: mean 84.25; deviations -1.25, 0.75, -0.25, 0.75 -> squares
        // 1.5625 + 0.5625 + 0.0625 + 0.5625 = 2.75; / 3 = 0.91666...; sqrt = 0.957427...
        let xs = [83.0, 85.0, 84.0, 85.0];
        assert_eq!(mean(&xs), Some(84.25));
        let s = sample_std(&xs).expect("n >= 2");
        assert!((s - (2.75f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s - 0.957_427_107_756_338_1).abs() < 1e-12);
    }

    #[test]
    fn two_values() {
        // mean 2, deviations +-1, sum of squares 2, / (2-1) = 2, std sqrt(2).
        assert_eq!(sample_std(&[1.0, 3.0]), Some(2f64.sqrt()));
    }

    #[test]
    fn degenerate() {
        assert_eq!(mean(&[]), None);
        assert_eq!(sample_std(&[5.0]), None);
        assert_eq!(sample_std(&[5.0, 5.0, 5.0]), Some(0.0));
    }
}
