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

/// Hands freed pages back when the resident size grows during repeated work (training steps).
/// Steps of one shape reuse each other's freed pages and the resident size stays put; steps of
/// varying lengths each leave pages of sizes the next cannot reuse, and keeping them all grew a
/// generator SFT phase of the longer experiment from 5.4 GB (freed pages handed back at once)
/// to 8.2 GB. The first step after a release sets a ceiling a quarter above its resident size;
/// a step that ends above it releases.
#[derive(Debug, Default)]
pub struct ReleaseWhenGrown {
    ceiling: Option<u64>,
}

impl ReleaseWhenGrown {
    /// Called after each unit of the repeated work.
    pub fn after_unit(&mut self) {
        let Some(rss) = resident_bytes() else { return };
        match self.ceiling {
            None => self.ceiling = Some(rss + rss / 4),
            Some(ceiling) if rss > ceiling => {
                release_freed();
                self.ceiling = None;
            }
            Some(_) => {}
        }
    }
}

/// The process's resident size (Linux: `VmRSS`), None where it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn resident_size_grows_with_touched_memory() {
        let before = resident_bytes().expect("VmRSS on linux");
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_bytes().expect("VmRSS on linux");
        assert!(after >= before + (32 << 20), "{before} -> {after}");
        drop(touched);
    }
}
