//! LoRA dropout with seeded masks: candle's own dropout draws from an unseedable RNG, and a
//! resumed training run must repeat an uninterrupted one exactly.

use crate::error::Result;
use crate::lora::Proj;
use candle_core::Tensor;

/// Inverted dropout with a mask from splitmix64 seeded by (seed, layer, projection): the same
/// micro-batch seed gives the same masks whatever ran before.
pub(crate) fn seeded_dropout(
    x: &Tensor,
    p: f32,
    seed: u64,
    layer: usize,
    proj: Proj,
) -> Result<Tensor> {
    let mask = dropout_mask(x.shape(), p, seed, layer, proj)?.to_device(x.device())?;
    Ok(x.mul(&mask)?)
}

/// The mask of [`seeded_dropout`]: `1 / (1 - p)` where kept, 0 where dropped.
pub(crate) fn dropout_mask(
    shape: &candle_core::Shape,
    p: f32,
    seed: u64,
    layer: usize,
    proj: Proj,
) -> Result<Tensor> {
    let mut state = seed ^ ((layer as u64) << 32) ^ ((proj as u64 + 1) << 56);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let keep = 1.0 - p;
    let scale = 1.0 / keep;
    let mask: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            // 24 random bits give a uniform in [0, 1) exactly representable in f32.
            let u = (next() >> 40) as f32 / (1u64 << 24) as f32;
            if u < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(
        mask,
        shape.clone(),
        &candle_core::Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_dropout_is_deterministic_inverted_and_drops_about_p() -> Result<()> {
        let x = Tensor::ones(
            (64, 128),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
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
