//! Process-wide settings for tensor work: which thread pool candle's elementwise ops use, and how
//! glibc's allocator returns tensor memory.

/// Set (to `1`) when [`prefer_rayon_only`] chose `CANDLE_NUM_THREADS`, not the user.
pub const CANDLE_THREADS_DEFAULTED: &str = "MALT_CANDLE_THREADS_DEFAULTED";

/// Makes candle run its elementwise ops on the calling thread unless the user set
/// `CANDLE_NUM_THREADS`. Call first thing in `main`, before any thread exists.
///
/// candle 0.11 splits elementwise ops over its own spinning "barrier pool" besides the rayon pool
/// that runs gemm (and malt's fused ops): on a 2-core machine the two pools take turns on the
/// same cores, and the caller spins in `BarrierGuard::drop` while the pool worker waits to be
/// scheduled. Profiled on a SmolLM2-135M SFT step that was a quarter of the main thread's samples;
/// with the pool off the step went from 3.0-4.2 s to 1.85-2.0 s (same run, loaded machine), and
/// decode/prefill speeds did not change measurably.
pub fn prefer_rayon_only() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
        // Lets a benchmark give its plain-candle baseline candle's own default back.
        std::env::set_var(CANDLE_THREADS_DEFAULTED, "1");
    }
}

/// While alive, keeps freed tensor memory in the heap for the next tensor instead of returning
/// it to the OS; dropping it restores glibc's defaults and trims the heap.
///
/// glibc serves large blocks with fresh `mmap`s and trims the heap top past its trim threshold,
/// so every large activation or gradient of a training step was re-faulted and re-zeroed by the
/// kernel (page faults and `clear_page` were ~20 % of an 8 x 256 SFT step's samples). With mmap
/// off for the heap and automatic trim off, that step went from 10.1-10.5 s to 9.4-9.8 s at the
/// same peak RSS. Only training holds it: a training step allocates the same shapes every step,
/// whereas decoding allocates ever longer key/value tensors, which fragment an mmap-less heap.
/// No-op off glibc.
///
/// Outside training, [`return_large_blocks`] should hold instead.
#[must_use = "the setting lasts while the guard lives"]
pub struct KeepFreedMemory(());

pub fn keep_freed_memory() -> KeepFreedMemory {
    set_malloc_options(0, i32::MAX);
    KeepFreedMemory(())
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        // glibc's defaults: 65536 mmaps, 128 KiB trim threshold.
        set_malloc_options(65536, 128 * 1024);
        release_freed_memory();
    }
}

/// Serve every block of 256 KiB or more with its own `mmap`, returned to the OS when freed.
///
/// glibc raises that threshold as large blocks are freed (up to 32 MiB), after which tensors
/// come from the heap. Decoding allocates ever longer key/value tensors (a batch of 30 sequences
/// makes ~14 MiB per layer and step) that a heap cannot reuse, and an evaluation grew from 1.6 to
/// over 20 GB resident that way; with the threshold fixed it stayed at 1-1.5 GB between
/// batches. Call once at start-up, before threads exist. No-op off glibc.
pub fn return_large_blocks() {
    const M_MMAP_THRESHOLD: i32 = -3;
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
}

fn set_malloc_options(mmap_max: i32, trim_threshold: i32) {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_MAX: i32 = -4;
    mallopt(M_MMAP_MAX, mmap_max);
    mallopt(M_TRIM_THRESHOLD, trim_threshold);
}

/// glibc's `mallopt(param, value)`; a no-op elsewhere.
fn mallopt(param: i32, value: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        // SAFETY: mallopt only changes allocator parameters, under glibc's own arena locks.
        unsafe {
            mallopt(param, value);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (param, value);
}

/// Returns free heap memory to the OS (`malloc_trim(0)`; no-op off glibc).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim only returns free heap pages to the OS; no pointer is touched.
        unsafe {
            malloc_trim(0);
        }
    }
}
