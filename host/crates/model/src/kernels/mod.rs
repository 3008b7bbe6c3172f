//! The CPU kernels under the decoder, apart from it: matmuls straight into their output (f32 on
//! gemm, few-row decode products, bf16/f16 weights), the vector loops they share, the fused
//! training ops with hand-written backward passes, the frozen-weight matmul, fused causal attention
//! (prefill) and batched single-token attention, and the warning when an op falls back to composed candle ops. The
//! decoder ([`crate::decoder`], its per-mode op choice in [`crate::mode_ops`]) calls them; none
//! of them knows the decoder.

pub mod attention;
pub mod composed;
pub mod fused;
pub mod half_matmul;
pub(crate) mod matmul;
pub mod ops;
pub(crate) mod simd;
pub mod small_matmul;
pub mod stream;
