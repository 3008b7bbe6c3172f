//! Paired comparisons between two systems evaluated on the same questions.
//!
//! The unit is a (seed, question) pair: both systems answer the same question of the same seed's
//! subset, with the same sampling seeds (common random numbers). Only the *discordant* pairs,
//! where exactly one system is right, carry information about which is better; under the null
//! hypothesis that both are equally good, each discordant pair favours either system with
//! probability 1/2. The test is the exact two-sided sign test on them (McNemar's exact test):
//! with `b` pairs won by the first system and `c` by the second, `n = b + c`,
//! `p = min(1, 2 * P[X <= min(b, c)])` for `X ~ Binomial(n, 1/2)`; `p = 1` when `n = 0`.
//! It needs no distributional assumption and no random resampling, so it is reproducible to
//! the last digit and checkable by hand.
//!
//! Questions repeat across seeds when the subsets overlap; each (seed, question) is still its
//! own pair, because its attempts use their own sampling seeds.

/// `ln C(n, k)`, exact up to floating-point rounding, for any `n` (no overflow).
fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

/// `P[X <= k]` for `X ~ Binomial(n, 1/2)`.
pub fn binomial_half_cdf(n: u64, k: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let ln_half_n = n as f64 * 0.5f64.ln();
    // Sum from the largest term down would be a little more accurate; the terms grow with i
    // up to n/2, and k < n/2 here in every use, so summing upwards adds small to large.
    (0..=k)
        .map(|i| (ln_choose(n, i) + ln_half_n).exp())
        .sum::<f64>()
        .min(1.0)
}

/// The two-sided exact sign test on `b` and `c` discordant pairs (see the module doc).
pub fn sign_test(b: u64, c: u64) -> f64 {
    let n = b + c;
    // The smaller count at or above the middle: the two tails cover everything (exactly 1,
    // not a sum of rounded terms).
    if 2 * b.min(c) + 1 >= n {
        return 1.0;
    }
    (2.0 * binomial_half_cdf(n, b.min(c))).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    #[test]
    fn hand_computed_small_cases() {
        // n = 10, min = 2: P[X <= 2] = (1 + 10 + 45) / 1024 = 56/1024; two-sided 112/1024.
        assert!(close(sign_test(8, 2), 112.0 / 1024.0));
        assert!(close(sign_test(2, 8), 112.0 / 1024.0));
        // n = 10, min = 0: 2/1024.
        assert!(close(sign_test(10, 0), 2.0 / 1024.0));
        // n = 3, min = 1: 2 * (1 + 3) / 8 = 1.
        assert_eq!(sign_test(2, 1), 1.0);
        // n = 10, min = 5: the two tails overlap; capped at 1.
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(5, 6), 1.0);
        assert_eq!(sign_test(600, 600), 1.0);
        // n = 11, min = 4: 2 * (1 + 11 + 55 + 165 + 330) / 2048 = 1124 / 2048.
        assert!(close(sign_test(4, 7), 1124.0 / 2048.0));
        // No discordant pair: no evidence either way.
        assert_eq!(sign_test(0, 0), 1.0);
        // n = 1: 2 * 1/2 = 1.
        assert_eq!(sign_test(1, 0), 1.0);
        // n = 6, min = 0: 2/64.
        assert!(close(sign_test(0, 6), 2.0 / 64.0));
        // n = 20, min = 5: (1 + 20 + 190 + 1140 + 4845 + 15504) / 2^20 = 21700/1048576.
        assert!(close(sign_test(15, 5), 2.0 * 21700.0 / 1_048_576.0));
    }

    #[test]
    fn large_n_matches_exact_integer_arithmetic() {
        // Computed with Python's exact integers:
        // 2 * sum(comb(100, i) for i in range(41)) / 2**100
        assert!((sign_test(60, 40) - 0.056_887_933_640_980_79).abs() < 1e-12);
        // 2 * sum(comb(1000, i) for i in range(471)) / 2**1000
        assert!((sign_test(530, 470) - 0.062_023_195_098_363_18).abs() < 1e-12);
    }

    #[test]
    fn cdf_edges() {
        assert_eq!(binomial_half_cdf(5, 5), 1.0);
        assert!(close(binomial_half_cdf(4, 0), 1.0 / 16.0));
        assert!(close(binomial_half_cdf(4, 2), 11.0 / 16.0));
    }
}
