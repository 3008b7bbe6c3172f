//! Device selection from a config string; CUDA and Metal only exist when the matching cargo
//! feature was enabled, and candle reports that clearly when it was not.

use crate::error::{ModelError, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
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
