//! malt's own CUDA kernels (built only with the `cuda` feature): PTX compiled from `cuda/*.cu`
//! by build.rs, loaded once per device through candle's module cache.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Result};

const DROPOUT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Blocks at most: the kernels loop over the rest (grid-stride), so any length fits.
const MAX_BLOCKS: u32 = 65_535;

/// A launch covering `n` elements, grid-stride beyond `MAX_BLOCKS * THREADS`.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The LoRA dropout mask of `n` elements of stream `base` (see `crate::dropout::mask_value`,
/// which this computes bit for bit), f32 on `dev`.
pub(crate) fn dropout_mask(
    dev: &CudaDevice,
    n: usize,
    base: u64,
    keep: f32,
    scale: f32,
) -> Result<CudaStorage> {
    let func = dev.get_or_load_custom_func("malt_dropout_mask_f32", "malt_dropout", DROPOUT_PTX)?;
    // SAFETY: the kernel writes every one of the n elements before anything reads them.
    let mut out = unsafe { dev.alloc::<f32>(n)? };
    let n64 = n as u64;
    {
        let mut launch = func.builder();
        launch.arg(&mut out);
        launch.arg(&n64);
        launch.arg(&base);
        launch.arg(&keep);
        launch.arg(&scale);
        // SAFETY: the arguments match the kernel's signature (float*, u64, u64, float, float).
        unsafe { launch.launch(elementwise(n)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
