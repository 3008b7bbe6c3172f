//! The process allocator: jemalloc, with large zeroed blocks cleared by `memset`.
//!
//! jemalloc keeps freed memory for reuse. Tensors of 256 KiB and more were fresh `mmap`s from
//! glibc, and a page fault costs 1.5-2 us on these VMs (2.6 GB/s of first touches): a
//! 128-token prefill of SmolLM2-135M spent about a fifth of its time faulting in its temporaries.
//! Same binary, glibc then jemalloc, 10 prefills each, three alternations: 291-319 against
//! 373-414 tok/s. glibc's heap instead (no mmap threshold) reuses blocks too, but fragmented into
//! tens of GB on decoding's ever-longer key/value tensors.
//!
//! jemalloc answers a large `calloc` from a recycled block by purging its pages
//! (`madvise(MADV_DONTNEED)`), so the kernel faults in zeroed pages again on first touch. candle's
//! backward pass starts every gradient as `zeros_like` before adding into it, so a LoRA SFT step
//! of SmolLM2-135M at 8 x 256 tokens faulted about 4 million pages (16 GB) and spent as much
//! time in the kernel as in its own code. Clearing a recycled block in place writes at memory
//! speed instead (tens of GB/s).
//!
//! jemalloc's default also hands freed pages back over 10 s (`dirty_decay_ms`), a fraction at a
//! time from the moment they are freed: a training step that frees and reallocates its 4 GB of
//! activations every 5-10 s faulted half of them in again. The process keeps its freed pages
//! instead (`dirty_decay_ms:-1`; `_RJEM_MALLOC_CONF` overrides at run time), so its resident
//! size stays at its peak until the end of the decode batch, training phase or pipeline stage,
//! which hands them back ([`release_freed`], through `malt_model::process::release_freed`).
//! Measured on that step (`malt bench train
//! --batch-sizes 8 --phases sft --workload none`, 2-core AMD EPYC, quiet): 9.4-9.8 s a step with
//! neither change, 7.1-7.2 s with the decay off alone, 5.3-5.4 s with both (peak RSS 4.9 GB
//! then 5.7 GB, until the training attention stopped keeping its probabilities: 4.2 GB).

use std::alloc::{GlobalAlloc, Layout};
use tikv_jemallocator::Jemalloc;

/// From this size a zeroed allocation is a plain one cleared in place; below it jemalloc's own
/// `calloc` (small size classes come from already-touched slabs).
const CLEAR_IN_PLACE_FROM: usize = 64 * 1024;

/// jemalloc reads this before `main`; options documented in its `malloc.conf` manual.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Conf = Conf(c"dirty_decay_ms:-1".as_ptr());

#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: a pointer to a static C string, never written.
unsafe impl Sync for Conf {}

/// Purges every arena's freed pages (`arena.<MALLCTL_ARENAS_ALL>.purge`).
pub fn release_freed() {
    // SAFETY: a documented mallctl name, NUL-terminated; a purge reads and writes nothing.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!("jemalloc purge failed: {rc}");
    }
}

pub struct Allocator;

// SAFETY: every method forwards to jemalloc with the caller's layout; `alloc_zeroed` clears
// exactly the `layout.size()` bytes jemalloc just returned.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { Jemalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.size() < CLEAR_IN_PLACE_FROM {
                return Jemalloc.alloc_zeroed(layout);
            }
            let ptr = Jemalloc.alloc(layout);
            if !ptr.is_null() {
                ptr.write_bytes(0, layout.size());
            }
            ptr
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}
