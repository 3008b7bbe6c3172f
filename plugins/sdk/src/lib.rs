//! Guest SDK for malt benchmark plugins (API `malt:plugin@0.2.0`).
//!
//! Implement [`Benchmark`] with per-item methods and call [`export_benchmark!`]; the SDK
//! implements the batched WIT functions by looping and keeps one instance of your type per
//! plugin instance (created lazily with [`Benchmark::new`], mutated only by `configure`).
//!
//! ```ignore
//! use malt_plugin_sdk::*;
//! struct Toy;
//! impl Benchmark for Toy { /* ... */ }
//! export_benchmark!(Toy);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        // The frozen API release this SDK targets.
        path: "../api/v0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "malt_plugin_sdk::bindings",
    });
}

pub use bindings::malt::plugin::types::{
    AnswerSource, Choice, Example, ExtractRequest, Extracted, Grade, GradeRequest, Message,
    PluginInfo, RenderRequest, Turn,
};
/// Re-exported so a plugin can parse JSON records without its own dependency.
pub use serde_json;

/// Version of the WIT API this SDK targets.
pub const API_VERSION: &str = "0.2.0";

/// A benchmark plugin, written per item; the SDK does the batching.
///
/// Every method must be total: return an error (or `None`, or a zero reward) instead of
/// panicking, whatever the input. A panic traps the instance and the host rebuilds it.
pub trait Benchmark: Sized + 'static {
    /// Creates the instance, with default options. Called once, before the first call.
    fn new() -> Self;

    /// Static description: name, version, roles, options, whether `generate` works.
    fn info(&self) -> PluginInfo;

    /// Applies `[plugins.<name>.options]` from the run config. An unknown key or a bad value
    /// must return an error naming it (see [`unknown_option`], [`bad_value`]).
    /// The default accepts no options.
    fn configure(&mut self, options: &[(String, String)]) -> Result<(), String> {
        match options.first() {
            None => Ok(()),
            Some((key, _)) => Err(unknown_option(key, &[])),
        }
    }

    /// Parses one dataset record (one JSON object text) into an example. Errors say what is
    /// wrong ("missing field `answer`"); the host prefixes file and line.
    fn parse_record(&self, line: &str) -> Result<Example, String>;

    /// Generates `count` examples from `seed`, deterministically.
    fn generate(&self, seed: u64, count: u32) -> Result<Vec<Example>, String> {
        let _ = (seed, count);
        Err("this benchmark reads a dataset; it cannot generate examples".to_string())
    }

    /// Renders the chat messages for one agent; unknown role => error naming it.
    fn render(&self, request: &RenderRequest) -> Result<Vec<Message>, String>;

    /// Extracts the final answer from one agent output, with its voting key and how it was
    /// found (see [`extracted`]); `None` when there is none.
    fn extract(&self, output: &str, choices: &[Choice]) -> Option<Extracted>;

    /// Grades one extracted answer against the gold; reward in [0, 1].
    fn grade(&self, answer: Option<&str>, gold: &str) -> Grade;
}

/// Error text for an unknown option key, listing the valid keys.
pub fn unknown_option(key: &str, valid: &[&str]) -> String {
    if valid.is_empty() {
        format!("unknown option `{key}`: this plugin takes no options")
    } else {
        format!(
            "unknown option `{key}`; valid options: {}",
            valid.join(", ")
        )
    }
}

/// Error text for a bad option value, listing what is accepted.
pub fn bad_value(key: &str, value: &str, accepted: &str) -> String {
    format!("bad value `{value}` for option `{key}`; expected {accepted}")
}

/// Builds an [`Extracted`]: the answer, its voting key (answers that [`Benchmark::grade`]
/// calls equal should share it, answers it calls different must not; majority voting groups by
/// it) and whether an explicit final-answer marker (`#### 72`, `\boxed{}`, `The answer is`,
/// `Final Answer:`) or a fallback (e.g. the last number) found it. An empty key becomes the
/// trimmed answer: a plugin without a canonical form can pass `""`.
pub fn extracted(
    answer: impl Into<String>,
    key: impl Into<String>,
    found_by: AnswerSource,
) -> Extracted {
    let answer = answer.into();
    let key = key.into();
    let key = match key.trim() {
        "" => answer.trim().to_string(),
        _ => key,
    };
    Extracted {
        answer,
        key,
        found_by,
    }
}

/// Builds a [`Message`].
pub fn message(role: &str, content: impl Into<String>) -> Message {
    Message {
        role: role.to_string(),
        content: content.into(),
    }
}

/// Builds a [`Grade`], clamping the reward into [0, 1] (NaN becomes 0).
pub fn grade(reward: f64, reason: impl Into<String>) -> Grade {
    let reward = if reward.is_nan() {
        0.0
    } else {
        reward.clamp(0.0, 1.0)
    };
    Grade {
        reward,
        reason: reason.into(),
    }
}

/// Parses a JSON object text, with errors fit for a dataset line.
pub fn parse_json_object(line: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "not a JSON object: {}",
            preview(&other.to_string())
        )),
        Err(e) => Err(format!("not a JSON object: {e}")),
    }
}

/// The string field `name` of a JSON object, or "missing field `name`".
pub fn str_field<'a>(
    map: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<&'a str, String> {
    match map.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field `{name}` is not a string")),
        None => Err(format!("missing field `{name}`")),
    }
}

fn preview(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::__export_plugin;
    pub use crate::bindings::exports::malt::plugin::benchmark::Guest;
    use crate::*;
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub type State<T> = RefCell<Option<T>>;

    fn with<T: Benchmark, R>(key: &'static LocalKey<State<T>>, f: impl FnOnce(&T) -> R) -> R {
        key.with(|cell| {
            if cell.borrow().is_none() {
                *cell.borrow_mut() = Some(T::new());
            }
            let guard = cell.borrow();
            f(guard.as_ref().expect("instance was just created"))
        })
    }

    pub fn info<T: Benchmark>(key: &'static LocalKey<State<T>>) -> PluginInfo {
        with(key, |b| b.info())
    }

    pub fn configure<T: Benchmark>(
        key: &'static LocalKey<State<T>>,
        options: Vec<(String, String)>,
    ) -> Result<(), String> {
        key.with(|cell| {
            let mut guard = cell.borrow_mut();
            guard.get_or_insert_with(T::new).configure(&options)
        })
    }

    pub fn parse_records<T: Benchmark>(
        key: &'static LocalKey<State<T>>,
        lines: Vec<String>,
    ) -> Vec<Result<Example, String>> {
        with(key, |b| lines.iter().map(|l| b.parse_record(l)).collect())
    }

    pub fn generate<T: Benchmark>(
        key: &'static LocalKey<State<T>>,
        seed: u64,
        count: u32,
    ) -> Result<Vec<Example>, String> {
        with(key, |b| b.generate(seed, count))
    }

    pub fn render<T: Benchmark>(
        key: &'static LocalKey<State<T>>,
        requests: Vec<RenderRequest>,
    ) -> Vec<Result<Vec<Message>, String>> {
        with(key, |b| requests.iter().map(|r| b.render(r)).collect())
    }

    pub fn extract<T: Benchmark>(
        key: &'static LocalKey<State<T>>,
        requests: Vec<ExtractRequest>,
    ) -> Vec<Option<Extracted>> {
        with(key, |b| {
            requests
                .iter()
                .map(|r| {
                    b.extract(&r.output, &r.choices)
                        .map(|e| crate::extracted(e.answer, e.key, e.found_by))
                })
                .collect()
        })
    }

    pub fn grade<T: Benchmark>(
        key: &'static LocalKey<State<T>>,
        requests: Vec<GradeRequest>,
    ) -> Vec<Grade> {
        with(key, |b| {
            requests
                .iter()
                .map(|r| {
                    let g = b.grade(r.answer.as_deref(), &r.gold);
                    crate::grade(g.reward, g.reason)
                })
                .collect()
        })
    }
}

/// Exports a [`Benchmark`] implementation as the plugin's `malt:plugin/benchmark` interface.
/// Call it once, at the crate root of a `cdylib`.
#[macro_export]
macro_rules! export_benchmark {
    ($benchmark:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __MALT_STATE: $crate::__private::State<$benchmark> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct __MaltGuest;
            impl $crate::__private::Guest for __MaltGuest {
                fn info() -> $crate::PluginInfo {
                    $crate::__private::info(&__MALT_STATE)
                }
                fn configure(
                    options: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::configure(&__MALT_STATE, options)
                }
                fn parse_records(
                    lines: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::vec::Vec<::core::result::Result<$crate::Example, ::std::string::String>>
                {
                    $crate::__private::parse_records(&__MALT_STATE, lines)
                }
                fn generate(
                    seed: u64,
                    count: u32,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Example>, ::std::string::String>
                {
                    $crate::__private::generate(&__MALT_STATE, seed, count)
                }
                fn render(
                    requests: ::std::vec::Vec<$crate::RenderRequest>,
                ) -> ::std::vec::Vec<
                    ::core::result::Result<::std::vec::Vec<$crate::Message>, ::std::string::String>,
                > {
                    $crate::__private::render(&__MALT_STATE, requests)
                }
                fn extract(
                    requests: ::std::vec::Vec<$crate::ExtractRequest>,
                ) -> ::std::vec::Vec<::core::option::Option<$crate::Extracted>> {
                    $crate::__private::extract(&__MALT_STATE, requests)
                }
                fn grade(
                    requests: ::std::vec::Vec<$crate::GradeRequest>,
                ) -> ::std::vec::Vec<$crate::Grade> {
                    $crate::__private::grade(&__MALT_STATE, requests)
                }
            }
    $crate::__private::__export_plugin!(__MaltGuest with_types_in $crate::bindings);
        };
    };
}
