//! The large frozen weights in one allocation that asks the kernel for transparent huge pages.
//!
//! Every decode step streams all projection weights (540 MB for SmolLM2-135M in f32). With 4 KiB
//! pages that is a TLB miss every 4 KiB, and the hardware prefetchers stop at each page
//! boundary. Where THP is in `madvise` mode (the common default) only memory that asked for it
//! gets 2 MiB pages, and separately allocated tensors of 0.4-3.5 MB mostly cannot hold one; one
//! arena asked for before its first write can. Off Linux, or with THP off, this is a plain copy.

use candle_core::{DType, Result, Storage, Tensor, WithDType};

/// Moves `tensors` (CPU, all of one float dtype: f32, bf16 or f16) into one huge-page arena, in
/// order; each becomes a view of it with the same shape and values, and the arena (1-D) is
/// returned. Tensors on another device or of another dtype than the first packable one are left
/// alone. Each original is released as soon as it is copied, so the peak is the arena plus one
/// tensor.
pub(crate) fn pack(tensors: &mut [&mut Tensor]) -> Result<Option<Tensor>> {
    let Some(dtype) = tensors
        .iter()
        .find(|t| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16))
        .map(|t| t.dtype())
    else {
        return Ok(None);
    };
    match dtype {
        DType::BF16 => pack_as::<half::bf16>(tensors),
        DType::F16 => pack_as::<half::f16>(tensors),
        _ => pack_as::<f32>(tensors),
    }
}

fn pack_as<T: WithDType>(tensors: &mut [&mut Tensor]) -> Result<Option<Tensor>> {
    let packable = |t: &Tensor| t.device().is_cpu() && t.dtype() == T::DTYPE;
    let total: usize = tensors
        .iter()
        .filter(|t| packable(t))
        .map(|t| t.elem_count())
        .sum();
    if total == 0 {
        return Ok(None);
    }
    let mut data: Vec<T> = Vec::with_capacity(total);
    advise_huge_pages(data.as_mut_ptr().cast(), total * std::mem::size_of::<T>());
    let mut spans = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter_mut().enumerate() {
        if !packable(t) {
            continue;
        }
        spans.push((i, data.len(), t.shape().clone()));
        append(&mut data, t)?;
        // Release the original now; a view of the arena takes its place below.
        **t = Tensor::zeros((), T::DTYPE, t.device())?;
    }
    let arena = Tensor::from_vec(data, total, &candle_core::Device::Cpu)?;
    for (i, start, shape) in spans {
        *tensors[i] = arena.narrow(0, start, shape.elem_count())?.reshape(shape)?;
    }
    Ok(Some(arena))
}

/// Appends `t`'s values to `data`, straight from its storage when it is contiguous.
fn append<T: WithDType>(data: &mut Vec<T>, t: &Tensor) -> Result<()> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            data.extend_from_slice(&T::cpu_storage_as_slice(cpu)?[a..b]);
            return Ok(());
        }
    }
    data.extend(t.flatten_all()?.to_vec1::<T>()?);
    Ok(())
}

/// `madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned part of `[ptr, ptr + len)`; a no-op elsewhere
/// and when the kernel refuses (THP disabled).
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        const MADV_HUGEPAGE: i32 = 14;
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside an allocation this process owns and has not yet
            // written; MADV_HUGEPAGE only changes how its future page faults are served.
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// One (total rows, cols) view of `arena` covering `ws` when they lie back to back in it, in
/// order, with the same column count; None otherwise.
pub(crate) fn adjacent_rows(arena: &Tensor, ws: [&Tensor; 3]) -> Result<Option<Tensor>> {
    // The address of a CPU tensor's whole storage: views of one arena share it.
    let storage = |t: &Tensor| match &*t.storage_and_layout().0 {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => Some(v.as_ptr() as usize),
        Storage::Cpu(candle_core::CpuStorage::BF16(v)) => Some(v.as_ptr() as usize),
        Storage::Cpu(candle_core::CpuStorage::F16(v)) => Some(v.as_ptr() as usize),
        _ => None,
    };
    let first = ws[0].layout().start_offset();
    let cols = ws[0].dim(1)?;
    let mut end = first;
    let mut rows = 0;
    for w in ws {
        let in_arena = storage(w).is_some() && storage(w) == storage(arena);
        if !in_arena || w.layout().start_offset() != end || w.dim(1)? != cols || !w.is_contiguous()
        {
            return Ok(None);
        }
        end += w.elem_count();
        rows += w.dim(0)?;
    }
    Ok(Some(
        arena.narrow(0, first, end - first)?.reshape((rows, cols))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn packed_tensors_keep_shapes_and_values() {
        let a = Tensor::randn(0f32, 1.0, (3, 5), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (7,), &Device::Cpu).unwrap();
        let c = Tensor::ones((2, 2), DType::U32, &Device::Cpu).unwrap();
        let (mut pa, mut pb, mut pc) = (a.clone(), b.clone(), c.clone());
        pack(&mut [&mut pa, &mut pb, &mut pc]).unwrap();
        for (orig, packed) in [(&a, &pa), (&b, &pb)] {
            assert_eq!(orig.dims(), packed.dims());
            assert!(packed.is_contiguous());
            assert_eq!(
                orig.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                packed.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert_eq!(pc.dtype(), DType::U32);
        // Views of one storage: the second starts after the first.
        let (_, la) = pa.storage_and_layout();
        let (_, lb) = pb.storage_and_layout();
        assert_eq!(la.start_offset(), 0);
        assert_eq!(lb.start_offset(), 15);
    }
}
