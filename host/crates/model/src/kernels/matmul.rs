//! Row-major f32 matmuls on `gemm`, written straight into their output buffer.
//!
//! [`matmul_wt`] is the product every projection makes, `x @ w^T` with `w` stored (out, in). gemm
//! lays its microkernel tile along the output's contiguous axis, so for a row-major output it
//! packs `w`, the large operand, on every call: 17 % of a 128-token SmolLM2 prefill. Computing
//! `y^T = w @ x^T` instead reads `w` in place and packs only `x`; transposing the small result
//! back costs a fraction of what the packing did. Measured on the SmolLM2-135M shapes at 128 rows
//! (2 threads, AVX-512 gemm kernels): 1.2-1.7x faster per projection than the packing product.

use rayon::prelude::*;

/// Fewest rows for which [`matmul_wt`] takes the transposed product. Below it gemm packs little
/// (or runs on one thread), and the transpose would be most of the gain.
pub const WT_MIN_ROWS: usize = 16;

/// gemm's threads: rayon's pool when it has more than one thread.
fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        t if t > 1 => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    }
}

/// `dst (m, n) = alpha_dst * dst + scale * op(lhs) @ op(rhs)`, all row-major. `lhs` holds (m, k)
/// or, when `lhs_t`, (k, m); `rhs` holds (k, n) or, when `rhs_t`, (n, k). `accumulate` keeps
/// `dst`'s contents (alpha 1) instead of overwriting them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    scale: f32,
) {
    let par = parallelism();
    sgemm_on(par, m, n, k, dst, accumulate, lhs, lhs_t, rhs, rhs_t, scale)
}

/// [`sgemm`] on the calling thread, for products that are themselves one of many parallel jobs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    scale: f32,
) {
    let par = gemm::Parallelism::None;
    sgemm_on(par, m, n, k, dst, accumulate, lhs, lhs_t, rhs, rhs_t, scale)
}

#[allow(clippy::too_many_arguments)]
fn sgemm_on(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    scale: f32,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    let (lhs_rs, lhs_cs) = if lhs_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rhs_rs, rhs_cs) = if rhs_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the asserted lengths cover every index the strides reach: lhs (m, k), rhs (k, n),
    // dst (m, n), each with the strides of its stored layout.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst (m, n) = [dst +] lhs (m, k) @ rhs (k, n)` where `lhs`'s rows lie `lhs_stride` apart (a
/// column block of a wider matrix) and `rhs` and `dst` are contiguous row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_stride: usize,
    rhs: &[f32],
) {
    assert!(dst.len() >= m * n && rhs.len() >= k * n && lhs_stride >= k);
    assert!(m == 0 || lhs.len() >= (m - 1) * lhs_stride + k);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let par = parallelism();
    // SAFETY: the asserts cover every index the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            lhs_stride as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `y (n, out) = [y +] x (n, k) @ w^T`, `w` stored (out, k): `w` is read in place (see the module
/// docs), and the result lands in `y` through a blocked transpose.
pub(crate) fn matmul_wt(
    n: usize,
    out: usize,
    k: usize,
    y: &mut [f32],
    accumulate: bool,
    x: &[f32],
    w: &[f32],
) {
    if n < WT_MIN_ROWS {
        sgemm(n, out, k, y, accumulate, x, false, w, true, 1.0);
        return;
    }
    assert!(y.len() >= n * out);
    let mut yt = vec![0f32; out * n];
    sgemm(out, n, k, &mut yt, false, w, false, x, true, 1.0);
    transpose_into(&yt, out, n, &mut y[..n * out], accumulate);
}

/// Side of the square tiles [`transpose_into`] moves: 16 x 16 f32 is a 1 KiB tile read as 16
/// cache lines and written as 16.
const TILE: usize = 16;

/// `dst (cols, rows) = [dst +] src (rows, cols)^T`, split over the rayon pool by bands of `TILE`
/// destination rows.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], add: bool) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    dst[..rows * cols]
        .par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, d)| {
            let c0 = band * TILE;
            let w = (cols - c0).min(TILE);
            let mut tile = [[0f32; TILE]; TILE];
            for r0 in (0..rows).step_by(TILE) {
                let h = (rows - r0).min(TILE);
                for (i, t) in tile.iter_mut().enumerate().take(h) {
                    t[..w].copy_from_slice(&src[(r0 + i) * cols + c0..][..w]);
                }
                for j in 0..w {
                    let out = &mut d[j * rows + r0..][..h];
                    if add {
                        for (i, o) in out.iter_mut().enumerate() {
                            *o += tile[i][j];
                        }
                    } else {
                        for (i, o) in out.iter_mut().enumerate() {
                            *o = tile[i][j];
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values with no pattern a wrong index could reproduce.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn reference(n: usize, out: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; n * out];
        for r in 0..n {
            for o in 0..out {
                y[r * out + o] = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum();
            }
        }
        y
    }

    #[test]
    fn matmul_wt_matches_the_definition_on_ragged_shapes() {
        // Row counts on both sides of WT_MIN_ROWS; sizes that are not multiples of the tile.
        for &(n, out, k) in &[
            (3, 5, 7),
            (16, 16, 16),
            (17, 33, 9),
            (40, 7, 130),
            (129, 70, 64),
        ] {
            let (x, w) = (values(n * k, 1), values(out * k, 2));
            let want = reference(n, out, k, &x, &w);
            let mut y = vec![f32::NAN; n * out];
            matmul_wt(n, out, k, &mut y, false, &x, &w);
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{n}x{out}x{k}: {a} vs {b}"
                );
            }
            let bias = values(n * out, 3);
            let mut y = bias.clone();
            matmul_wt(n, out, k, &mut y, true, &x, &w);
            for ((a, b), c) in y.iter().zip(&want).zip(&bias) {
                assert!(
                    (a - (b + c)).abs() <= 1e-4 * (1.0 + b.abs()),
                    "accumulate {n}x{out}x{k}"
                );
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_once() {
        for &(rows, cols) in &[(1, 1), (16, 16), (17, 3), (5, 40), (33, 47)] {
            let src = values(rows * cols, 4);
            let mut dst = vec![0f32; rows * cols];
            transpose_into(&src, rows, cols, &mut dst, false);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }
}
