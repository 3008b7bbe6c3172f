//! The decoder's per-mode choice of op: `Mode::Infer` takes candle's fused kernels (no backward)
//! and the small-batch matmul; `Mode::Train` takes `crate::fused`'s differentiable CPU ops on f32,
//! else candle's composed ops, so every gradient reaches the LoRA variables.

use crate::decoder::Mode;
use crate::error::Result;
use crate::fused;
use crate::small_matmul::small_matmul;
use candle_core::{DType, Tensor, D};

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

pub(crate) fn fused_train(x: &Tensor, mode: Mode) -> bool {
    matches!(mode, Mode::Train { .. }) && x.device().is_cpu() && x.dtype() == DType::F32
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
        Mode::Train { .. } if fused_train(x, mode) => fused::rms_norm(x, w, eps)?,
        Mode::Train { .. } => candle_nn::ops::rms_norm_slow(x, w, eps as f32)?,
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

pub(crate) fn softmax(x: &Tensor, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Infer => candle_nn::ops::softmax_last_dim(&x.contiguous()?)?,
        Mode::Train { .. } => candle_nn::ops::softmax(x, D::Minus1)?,
    })
}
