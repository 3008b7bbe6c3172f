//! Seeded, reproducible choice of the evaluated questions.
//!
//! PRNG: splitmix64 (`malt_base::mix`), fixed rather than taken from `rand` so that subsets
//! never change with a dependency upgrade. Subset: a partial Fisher-Yates shuffle of `0..pool`
//! seeded with the evaluation seed, first `count` positions, sorted ascending. Because the shuffle proceeds position by position, the subset of `m`
//! questions is contained in the subset of `n > m` questions for the same seed and pool.

use malt_base::mix::{finalize, splitmix64, GAMMA};

use crate::error::EvalError;

/// splitmix64: one 64-bit state, additive Weyl sequence plus a finaliser.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in `0..n` without modulo bias (rejection of the low `2^64 mod n` values).
    /// `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let r = self.next_u64();
            if r >= threshold {
                return r % n;
            }
        }
    }
}

/// `count` distinct indices in `0..pool`, sorted, determined by `seed` (see module doc).
///
/// Asking for more questions than the pool holds is an error rather than a silent clamp: a
/// clamped "100-question" evaluation would make seeds differ only by sampling noise and the
/// reported std would mean something else.
pub fn select_subset(pool: usize, count: usize, seed: u64) -> Result<Vec<usize>, EvalError> {
    if count > pool {
        return Err(EvalError::SubsetTooLarge {
            requested: count,
            pool,
        });
    }
    let mut rng = SplitMix64::new(seed);
    let mut idx: Vec<usize> = (0..pool).collect();
    for i in 0..count {
        let j = i + rng.below((pool - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(count);
    idx.sort_unstable();
    Ok(idx)
}

/// Sampler seed for one attempt: a hash of (eval seed, example, attempt). Attempts of one
/// question get distinct, reproducible streams whatever order they run in (resume-safe).
pub fn derive_sample_seed(eval_seed: u64, example_idx: usize, attempt: u32) -> u64 {
    // The bare finaliser (not `mix`, which adds GAMMA first): recorded seeds depend on it.
    let a = finalize(eval_seed ^ 0x6D61_6C74_6576_616C); // "maltevall"-ish domain tag
    let b = finalize(a ^ example_idx as u64);
    finalize(b ^ u64::from(attempt).wrapping_mul(GAMMA))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn too_large_is_an_error() {
        assert!(matches!(
            select_subset(5, 6, 1),
            Err(EvalError::SubsetTooLarge {
                requested: 6,
                pool: 5
            })
        ));
        assert_eq!(select_subset(5, 5, 1).ok(), Some(vec![0, 1, 2, 3, 4]));
        assert_eq!(select_subset(0, 0, 1).ok(), Some(vec![]));
    }

    #[test]
    fn different_seeds_differ() {
        let a = select_subset(1000, 100, 1).ok();
        let b = select_subset(1000, 100, 2).ok();
        assert_ne!(a, b);
    }

    #[test]
    fn sample_seeds_differ_per_attempt() {
        let s: Vec<u64> = (0..3).map(|a| derive_sample_seed(7, 11, a)).collect();
        assert_ne!(s[0], s[1]);
        assert_ne!(s[1], s[2]);
        assert_eq!(derive_sample_seed(7, 11, 1), s[1]);
    }

    proptest! {
        #[test]
        fn subset_is_deterministic_distinct_sorted_in_range(
            pool in 0usize..500, frac in 0.0f64..=1.0, seed: u64
        ) {
            let count = ((pool as f64) * frac) as usize;
            let a = select_subset(pool, count, seed).expect("count <= pool");
            let b = select_subset(pool, count, seed).expect("count <= pool");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.len(), count);
            prop_assert!(a.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(a.iter().all(|&i| i < pool));
        }

        #[test]
        fn smaller_subsets_are_nested(pool in 1usize..300, seed: u64, m in 0usize..300) {
            let m = m % (pool + 1);
            let big = select_subset(pool, pool, seed).expect("full");
            let small = select_subset(pool, m, seed).expect("m <= pool");
            let half = select_subset(pool, pool.div_ceil(2).max(m), seed).expect("fits");
            prop_assert!(small.iter().all(|i| half.contains(i)));
            prop_assert!(half.iter().all(|i| big.contains(i)));
        }
    }
}
