//! The decoder's per-mode choice of op: `Mode::Infer` takes candle's fused kernels (no backward)
//! and the small-batch matmul; `Mode::Train` takes `crate::kernels::fused`'s differentiable CPU ops on f32,
//! else candle's composed ops, so every gradient reaches the LoRA variables. Those composed
//! training graphs are slower than a fused kernel and say so once ([`crate::kernels::composed`]).

use crate::error::Result;
use crate::kernels::composed::warn_once;
use crate::kernels::fused;
use crate::kernels::small_matmul::small_matmul;
use candle_core::{DType, Tensor, D};

/// Which path the decoder takes over the same weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Fused kernels, no graph.
    Infer,
    /// Differentiable ops. `dropout_seed` applies LoRA dropout (training steps only) with masks
    /// drawn from a seeded generator, so a resumed run repeats an uninterrupted one exactly
    /// (candle's own dropout uses an unseedable RNG).
    Train { dropout_seed: Option<u64> },
}

/// `x` (..., in) as rows (n, in), with its original dims.
pub(crate) fn flatten_rows(x: &Tensor) -> Result<(Vec<usize>, Tensor)> {
    let dims = x.dims().to_vec();
    let inp = dims[dims.len() - 1];
    let n: usize = dims[..dims.len() - 1].iter().product();
    Ok((dims, x.reshape((n, inp))?))
}

/// `x @ w^T` by the small-batch kernel when inferring on few rows; None sends the caller to
/// [`frozen_matmul`], which serves every other case (and training) from one op.
pub(crate) fn infer_small(x: &Tensor, w: &Tensor, mode: Mode) -> Result<Option<Tensor>> {
    Ok(match mode {
        Mode::Infer => small_matmul(x, w)?,
        Mode::Train { .. } => None,
    })
}

/// Whether training takes `crate::kernels::fused`'s ops for activations like `x`: only CPU f32 ones, the
/// only input those ops accept. Every call of a fused op sits behind this test (or the same
/// test written out), which is what keeps them unreachable off the CPU.
pub(crate) fn fused_train(x: &Tensor, mode: Mode) -> bool {
    matches!(mode, Mode::Train { .. }) && x.device().is_cpu() && x.dtype() == DType::F32
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
        Mode::Train { .. } if fused_train(x, mode) => fused::rms_norm(x, w, eps)?,
        Mode::Train { .. } => {
            warn_once("rms-norm (training)", x.device());
            candle_nn::ops::rms_norm_slow(x, w, eps as f32)?
        }
    })
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// Non-interleaved (HF) RoPE on x (b, h, s, d).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Infer => Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?),
        Mode::Train { .. } if fused_train(x, mode) && cos.rank() == 2 => {
            Ok(fused::rope(x, cos, sin)?)
        }
        Mode::Train { .. } => {
            warn_once("rope (training)", x.device());
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
            let (cos, sin) = if cos.rank() == 2 {
                (
                    cos.unsqueeze(0)?.unsqueeze(0)?,
                    sin.unsqueeze(0)?.unsqueeze(0)?,
                )
            } else {
                (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
            };
            Ok((x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?)?)
        }
    }
}

/// Softmax over the last dimension of attention scores that already carry their mask. In
/// training it is candle's composed op, which has a backward; the caller says when a fused
/// training kernel would have applied (a causal forward from position 0), so that only then is
/// the slower path reported.
pub(crate) fn softmax(x: &Tensor, mode: Mode, fused_applies: bool) -> Result<Tensor> {
    Ok(match mode {
        Mode::Infer => candle_nn::ops::softmax_last_dim(&x.contiguous()?)?,
        Mode::Train { .. } => {
            if fused_applies {
                warn_once("causal-softmax (training attention)", x.device());
            }
            candle_nn::ops::softmax(x, D::Minus1)?
        }
    })
}

/// `silu(gate) * up`: the fused op on CPU f32 in both modes (one parallel pass, where candle's
/// silu and mul are two single-threaded ones: candle's own pool is off, see process.rs); else
/// candle's ops, whose training graph keeps both intermediates.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor, mode: Mode) -> Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == DType::F32 {
        return Ok(fused::swiglu(gate, up)?);
    }
    if matches!(mode, Mode::Train { .. }) {
        warn_once("swiglu (training)", gate.device());
    }
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::frozen_matmul;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fused_ops_refuse_inputs_they_have_no_kernel_for() {
        let bf = |shape: &[usize]| randn(shape, DType::BF16);
        let (x, w, w2) = (bf(&[2, 4]), bf(&[4]), bf(&[3, 4]));
        assert!(fused::rms_norm(&x, &w, 1e-5).is_err());
        assert!(fused::swiglu(&x, &x).is_err());
        let q = bf(&[1, 1, 2, 4]);
        assert!(fused::causal_attention(&q, &q, &q, 1.0, 2).is_err());
        assert!(fused::frozen_linear(&x, &w2).is_err());
        let (a, b) = (bf(&[2, 4]), bf(&[3, 2]));
        assert!(fused::lora_linear(&x, &w2, None, &a, &b, 1.0, None).is_err());
        let (cos, sin) = (bf(&[2, 2]), bf(&[2, 2]));
        assert!(fused::rope(&bf(&[1, 1, 2, 4]), &cos, &sin).is_err());
    }

    /// Activations the fused ops do not take (f64 here; bf16 or a GPU in use) run the composed
    /// training ops: the same values as the fused path, and a gradient for the input.
    #[test]
    fn training_without_fused_kernels_matches_the_fused_path() -> Result<()> {
        let mode = Mode::Train { dropout_seed: None };
        let (b, h, s, d) = (1, 2, 3, 8);
        let x32 = randn(&[b, h, s, d], DType::F32);
        let (w, wl) = (randn(&[d], DType::F32), randn(&[5, d], DType::F32));
        let (cos, sin) = (
            randn(&[s, d / 2], DType::F32),
            randn(&[s, d / 2], DType::F32),
        );
        let forward = |x: &Tensor| -> Result<Tensor> {
            let dt = x.dtype();
            let cast = |t: &Tensor| t.to_dtype(dt);
            let y = rms_norm(x, &cast(&w)?, 1e-5, mode)?;
            let y = rope(&y, &cast(&cos)?, &cast(&sin)?, mode)?;
            let y = swiglu(&y, &softmax(&y, mode, true)?, mode)?;
            Ok(frozen_matmul(&y.reshape((b * h * s, d))?, &cast(&wl)?)?)
        };
        let fused = forward(&x32)?;
        let x64 = Var::from_tensor(&x32.to_dtype(DType::F64)?)?;
        let composed = forward(x64.as_tensor())?;
        let diff = (fused - composed.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "fused and composed differ by {diff}");
        let grads = composed.sum_all()?.backward()?;
        let g = grads
            .get(x64.as_tensor())
            .expect("the input gets a gradient");
        assert!(g.abs()?.sum_all()?.to_scalar::<f64>()? > 0.0);
        Ok(())
    }
}
