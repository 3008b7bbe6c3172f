//! Where the reference-agreement tests (issue 26) run and what they read, and the one line
//! each check prints. Shared by `malt-model`'s `tests/reference.rs` and, through `#[path]`,
//! `malt-train`'s: one definition of the variables for both test binaries.
//!
//! - `MALT_REFERENCE_DEVICE`: the device of the tiny-model checks (model loading, logits,
//!   adapter logits, greedy decoding, SFT / DPO losses and gradients, the trainer's step):
//!   `cpu` (the default, what CI runs), `cuda`, `cuda:N`, as `malt_model::parse_device` reads
//!   it. A binary built without the `cuda` feature refuses `cuda` with parse_device's message.
//!   The SmolLM2 checks stay on the CPU whatever it says (see `malt-model`'s
//!   `tests/reference.rs`).
//! - `MALT_REFERENCE_FIXTURES`: the fixture folder. The default is the repository's
//!   `tests/fixtures/reference`, found from CARGO_MANIFEST_DIR at compile time: a path of the
//!   machine that built the binary, so `scripts/gpu-check` names the copied folder on the GPU
//!   machine.
//!
//! Every check prints one line that `scripts/gpu_check_merge.py` parses into gpu-check.json:
//!
//! `check [DEVICE] WHAT: MEASURE = VALUE (tolerance TOL): ok|FAIL`
//!
//! and a group of checks that stopped on a device other than the CPU because the device lacks
//! an operation prints `not-run [DEVICE] WHAT: REASON` instead of failing (see [`on_device`]).
//!
//! Tolerances are the f32 ones of the CPU on every device: candle runs f32 matrix products on
//! CUDA with cuBLAS's CUBLAS_COMPUTE_32F unless `set_gemm_reduced_precision_f32(true)` asks for
//! TF32 (off by default, and malt never turns it on), so a GPU differs from the CPU only by the
//! order of f32 sums, ~1e-6 relative, far inside them. [`device`] checks that TF32 is off.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// The fixture folder: `MALT_REFERENCE_FIXTURES`, else the repository's.
pub fn fixtures() -> PathBuf {
    if let Some(p) = std::env::var_os("MALT_REFERENCE_FIXTURES").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.join("tiny_llama/reference.json").is_file(),
            "MALT_REFERENCE_FIXTURES={}: no tiny_llama/reference.json there (it must name a \
             copy of tests/fixtures/reference)",
            p.display()
        );
        return p;
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/reference");
    p.canonicalize().unwrap_or(p)
}

/// `MALT_REFERENCE_DEVICE` as written (trimmed, lower case), `cpu` when unset or empty.
pub fn device_spec() -> String {
    std::env::var("MALT_REFERENCE_DEVICE")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cpu".into())
}

/// The device of the tiny-model checks, opened once per test thread: every tensor of a test
/// then belongs to one `Device` used from one thread (candle's CUDA device runs on the calling
/// thread's stream, and its cuBLAS handle is not for concurrent use), also when a test runner
/// runs tests in parallel.
pub fn device() -> Device {
    thread_local! {
        static DEVICE: std::cell::OnceCell<Device> = const { std::cell::OnceCell::new() };
    }
    DEVICE.with(|d| {
        d.get_or_init(|| {
            let spec = device_spec();
            let dev = malt_model::parse_device(&spec)
                .unwrap_or_else(|e| panic!("MALT_REFERENCE_DEVICE={spec}: {e}"));
            // The f32 tolerances assume full f32 products (module docs).
            assert!(
                !(dev.is_cuda() && candle_core::cuda::gemm_reduced_precision_f32()),
                "TF32 matrix products are on: the f32 tolerances do not hold"
            );
            eprintln!(
                "reference checks: tiny models on {spec} (MALT_REFERENCE_DEVICE), fixtures {}",
                fixtures().display()
            );
            dev
        })
        .clone()
    })
}

/// The name printed for `dev`: `cpu`, or the spec of the reference device.
pub fn label(dev: &Device) -> String {
    if dev.is_cpu() {
        "cpu".into()
    } else {
        device_spec()
    }
}

/// Prints the check's line and returns whether `value <= tolerance` (NaN fails). `measure`
/// holds no colon (the parser in `scripts/gpu_check_merge.py` splits WHAT from it at the last).
pub fn figure(dev: &Device, what: &str, measure: &str, value: f64, tolerance: f64) -> bool {
    let ok = value <= tolerance;
    eprintln!(
        "check [{}] {what}: {measure} = {value:.3e} (tolerance {tolerance:.3e}): {}",
        label(dev),
        if ok { "ok" } else { "FAIL" }
    );
    ok
}

/// `t` on the CPU (to compare with fixture tensors, which are read to the CPU).
pub fn to_cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap()
}

/// Error texts that mean "this device lacks the operation", not "the numbers are wrong":
/// candle's default for a custom op without a CUDA kernel, its CUDA backend's dtype and op
/// refusals, and malt's CPU-only fused ops (`fused.rs`).
const UNSUPPORTED: [&str; 7] = [
    "no cuda implementation",
    "not supported on cuda",
    "UnsupportedDTypeForOp",
    "unsupported dtype",
    "does not support",
    "only on cpu",
    "only f32 on cpu",
];

/// Whether a panic message says that the device lacks an operation ([`UNSUPPORTED`]).
pub fn lacks_operation(msg: &str) -> bool {
    let lower = msg.to_ascii_lowercase();
    UNSUPPORTED
        .iter()
        .any(|m| lower.contains(&m.to_ascii_lowercase()))
}

/// Runs a group of checks (returning its failures) on the reference device. On the CPU it is
/// just `f()`. Elsewhere a panic whose message says the device lacks an operation (see
/// [`UNSUPPORTED`]) prints a `not-run` line with the message and counts as no failure: the CPU
/// run (CI) covers the check, and the log names what the device could not run. Any other
/// panic (a wrong number, a CUDA error) propagates.
pub fn on_device(what: &str, f: impl FnOnce() -> Vec<String>) -> Vec<String> {
    let dev = device();
    if dev.is_cpu() {
        return f();
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(fails) => fails,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if lacks_operation(&msg) {
                eprintln!(
                    "not-run [{}] {what}: the device lacks an operation: {}",
                    label(&dev),
                    msg.replace('\n', " ")
                );
                vec![]
            } else {
                std::panic::resume_unwind(payload)
            }
        }
    }
}
