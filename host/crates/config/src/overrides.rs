//! `--device` and `--dtype` on the command line: they replace `[model] device` and `dtype` in
//! every config this process loads, the hot-reloaded ones included. Process-wide on purpose:
//! `malt run` reads its config from disk again at every stage boundary and refuses a changed
//! `[model]`, so an override held by the caller alone would be lost, or refused, at the first
//! reload. Being part of the loaded config, an override also enters the config hash, so stages
//! computed on another device or dtype are recomputed, not reused.

use std::sync::RwLock;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOverrides {
    pub device: Option<String>,
    pub dtype: Option<String>,
}

static OVERRIDES: RwLock<ModelOverrides> = RwLock::new(ModelOverrides {
    device: None,
    dtype: None,
});

/// Whether `device` is one `[model] device` accepts: `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn valid_device(device: &str) -> bool {
    matches!(device, "cpu" | "cuda" | "metal")
        || device
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// Whether `dtype` is one `[model] dtype` accepts.
pub fn valid_dtype(dtype: &str) -> bool {
    matches!(dtype, "auto" | "f32" | "f16" | "bf16")
}

impl ModelOverrides {
    /// Checks the values and makes them apply to every config loaded from now on.
    pub fn install(self) -> Result<(), String> {
        if let Some(d) = &self.device {
            if !valid_device(d) {
                return Err(format!(
                    "--device {d:?}: expected cpu, cuda, cuda:N or metal"
                ));
            }
        }
        if let Some(d) = &self.dtype {
            if !valid_dtype(d) {
                return Err(format!("--dtype {d:?}: expected auto, f32, f16 or bf16"));
            }
        }
        *OVERRIDES.write().unwrap_or_else(|e| e.into_inner()) = self;
        Ok(())
    }

    /// The overrides installed in this process (none by default).
    pub fn current() -> ModelOverrides {
        OVERRIDES.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_dtypes_the_config_accepts() {
        for d in ["cpu", "cuda", "cuda:0", "cuda:7", "metal"] {
            assert!(valid_device(d), "{d}");
        }
        for d in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(!valid_device(d), "{d}");
        }
        assert!(valid_dtype("bf16") && valid_dtype("auto"));
        assert!(!valid_dtype("fp8"));
    }

    #[test]
    fn a_bad_value_is_refused_before_it_applies() {
        let bad = ModelOverrides {
            device: Some("gpu0".into()),
            dtype: None,
        };
        let e = bad.install().unwrap_err();
        assert!(e.contains("--device \"gpu0\""), "{e}");
        assert_eq!(ModelOverrides::current(), ModelOverrides::default());
    }
}
