//! API versions: one `bindgen!` module per supported `malt:plugin` version, and the check that
//! refuses a plugin targeting another version before anything is linked.

pub mod v0_1_0;

use wasmtime::component::Component;
use wasmtime::Engine;

/// The WIT package every plugin exports an interface of.
pub const PACKAGE: &str = "malt:plugin";
/// The exported interface.
pub const INTERFACE: &str = "benchmark";

/// Every API version this host supports, newest first. A guest built against `X.Y.Z` loads when
/// some supported version is semver-compatible with it (same major, and same minor while the
/// major is 0), as the component model's linker matches them.
pub const SUPPORTED: &[ApiVersion] = &[ApiVersion {
    major: 0,
    minor: 1,
    patch: 0,
}];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl ApiVersion {
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        let v = ApiVersion {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next()??,
        };
        it.next().is_none().then_some(v)
    }

    /// Whether a guest targeting `self` can be served by a host binding for `host`.
    pub fn compatible_with(&self, host: &ApiVersion) -> bool {
        self.major == host.major && (self.major != 0 || self.minor == host.minor)
    }
}

/// "malt:plugin@0.1.0", for messages.
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| format!("{PACKAGE}@{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the component's exports say about its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// Targets this supported version (the binding to use).
    Supported { guest: ApiVersion, host: ApiVersion },
    /// Exports `malt:plugin/benchmark@V` for a version the host does not support.
    Unsupported { guest: String },
    /// Exports no `malt:plugin/benchmark` interface at all.
    NotAPlugin { exports: Vec<String> },
}

/// Inspect a component's exports (before linking) to find the API version it targets.
pub fn detect(engine: &Engine, component: &Component) -> Detected {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let prefix = format!("{PACKAGE}/{INTERFACE}");
    for name in &exports {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(ver) = rest.strip_prefix('@') else {
            return Detected::Unsupported {
                guest: "(unversioned)".into(),
            };
        };
        let Some(guest) = ApiVersion::parse(ver) else {
            return Detected::Unsupported {
                guest: ver.to_string(),
            };
        };
        return match SUPPORTED.iter().find(|h| guest.compatible_with(h)) {
            Some(host) => Detected::Supported { guest, host: *host },
            None => Detected::Unsupported {
                guest: guest.to_string(),
            },
        };
    }
    Detected::NotAPlugin { exports }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_rules() {
        let host = ApiVersion {
            major: 0,
            minor: 1,
            patch: 0,
        };
        assert!(ApiVersion::parse("0.1.3").unwrap().compatible_with(&host));
        assert!(!ApiVersion::parse("0.2.0").unwrap().compatible_with(&host));
        assert!(!ApiVersion::parse("1.1.0").unwrap().compatible_with(&host));
        assert_eq!(ApiVersion::parse("0.1"), None);
    }
}
