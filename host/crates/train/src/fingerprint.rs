//! Content hashes that identify a run's inputs: the fingerprint of a phase's data and settings
//! (checkpoints and `complete.json` carry it), the key of a DPO reference cache, and the hash
//! of a reference adapter's values.

use candle_core::{DType, Var};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// sha256 (hex) over `parts`, each followed by a 0 byte so that `["ab", "c"]` and `["a", "bc"]`
/// differ.
pub fn sha_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// sha256 over the adapter's variable names and f32 values: identifies a reference adapter.
pub fn adapter_hash(vars: &[(String, Var)]) -> Result<String> {
    let mut h = Sha256::new();
    for (name, v) in vars {
        h.update(name.as_bytes());
        h.update([0u8]);
        let data = v
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        for x in data {
            h.update(x.to_le_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_separated() {
        assert_ne!(sha_hex(&["ab", "c"]), sha_hex(&["a", "bc"]));
        assert_eq!(sha_hex(&["a", "b"]), sha_hex(&["a", "b"]));
        assert_eq!(sha_hex(&[]).len(), 64);
    }
}
