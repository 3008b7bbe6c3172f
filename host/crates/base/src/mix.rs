//! splitmix64 (Steele, Lea & Flood 2014; the seeder of xoshiro): a Weyl sequence with step
//! [`GAMMA`] passed through a bijective 64-bit finaliser.
//!
//! Fixed here rather than taken from `rand` so that nothing derived from it changes with a
//! dependency upgrade: sampling seeds, question splits, evaluation subsets and dropout masks
//! are recorded in run directories and reports that must reproduce bit for bit.
//!
//! Three entry points, one finaliser:
//! - [`finalize`]: the finaliser alone, for callers that combine their inputs themselves;
//! - [`mix`]: the first splitmix64 output of the state `z` (finaliser of `z + GAMMA`), the
//!   one-call hash of a seed;
//! - [`splitmix64`]: the stateful generator.

/// splitmix64's increment: 2^64 divided by the golden ratio, odd.
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser (Stafford's variant 13): a bijection of `u64` in which every input
/// bit affects every output bit.
// `#[inline]` so that hot loops (dropout masks, per-byte hashes) of crates built with
// optimisation get it inlined whatever this crate's own profile is.
#[inline]
pub fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first output of splitmix64 seeded with `z`: nearby seeds give unrelated values.
#[inline]
pub fn mix(z: u64) -> u64 {
    finalize(z.wrapping_add(GAMMA))
}

/// The next output of the splitmix64 generator whose state is `state` (advanced).
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    finalize(*state)
}

/// Fisher-Yates over `items`, drawing from the splitmix64 generator started at `state`: the
/// same permutation on every platform and after every dependency upgrade.
pub fn shuffle<T>(items: &mut [T], mut state: u64) {
    for i in (1..items.len()).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of splitmix64 seeded with 0 (as in the public C implementation).
        let mut s = 0;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(s, GAMMA.wrapping_mul(2));
    }

    #[test]
    fn mix_is_one_generator_step() {
        for z in [0, 1, 42, GAMMA, u64::MAX] {
            let mut s = z;
            assert_eq!(mix(z), splitmix64(&mut s));
        }
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(finalize(0), 0);
        assert_eq!(finalize(GAMMA), 0xE220_A839_7B1D_CDAF);
    }
}
