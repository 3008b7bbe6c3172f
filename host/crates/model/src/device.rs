//! Device selection from a config string; CUDA and Metal only exist when the matching cargo
//! feature was enabled, and candle reports that clearly when it was not.

use crate::error::{ModelError, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    if s.starts_with("cuda") && !cfg!(feature = "cuda") {
        return Err(ModelError::Invalid(format!(
            "device {spec:?}: this malt was built without CUDA; build the CUDA binary with \
             `scripts/cuda-build` (see the README's GPU section), or run with `--device cpu`"
        )));
    }
    match s.as_str() {
        "" | "cpu" => Ok(Device::Cpu),
        "metal" => Ok(Device::new_metal(0)?),
        "cuda" => Ok(Device::new_cuda(0)?),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => {
                let ordinal: usize = n.parse().map_err(|_| ModelError::Device(spec.into()))?;
                Ok(Device::new_cuda(ordinal)?)
            }
            None => Err(ModelError::Device(spec.into())),
        },
    }
}

/// Free and total bytes of the device: on CUDA the driver's figures; on the CPU the kernel's
/// `MemAvailable` and `MemTotal`, each capped by the cgroup's `memory.max` where a container
/// sets one. None where it cannot be told (Metal, a non-Linux CPU).
pub fn device_memory(device: &Device) -> Option<DeviceMemory> {
    match device {
        Device::Cpu => cpu_memory(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, total)| DeviceMemory {
                free: free as u64,
                total: total as u64,
            }),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// What can be allocated now.
    pub free: u64,
    /// What the device has at all (for a process alone on it).
    pub total: u64,
}

fn cpu_memory() -> Option<DeviceMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    };
    let (mut free, mut total) = (field("MemAvailable:")?, field("MemTotal:")?);
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let (Some(max), Some(used)) = (read("memory.max"), read("memory.current")) {
        total = total.min(max);
        free = free.min(max.saturating_sub(used));
    }
    Some(DeviceMemory { free, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_reports_some_memory() {
        if cfg!(target_os = "linux") {
            let m = device_memory(&Device::Cpu).expect("MemAvailable on Linux");
            assert!(m.free > 1 << 20 && m.free <= m.total, "{m:?}");
        }
    }

    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("scripts/cuda-build"), "{e}");
        }
    }
}
