//! API versions: one `bindgen!` module per supported `malt:plugin` version, and the check that
//! refuses a plugin targeting another version before anything is linked.

/// The glue every API version shares: the versions differ only in `extract`, but each
/// `bindgen!` generates its own copies of the records, so the code that calls them and copies
/// their fields is stamped out once per version module (which then adds its `extract`). The
/// module must have `bindgen!`'s `Plugin`, and `b`, `t`, `h` naming its `benchmark` export, its
/// `types` interface and crate::types.
macro_rules! shared_glue {
    () => {
        /// An instantiated plugin of this API version.
        pub struct Bindings(Plugin, wasmtime::component::Func);

        impl Bindings {
            pub fn instantiate<T: 'static>(
                pre: &InstancePre<T>,
                store: &mut Store<T>,
                export: &str,
            ) -> wasmtime::Result<Self> {
                let instance = pre.instantiate(&mut *store)?;
                let plugin = Plugin::new(&mut *store, &instance)?;
                // `grade` is the hot path: call it with the host's own types (derived component types,
                // type-checked here once) so requests are lowered without an intermediate copy.
                let iface = instance
                    .get_export_index(&mut *store, None, export)
                    .ok_or_else(|| wasmtime::format_err!("no export {export}"))?;
                let idx = instance
                    .get_export_index(&mut *store, Some(&iface), "grade")
                    .ok_or_else(|| wasmtime::format_err!("no export `grade`"))?;
                let grade = instance
                    .get_func(&mut *store, idx)
                    .ok_or_else(|| wasmtime::format_err!("export `grade` is not a function"))?;
                grade.typed::<(&[h::GradeRequest],), (Vec<h::Grade>,)>(&*store)?;
                Ok(Bindings(plugin, grade))
            }

            fn api(&self) -> &b::Guest {
                self.0.malt_plugin_benchmark()
            }

            pub fn info<T>(&self, store: &mut Store<T>) -> wasmtime::Result<h::PluginInfo> {
                let i = self.api().call_info(store)?;
                Ok(h::PluginInfo {
                    name: i.name,
                    version: i.version,
                    description: i.description,
                    roles: i.roles,
                    options: i.options,
                    can_generate: i.can_generate,
                })
            }

            pub fn configure<T>(
                &self,
                store: &mut Store<T>,
                options: &[(String, String)],
            ) -> wasmtime::Result<Result<(), String>> {
                self.api().call_configure(store, options)
            }

            pub fn parse_records<T>(
                &self,
                store: &mut Store<T>,
                lines: &[String],
            ) -> wasmtime::Result<Vec<Result<h::Example, String>>> {
                Ok(self
                    .api()
                    .call_parse_records(store, lines)?
                    .into_iter()
                    .map(|r| r.map(Into::into))
                    .collect())
            }

            pub fn generate<T>(
                &self,
                store: &mut Store<T>,
                seed: u64,
                count: u32,
            ) -> wasmtime::Result<Result<Vec<h::Example>, String>> {
                Ok(self
                    .api()
                    .call_generate(store, seed, count)?
                    .map(|v| v.into_iter().map(Into::into).collect()))
            }

            pub fn render<T>(
                &self,
                store: &mut Store<T>,
                reqs: &[h::RenderRequest],
            ) -> wasmtime::Result<Vec<Result<Vec<h::Message>, String>>> {
                let reqs: Vec<t::RenderRequest> = reqs
                    .iter()
                    .map(|r| t::RenderRequest {
                        agent: r.agent.clone(),
                        role: r.role.clone(),
                        position: r.position,
                        chain_length: r.chain_length,
                        example: (&r.example).into(),
                        history: r.history.iter().map(Into::into).collect(),
                    })
                    .collect();
                Ok(self
                    .api()
                    .call_render(store, &reqs)?
                    .into_iter()
                    .map(|r| r.map(|ms| ms.into_iter().map(Into::into).collect()))
                    .collect())
            }

            /// The requests as this version's `extract-request`s.
            fn extract_requests(reqs: &[h::ExtractRequest]) -> Vec<t::ExtractRequest> {
                reqs.iter()
                    .map(|r| t::ExtractRequest {
                        output: r.output.clone(),
                        choices: r.choices.iter().map(Into::into).collect(),
                    })
                    .collect()
            }

            pub fn grade<T>(
                &self,
                store: &mut Store<T>,
                reqs: &[h::GradeRequest],
            ) -> wasmtime::Result<Vec<h::Grade>> {
                // SAFETY: the signature was type-checked against these exact types in `instantiate`.
                let f = unsafe {
                    wasmtime::component::TypedFunc::<(&[h::GradeRequest],), (Vec<h::Grade>,)>::new_unchecked(
                        self.1,
                    )
                };
                Ok(f.call(store, (reqs,))?.0)
            }
        }

        /// Nothing to add beyond WASI: the world imports only types.
        pub fn add_to_linker<T>(_linker: &mut Linker<T>) -> wasmtime::Result<()> {
            Ok(())
        }

        // The WIT bindings are generated per API version and must stay separate from the host's
        // records: these are the only places their fields are copied.

        impl From<&h::Choice> for t::Choice {
            fn from(c: &h::Choice) -> Self {
                t::Choice {
                    label: c.label.clone(),
                    text: c.text.clone(),
                }
            }
        }

        impl From<t::Choice> for h::Choice {
            fn from(c: t::Choice) -> Self {
                h::Choice {
                    label: c.label,
                    text: c.text,
                }
            }
        }

        impl From<&h::Example> for t::Example {
            fn from(e: &h::Example) -> Self {
                t::Example {
                    id: e.id.clone(),
                    question: e.question.clone(),
                    gold: e.gold.clone(),
                    choices: e.choices.iter().map(Into::into).collect(),
                    metadata: e.metadata.clone(),
                }
            }
        }

        impl From<t::Example> for h::Example {
            fn from(e: t::Example) -> Self {
                h::Example {
                    id: e.id,
                    question: e.question,
                    gold: e.gold,
                    choices: e.choices.into_iter().map(Into::into).collect(),
                    metadata: e.metadata,
                }
                .normalised()
            }
        }

        impl From<&h::Turn> for t::Turn {
            fn from(x: &h::Turn) -> Self {
                t::Turn {
                    agent: x.agent.clone(),
                    role: x.role.clone(),
                    output: x.output.clone(),
                }
            }
        }

        impl From<t::Message> for h::Message {
            fn from(m: t::Message) -> Self {
                h::Message {
                    role: m.role,
                    content: m.content,
                }
            }
        }
    };
}

pub mod v0_1_0;
pub mod v0_2_0;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, Store};

use crate::types as h;

/// The WIT package every plugin exports an interface of.
pub const PACKAGE: &str = "malt:plugin";
/// The exported interface.
pub const INTERFACE: &str = "benchmark";

/// Every API version this host supports, newest first. A guest built against `X.Y.Z` loads when
/// some supported version is semver-compatible with it (same major, and same minor while the
/// major is 0), as the component model's linker matches them.
pub const SUPPORTED: &[ApiVersion] = &[
    ApiVersion {
        major: 0,
        minor: 2,
        patch: 0,
    },
    ApiVersion {
        major: 0,
        minor: 1,
        patch: 0,
    },
];

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

/// "malt:plugin@0.2.0, malt:plugin@0.1.0", for messages.
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| format!("{PACKAGE}@{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An instantiated plugin, bound through its API version's bindings.
pub(crate) enum Bindings {
    V0_1(v0_1_0::Bindings),
    V0_2(v0_2_0::Bindings),
}

/// Calls the same method on whichever version's bindings.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Bindings::V0_1(b) => b.$method($($arg),*),
            Bindings::V0_2(b) => b.$method($($arg),*),
        }
    };
}

impl Bindings {
    /// Instantiates `pre` with the bindings of `version` (one of [`SUPPORTED`]).
    pub fn instantiate<T: 'static>(
        version: ApiVersion,
        pre: &InstancePre<T>,
        store: &mut Store<T>,
        export: &str,
    ) -> wasmtime::Result<Self> {
        Ok(match (version.major, version.minor) {
            (0, 1) => Bindings::V0_1(v0_1_0::Bindings::instantiate(pre, store, export)?),
            (0, 2) => Bindings::V0_2(v0_2_0::Bindings::instantiate(pre, store, export)?),
            _ => wasmtime::bail!("no bindings for {PACKAGE}@{version}"),
        })
    }

    pub fn info<T>(&self, store: &mut Store<T>) -> wasmtime::Result<h::PluginInfo> {
        dispatch!(self.info(store))
    }

    pub fn configure<T>(
        &self,
        store: &mut Store<T>,
        options: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        dispatch!(self.configure(store, options))
    }

    pub fn parse_records<T>(
        &self,
        store: &mut Store<T>,
        lines: &[String],
    ) -> wasmtime::Result<Vec<Result<h::Example, String>>> {
        dispatch!(self.parse_records(store, lines))
    }

    pub fn generate<T>(
        &self,
        store: &mut Store<T>,
        seed: u64,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<h::Example>, String>> {
        dispatch!(self.generate(store, seed, count))
    }

    pub fn render<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::RenderRequest],
    ) -> wasmtime::Result<Vec<Result<Vec<h::Message>, String>>> {
        dispatch!(self.render(store, reqs))
    }

    pub fn extract<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::ExtractRequest],
    ) -> wasmtime::Result<Vec<Option<h::Extracted>>> {
        dispatch!(self.extract(store, reqs))
    }

    pub fn grade<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::GradeRequest],
    ) -> wasmtime::Result<Vec<h::Grade>> {
        dispatch!(self.grade(store, reqs))
    }
}

/// Links what every supported version imports (nothing beyond WASI so far).
pub fn add_to_linker<T>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    v0_1_0::add_to_linker(linker)?;
    v0_2_0::add_to_linker(linker)
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

    #[test]
    fn both_released_versions_are_supported_and_0_3_is_not() {
        let find = |v: &str| {
            let v = ApiVersion::parse(v).unwrap();
            SUPPORTED.iter().find(|h| v.compatible_with(h)).copied()
        };
        assert_eq!(find("0.1.0").map(|h| h.minor), Some(1));
        assert_eq!(find("0.2.0").map(|h| h.minor), Some(2));
        assert_eq!(find("0.3.0"), None);
        assert_eq!(supported_list(), "malt:plugin@0.2.0, malt:plugin@0.1.0");
    }
}
