//! Process-wide settings for tensor work: which thread pool candle's elementwise ops use. (How
//! tensor memory is reused is the allocator's business: the `malt` binary uses jemalloc, see
//! its `main.rs`.)

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
