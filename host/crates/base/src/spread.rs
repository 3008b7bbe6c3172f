//! The standard deviation convention of every "mean ± std" over evaluation seeds: named by the
//! config's `[eval] std`, computed by the evaluation's reports, so the two cannot disagree on
//! what a ± means.

use serde::{Deserialize, Serialize};

/// Which standard deviation a ± is.
///
/// `Sample` divides the sum of squares by `n - 1` (Bessel's correction): the seeds are a small
/// sample of the possible question subsets, and this estimates the spread over all of them.
/// `Population` divides by `n`: the spread of these seeds alone, which is what the MALT paper
/// prints (its 90.50 ± 2.06 over four seeds fits `n`, not `n - 1`), so a table meant to be read
/// beside the paper's must use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdConvention {
    #[default]
    Sample,
    Population,
}

impl StdConvention {
    /// The standard deviation of `xs`; `None` for fewer than two values under either convention:
    /// one seed says nothing about the spread over seeds, and a population std of 0 would claim
    /// that it does.
    pub fn std(self, xs: &[f64]) -> Option<f64> {
        let n = xs.len();
        if n < 2 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        let divisor = match self {
            StdConvention::Sample => n - 1,
            StdConvention::Population => n,
        };
        Some((ss / divisor as f64).sqrt())
    }

    /// How reports name it, e.g. "sample std (n-1)".
    pub fn describe(self) -> &'static str {
        match self {
            StdConvention::Sample => "sample std (n-1)",
            StdConvention::Population => "population std (n)",
        }
    }

    /// The config's spelling (`[eval] std`).
    pub fn name(self) -> &'static str {
        match self {
            StdConvention::Sample => "sample",
            StdConvention::Population => "population",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed() {
        // Mean 84.25; squared deviations 1.5625 + 0.5625 + 0.0625 + 0.5625 = 2.75.
        let xs = [83.0, 85.0, 84.0, 85.0];
        let s = StdConvention::Sample.std(&xs).expect("n >= 2");
        let p = StdConvention::Population.std(&xs).expect("n >= 2");
        assert!(close(s, (2.75f64 / 3.0).sqrt()));
        assert!(close(p, (2.75f64 / 4.0).sqrt()));
        // Two values 1 and 3: squares 2, over 1 or over 2.
        assert_eq!(StdConvention::Sample.std(&[1.0, 3.0]), Some(2f64.sqrt()));
        assert_eq!(StdConvention::Population.std(&[1.0, 3.0]), Some(1.0));
    }

    #[test]
    fn fewer_than_two_values_have_no_spread() {
        for c in [StdConvention::Sample, StdConvention::Population] {
            assert_eq!(c.std(&[]), None);
            assert_eq!(c.std(&[5.0]), None);
            assert_eq!(c.std(&[5.0, 5.0, 5.0]), Some(0.0));
        }
    }

    #[test]
    fn config_spelling_round_trips() {
        for c in [StdConvention::Sample, StdConvention::Population] {
            let json = serde_json::to_string(&c).expect("serialise");
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<StdConvention>(&json).ok(), Some(c));
        }
        assert_eq!(StdConvention::default(), StdConvention::Sample);
    }
}
