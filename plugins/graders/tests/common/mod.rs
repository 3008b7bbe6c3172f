//! Shared helpers for the golden tests: load ../shared/golden (beside the repository).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn golden_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    if !dir.is_dir() {
        panic!(
            "golden files not found at {}: these tests need the `shared` folder beside the \
             repository (../shared/golden relative to the repository root)",
            dir.display()
        );
    }
    dir
}

pub fn load(name: &str) -> serde_json::Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

pub fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("golden case lacks string `{key}`: {v}"))
}

pub fn opt(v: &serde_json::Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_string)
}

pub fn b(v: &serde_json::Value, key: &str) -> bool {
    v[key]
        .as_bool()
        .unwrap_or_else(|| panic!("golden case lacks bool `{key}`: {v}"))
}

/// "[invalid]" (lm-eval's fallback) as None.
pub fn lm(v: &serde_json::Value, key: &str) -> Option<String> {
    opt(v, key).filter(|x| x != "[invalid]")
}
