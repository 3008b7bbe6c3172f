//! Process-wide settings for tensor work: which thread pool candle's elementwise ops use. (How
//! tensor memory is reused is the allocator's business: the `malt` binary uses jemalloc, set up
//! in its `alloc.rs`.)

/// How the process hands the freed pages its allocator keeps back to the OS, when the binary's
/// allocator keeps them (the `malt` binary's does: reusing them is what keeps a training step
/// from faulting its activations in again).
static RELEASE_FREED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers [`release_freed`]'s action; the binary calls it once, first thing in `main`.
pub fn set_release_freed(f: fn()) {
    let _ = RELEASE_FREED.set(f);
}

/// Hands freed pages back to the OS where the allocator keeps them. Called where one piece of
/// work ends and the next allocates in other sizes (a pipeline stage, a training phase), so
/// what one kept does not add to the next one's peak; a no-op where nothing was registered.
pub fn release_freed() {
    if let Some(f) = RELEASE_FREED.get() {
        f();
    }
}

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

/// Runs `f` on a thread of rayon's global pool and waits for it.
///
/// A decode step dispatches about 120 small parallel matmuls. Called from outside the pool, each
/// one hands its jobs to the pool and puts the caller to sleep until they finish, so every
/// dispatch paid a wake-up of the caller besides the worker's; run from a pool thread, the caller
/// works on its own jobs and the other worker steals. Same binary, alternating, 15 runs each:
/// batch-9 decode 222 -> 238 tok/s, batch 1 41.9 -> 44.9 (medians); prefill of 128 tokens, 20
/// runs of 10 each, 364-416 -> 398-435 tok/s (medians of two sets).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope runs its closure to completion")
}

/// Threads the tensor work runs on (rayon's global pool: `RAYON_NUM_THREADS`, else one per core).
pub fn threads() -> usize {
    rayon::current_num_threads()
}
