//! The machine's memory read rate: the ceiling of every weight-streaming product.
//!
//! A batch-1 decode step reads every weight once and does two flops per weight read, so its
//! tokens/s cannot exceed `read rate / weight bytes`. `malt bench generate` measures this rate in
//! the same run as its decode figures and states each as a fraction of that ceiling: a
//! comparison with another engine then says how much room either side had left.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes each worker reads per chunk: large enough that one task's overhead is noise, small
/// enough that both workers stay busy to the end.
const CHUNK: usize = 4 << 20;

/// Read rate in bytes/s over a buffer of `bytes` (rounded up to whole chunks), summed by every
/// thread of the pool: the median of `repeats` passes, after one pass that faults the pages in.
///
/// The buffer should be several times the last-level cache (the model's weights are), or the
/// figure is the cache's rate.
pub fn read_rate(bytes: usize, repeats: usize) -> f64 {
    let words = bytes.div_ceil(CHUNK).max(1) * CHUNK / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let pass = || {
        let t = Instant::now();
        let sum: u64 = buf
            .par_chunks(CHUNK / 8)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        secs
    };
    crate::process::on_pool(|| {
        pass();
        let mut secs: Vec<f64> = (0..repeats.max(1)).map(|_| pass()).collect();
        secs.sort_by(f64::total_cmp);
        (words * 8) as f64 / secs[secs.len() / 2]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_finite_and_positive() {
        // 8 MB is cache-sized: this checks the arithmetic, not the machine.
        let r = read_rate(8 << 20, 3);
        assert!(r.is_finite() && r > 1e8, "{r}");
    }
}
