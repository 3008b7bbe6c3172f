//! Paired comparisons between two systems evaluated on the same questions, and the correction
//! for testing many rows against one reference.
//!
//! **The unit is a distinct question.** Every seed draws its subset of the pool independently,
//! so with several seeds a question can be drawn more than once. Its repeats are not
//! independent evidence: they share the question's difficulty, and a system that always fails
//! it fails it in every seed. Counting each (seed, question) as its own pair, as format-2
//! reports did, makes `n` too large and p too small wherever subsets overlap. So the outcomes
//! of one question are pooled over the seeds that drew it: with `r` the number of those seeds
//! in which the reference is right and `o` the number in which the other row is right,
//! `d = r - o`; the question favours the reference when `d > 0`, the row when `d < 0`, and
//! carries no information either way at `d = 0`.
//!
//! **The test is the exact two-sided sign test on those questions** (McNemar's exact test
//! when every question is drawn once): under the null hypothesis that both systems are equally
//! good on every question, each question with `d != 0` favours either system with probability
//! 1/2. With `b` questions favouring one and `c` the other, `n = b + c`,
//! `p = min(1, 2 * P[X <= min(b, c)])` for `X ~ Binomial(n, 1/2)`; `p = 1` when `n = 0`. It is
//! what scipy's `binomtest(b, n, 0.5)` computes. Why not a paired bootstrap over questions:
//! the sign test is exact at any `n` (a bootstrap's coverage is poor for the few discordant
//! questions a small evaluation has), needs no resampling seed or count, so a report is
//! reproducible to the last digit and checkable by hand, and it is the test earlier reports
//! used whenever no question repeats (one seed, or disjoint subsets). What it gives up: a
//! question won in three seeds weighs as much as one won in one.
//!
//! **Holm's correction.** A report compares every other row with the reference, a dozen tests
//! at once; at a 5% level each, some would come out "significant" by chance alone. Holm's
//! step-down procedure ([`holm`]) adjusts the p-values so that rejecting every adjusted p
//! below alpha keeps the chance of any false rejection among all of them (the family-wise
//! error) at alpha, under any dependence between the tests (these are strongly dependent:
//! one reference, the same questions), and it rejects everything Bonferroni does and more.

use serde::{Deserialize, Serialize};

/// `ln(n!) - ln(sqrt(2 pi n) (n / e)^n)`: the error of Stirling's formula, for `n >= 1`.
fn stirling_error(n: f64) -> f64 {
    if n <= 15.0 {
        // Directly: n! is exact in f64 up to 22!, and the absolute error of the difference,
        // which is what the pmf's exponent sees, stays near 1e-15.
        let factorial: f64 = (2..=n as u64).map(|i| i as f64).product();
        return factorial.ln() - (n + 0.5) * n.ln() + n - 0.5 * std::f64::consts::TAU.ln();
    }
    // The asymptotic series 1/(12n) - 1/(360n^3) + 1/(1260n^5) - 1/(1680n^7) + 1/(1188n^9);
    // its next term is below 1e-16 from n = 16 on.
    let nn = n * n;
    let (s0, s1, s2, s3, s4) = (
        1.0 / 12.0,
        1.0 / 360.0,
        1.0 / 1260.0,
        1.0 / 1680.0,
        1.0 / 1188.0,
    );
    (s0 - (s1 - (s2 - (s3 - s4 / nn) / nn) / nn) / nn) / n
}

/// `x ln(x / m) + m - x`, the binomial deviance term, without the cancellation of that
/// formula when `x` is near `m`.
fn deviance(x: f64, m: f64) -> f64 {
    if (x - m).abs() < 0.1 * (x + m) {
        // With v = (x - m) / (x + m), ln(x / m) = 2 atanh(v), so the term is
        // (x - m) v + 2x (v^3/3 + v^5/5 + ...), every summand of one sign.
        let mut v = (x - m) / (x + m);
        let mut sum = (x - m) * v;
        let mut term = 2.0 * x * v;
        v *= v;
        for j in 1..1000 {
            term *= v;
            let next = sum + term / (2 * j + 1) as f64;
            if next == sum {
                break;
            }
            sum = next;
        }
        return sum;
    }
    x * (x / m).ln() + m - x
}

/// `P[X = x]` for `X ~ Binomial(n, 1/2)`, to a relative error near 1e-15 for any `n`: Loader's
/// saddle-point form ("Fast and accurate computation of binomial probabilities", 2000; R's
/// `dbinom`). Summing logs of binomial coefficients instead loses digits as `n` grows (1e-12
/// relative at n = 2100).
pub fn binomial_half_pmf(n: u64, x: u64) -> f64 {
    if x > n {
        return 0.0;
    }
    if x == 0 || x == n {
        // 2^-n is exact down to the smallest subnormal.
        return if n <= 1074 {
            0.5f64.powi(n as i32)
        } else {
            0.0
        };
    }
    let (n, x) = (n as f64, x as f64);
    let exponent = stirling_error(n)
        - stirling_error(x)
        - stirling_error(n - x)
        - deviance(x, n / 2.0)
        - deviance(n - x, n / 2.0);
    let log_scale = std::f64::consts::TAU.ln() + x.ln() + (-x / n).ln_1p();
    (exponent - 0.5 * log_scale).exp()
}

/// `sum(C(n, i) for i <= k)` in integers, when it and every step fit in a `u128` (up to
/// about n = 120).
fn exact_lower_sum(n: u64, k: u64) -> Option<u128> {
    let (mut c, mut sum) = (1u128, 1u128);
    for i in 0..k {
        c = c.checked_mul(u128::from(n - i))? / u128::from(i + 1);
        sum = sum.checked_add(c)?;
    }
    Some(sum)
}

/// `P[X <= k]` for `X ~ Binomial(n, 1/2)`.
pub fn binomial_half_cdf(n: u64, k: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    if n <= 1074 {
        if let Some(sum) = exact_lower_sum(n, k) {
            // One rounding (the sum to f64); the power of two scales exactly. Most evaluations
            // have fewer discordant questions than this covers, so their p is exact.
            return (sum as f64 * 0.5f64.powi(n as i32)).min(1.0);
        }
    }
    // P[X = k] times the sum of P[X = i] / P[X = k] for i <= k: the ratios follow
    // P[X = i - 1] = P[X = i] * i / (n - i + 1), all at most 1 for k <= n/2, and are summed
    // from the smallest up. They shrink geometrically, so the sum stops once they no longer
    // change it.
    let mut ratios = vec![1.0f64];
    let mut r = 1.0f64;
    for i in (1..=k).rev() {
        r *= i as f64 / (n - i + 1) as f64;
        if r < 1e-17 * ratios.len() as f64 {
            break;
        }
        ratios.push(r);
    }
    let sum: f64 = ratios.iter().rev().sum();
    (binomial_half_pmf(n, k) * sum).min(1.0)
}

/// The two-sided exact sign test on `b` and `c` questions favouring either side (see the module
/// doc).
pub fn sign_test(b: u64, c: u64) -> f64 {
    let n = b + c;
    // The smaller count at or above the middle: the two tails cover everything (exactly 1,
    // not a sum of rounded terms).
    if 2 * b.min(c) + 1 >= n {
        return 1.0;
    }
    (2.0 * binomial_half_cdf(n, b.min(c))).min(1.0)
}

/// One row against the reference over distinct questions (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionTest {
    /// Distinct questions answered by both (the pool indices drawn by at least one seed).
    pub questions: usize,
    /// Questions the reference gets right in more of the seeds that drew them than the row /
    /// in fewer.
    pub reference_wins: usize,
    pub row_wins: usize,
    /// Two-sided exact sign test on the wins.
    pub p: f64,
    /// `p` after Holm's correction over every row compared with the same reference.
    pub holm_p: f64,
}

/// The test of one row against the reference from `(question, reference right, row right)`,
/// one item per (seed, question) pair; items of the same question are pooled. `holm_p` is
/// `p` until [`holm`] is applied over the family.
pub fn question_test(pairs: impl IntoIterator<Item = (usize, bool, bool)>) -> QuestionTest {
    // question -> reference right minus row right, over the seeds that drew it.
    let mut d: std::collections::BTreeMap<usize, i64> = Default::default();
    for (question, reference, row) in pairs {
        *d.entry(question).or_default() += i64::from(reference) - i64::from(row);
    }
    let reference_wins = d.values().filter(|&&x| x > 0).count();
    let row_wins = d.values().filter(|&&x| x < 0).count();
    let p = sign_test(reference_wins as u64, row_wins as u64);
    QuestionTest {
        questions: d.len(),
        reference_wins,
        row_wins,
        p,
        holm_p: p,
    }
}

/// Holm's step-down adjustment of the p-values of one family of tests, in their order: sorted
/// ascending, the `i`-th smallest (from 0) becomes `(m - i) * p`, never less than the one
/// before it (so the adjusted values keep the order of the raw ones), capped at 1. The same as
/// statsmodels' `multipletests(p, method="holm")[1]`.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut floor = 0.0f64;
    for (i, &at) in order.iter().enumerate() {
        floor = floor.max(((m - i) as f64 * p[at]).min(1.0));
        adjusted[at] = floor;
    }
    adjusted
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
        // 2 * sum(comb(2100, i) for i in range(1001)) / 2**2100, to 1e-13 relative (summing
        // the logs of binomial coefficients gave 1e-12 here).
        let p = sign_test(1000, 1100);
        assert!((p - 0.030_720_707_864_242_296).abs() < 1e-13 * p);
    }

    #[test]
    fn pmf_matches_exact_fractions() {
        // C(10, 3) / 1024 = 120 / 1024; C(20, 10) / 2^20 = 184756 / 1048576; the edges 2^-n.
        assert!(close(binomial_half_pmf(10, 3), 120.0 / 1024.0));
        assert!(close(binomial_half_pmf(20, 10), 184_756.0 / 1_048_576.0));
        assert!(close(binomial_half_pmf(16, 1), 16.0 / 65_536.0));
        assert_eq!(binomial_half_pmf(7, 0), 1.0 / 128.0);
        assert_eq!(binomial_half_pmf(7, 7), 1.0 / 128.0);
        assert_eq!(binomial_half_pmf(7, 8), 0.0);
        // Every pmf of n = 40 sums to 1.
        let total: f64 = (0..=40).map(|x| binomial_half_pmf(40, x)).sum();
        assert!((total - 1.0).abs() < 1e-14);
    }

    #[test]
    fn exact_and_saddle_point_paths_agree() {
        // Where integers still cover n, the saddle-point pmf summed the same way gives the
        // same tail to 1e-14: the two paths meet without a jump.
        for (n, k) in [(40, 12), (100, 37), (120, 50), (64, 31)] {
            let exact = binomial_half_cdf(n, k);
            let pmf_sum: f64 = (0..=k).map(|i| binomial_half_pmf(n, i)).sum();
            assert!((exact - pmf_sum).abs() < 1e-14 * exact, "n = {n}, k = {k}");
        }
        assert!(
            exact_lower_sum(200, 90).is_none(),
            "beyond u128: the saddle point"
        );
    }

    #[test]
    fn cdf_edges() {
        assert_eq!(binomial_half_cdf(5, 5), 1.0);
        assert!(close(binomial_half_cdf(4, 0), 1.0 / 16.0));
        assert!(close(binomial_half_cdf(4, 2), 11.0 / 16.0));
    }

    #[test]
    fn a_question_drawn_by_several_seeds_counts_once() {
        // Question 7 is in two seeds and the reference wins it in both: one win, not two.
        // Question 3: reference right in seed 0, the row in seed 1: d = 0, no information.
        // Question 5: only the row right, once. Question 9: both right.
        let pairs = [
            (7, true, false),
            (3, true, false),
            (5, false, true),
            (9, true, true),
            (7, true, false),
            (3, false, true),
        ];
        let t = question_test(pairs);
        // Counted per pair it would be 3 against 2 over 6 pairs.
        assert_eq!((t.questions, t.reference_wins, t.row_wins), (4, 1, 1));
        assert_eq!(t.p, 1.0);
        // Six questions, one won by the reference in three seeds and lost in one: d = 2 > 0.
        let mut pairs = vec![(1, true, false), (1, true, false), (1, true, false)];
        pairs.push((1, false, true));
        for q in 2..7 {
            pairs.push((q, true, false));
        }
        let t = question_test(pairs);
        assert_eq!((t.questions, t.reference_wins, t.row_wins), (6, 6, 0));
        // n = 6, min = 0: 2 / 64, where the per-pair count (8 against 1) would give
        // 2 * (1 + 9) / 512 = 20 / 512.
        assert!(close(t.p, 2.0 / 64.0));
        assert_eq!(t.holm_p, t.p);
    }

    #[test]
    fn holm_hand_computed() {
        // Sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1 = 0.5).
        let adj = holm(&[0.03, 0.5, 0.01, 0.02]);
        let want = [0.06, 0.5, 0.04, 0.06];
        for (a, w) in adj.iter().zip(want) {
            assert!(close(*a, w), "{adj:?}");
        }
        // Monotone: sorted 0.04 (x3 = 0.12), 0.05 (x2 = 0.10, raised to the 0.12 before it),
        // 0.9 (x1 = 0.9).
        let adj = holm(&[0.05, 0.04, 0.9]);
        let want = [0.12, 0.12, 0.9];
        for (a, w) in adj.iter().zip(want) {
            assert!(close(*a, w), "{adj:?}");
        }
        assert_eq!(holm(&[0.4, 0.6]), vec![0.8, 0.8]);
        assert_eq!(holm(&[0.7, 0.6]), vec![1.0, 1.0]);
        // Ties: both get the larger multiplier's value.
        assert_eq!(holm(&[0.1, 0.1]), vec![0.2, 0.2]);
        assert_eq!(holm(&[0.3]), vec![0.3]);
        assert!(holm(&[]).is_empty());
    }
}
