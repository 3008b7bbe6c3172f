//! Ops the training path needs that candle does not provide with the right backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `x @ w^T` for a frozen `w`: the backward returns only the input gradient `g @ w`.
///
/// Plain `matmul` always computes the weight gradient as well, one wasted weight-sized matmul per
/// frozen projection in a LoRA step (about 25 % of a step, see notes/candle.md).
struct FrozenMatmul {
    /// (out, in), detached from any graph.
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        let data = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("frozen-matmul: only f32 on cpu"),
        };
        let x = match layout.contiguous_offsets() {
            Some((a, b)) => Tensor::from_slice(&data[a..b], (n, k), &candle_core::Device::Cpu)?,
            None => candle_core::bail!("frozen-matmul: input must be contiguous"),
        };
        let y = x.matmul(&self.w.t()?)?;
        let out = y.dim(1)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(v), Shape::from((n, out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// `x @ w^T` (x 2-D) without a weight gradient. Off CPU (no custom kernel), falls back to a
/// plain matmul against the detached weight: correct, just not the saving.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(FrozenMatmul { w: w.detach() })
    } else {
        x.matmul(&w.detach().t()?)
    }
}
