//! Slow fallbacks are visible: where an op that has a fused kernel on the CPU runs as a graph of
//! composed candle ops instead (another device or dtype), the first such call of each op kind
//! logs a warning, and later ones stay quiet.

use candle_core::Device;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Op kinds already reported.
static REPORTED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// The device's kind as a user names it in a config.
pub fn device_kind(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Logs, the first time for `op`, that it runs as composed candle ops on `device`. Returns
/// whether this call logged.
pub fn warn_once(op: &'static str, device: &Device) -> bool {
    let first = REPORTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(op);
    if first {
        let device = device_kind(device);
        tracing::warn!(
            op,
            device,
            "running {op} as composed candle ops on {device}: slower than a fused kernel"
        );
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_kind_is_reported_once() {
        assert!(warn_once("test-op-a", &Device::Cpu));
        assert!(!warn_once("test-op-a", &Device::Cpu));
        assert!(warn_once("test-op-b", &Device::Cpu));
    }
}
