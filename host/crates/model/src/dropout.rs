//! LoRA dropout with seeded masks: candle's own dropout draws from an unseedable RNG, and a
//! resumed training run must repeat an uninterrupted one exactly.
//!
//! The mask is drawn where the activations live: on the CPU by [`mask_value`] in a loop, on a
//! CUDA GPU by `cuda/dropout.cu`, which computes the same function of (stream, element index),
//! so both devices give bit-identical masks for one seed (no mask is built on the host and
//! copied per projection). Other devices (Metal) build it on the CPU and copy it, logged once.

use crate::error::Result;
use crate::lora::Proj;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use malt_base::mix::{finalize, GAMMA};

/// Inverted dropout with a mask from splitmix64 seeded by (seed, layer, projection): the same
/// micro-batch seed gives the same masks whatever ran before. `x` and the result are f32 (the
/// LoRA branch's dtype).
pub(crate) fn seeded_dropout(
    x: &Tensor,
    p: f32,
    seed: u64,
    layer: usize,
    proj: Proj,
) -> Result<Tensor> {
    let mask = dropout_mask(x, p, seed, layer, proj)?;
    Ok(x.mul(&mask)?)
}

/// The mask of [`seeded_dropout`] for an input like `like` (its shape, on its device), f32:
/// `1 / (1 - p)` where kept, 0 where dropped.
pub(crate) fn dropout_mask(
    like: &Tensor,
    p: f32,
    seed: u64,
    layer: usize,
    proj: Proj,
) -> Result<Tensor> {
    let op = DropoutMask::new(p, stream_base(seed, layer, proj));
    let like = like.detach();
    if like.device().is_cpu() || like.device().is_cuda() {
        return Ok(like.apply_op1_no_bwd(&op)?);
    }
    crate::kernels::composed::warn_once(
        "lora-dropout-mask (drawn on the cpu and copied)",
        like.device(),
    );
    let cpu = Tensor::zeros((), candle_core::DType::U8, &candle_core::Device::Cpu)?
        .broadcast_as(like.shape())?;
    Ok(cpu.apply_op1_no_bwd(&op)?.to_device(like.device())?)
}

/// The splitmix64 state a (seed, layer, projection) stream starts from.
pub(crate) fn stream_base(seed: u64, layer: usize, proj: Proj) -> u64 {
    seed ^ ((layer as u64) << 32) ^ ((proj as u64 + 1) << 56)
}

/// Element `i` of the mask of stream `base`: the (i + 1)-th splitmix64 output from `base`,
/// whose top 24 bits are a uniform in [0, 1) exactly representable in f32, kept below `keep`.
/// `cuda/dropout.cu` is this function with the finaliser written out (a test checks its
/// constants).
#[inline]
pub(crate) fn mask_value(base: u64, i: u64, keep: f32, scale: f32) -> f32 {
    let z = finalize(base.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)));
    let u = (z >> 40) as f32 / (1u64 << 24) as f32;
    if u < keep {
        scale
    } else {
        0.0
    }
}

/// Draws a mask shaped like its input (whose data it never reads) on the input's device. No
/// backward: the mask is a constant of the step. Reached only through [`dropout_mask`], which
/// sends it CPU and CUDA inputs only (the CPU twin is `cpu_fwd`, the GPU one `cuda_fwd`).
struct DropoutMask {
    base: u64,
    keep: f32,
    scale: f32,
}

impl DropoutMask {
    fn new(p: f32, base: u64) -> Self {
        let keep = 1.0 - p;
        DropoutMask {
            base,
            keep,
            scale: 1.0 / keep,
        }
    }
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "lora-dropout-mask"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.shape().elem_count() as u64;
        let mask = (0..n)
            .map(|i| mask_value(self.base, i, self.keep, self.scale))
            .collect();
        Ok((CpuStorage::F32(mask), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let n = l.shape().elem_count();
        let mask = crate::cuda::dropout_mask(&s.device, n, self.base, self.keep, self.scale)?;
        Ok((mask, l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The mask as this module drew it before the counter form: one sequential splitmix64
    /// stream. Resumed runs and recorded results depend on these exact masks.
    fn sequential_mask(n: usize, p: f32, seed: u64, layer: usize, proj: Proj) -> Vec<f32> {
        let mut state = seed ^ ((layer as u64) << 32) ^ ((proj as u64 + 1) << 56);
        let mut next = || malt_base::mix::splitmix64(&mut state);
        let keep = 1.0 - p;
        let scale = 1.0 / keep;
        (0..n)
            .map(|_| {
                let u = (next() >> 40) as f32 / (1u64 << 24) as f32;
                if u < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn counter_form_equals_the_sequential_stream_bit_for_bit() -> Result<()> {
        for (p, seed, layer, proj) in [
            (0.05, 0, 0, Proj::Q),
            (0.25, 7, 3, Proj::Down),
            (0.5, u64::MAX, 29, Proj::Gate),
        ] {
            let x = Tensor::zeros((37, 53), DType::F32, &Device::Cpu)?;
            let got = dropout_mask(&x, p, seed, layer, proj)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let want = sequential_mask(37 * 53, p, seed, layer, proj);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "p {p} seed {seed} layer {layer}");
        }
        Ok(())
    }

    /// The GPU kernel is a second copy of [`mask_value`]: its constants and shifts must stay
    /// those of the Rust function and of `malt_base::mix` (the GPU check then compares the masks
    /// themselves).
    #[test]
    fn cuda_kernel_uses_the_same_hash() {
        let cu: String = include_str!("../cuda/dropout.cu")
            .split_whitespace()
            .collect();
        for part in [
            "(i+1)*0x9E3779B97F4A7C15ull",
            "z=(z^(z>>30))*0xBF58476D1CE4E5B9ull",
            "z=(z^(z>>27))*0x94D049BB133111EBull",
            "z^=z>>31",
            "(float)(uint32_t)(z>>40)/16777216.0f",
            "out[i]=u<keep?scale:0.0f",
        ] {
            assert!(cu.contains(part), "cuda/dropout.cu lost `{part}`");
        }
        assert_eq!(GAMMA, 0x9E37_79B9_7F4A_7C15);
        assert_eq!(1u64 << 24, 16_777_216);
    }

    #[test]
    fn mask_ignores_the_input_values_and_layout() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (6, 10), &Device::Cpu)?;
        let a = dropout_mask(&x, 0.3, 11, 2, Proj::V)?;
        let t = Tensor::randn(0f32, 1.0, (10, 6), &Device::Cpu)?.t()?;
        let b = dropout_mask(&t, 0.3, 11, 2, Proj::V)?;
        assert_eq!(a.dims(), [6, 10]);
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn seeded_dropout_is_deterministic_inverted_and_drops_about_p() -> Result<()> {
        let x = Tensor::ones((64, 128), DType::F32, &Device::Cpu)?;
        let a = seeded_dropout(&x, 0.25, 7, 3, Proj::Q)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = seeded_dropout(&x, 0.25, 7, 3, Proj::Q)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = seeded_dropout(&x, 0.25, 7, 4, Proj::Q)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        assert_ne!(a, c, "another layer must get another mask");
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped fraction {dropped}");
        assert!(a
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        Ok(())
    }
}
