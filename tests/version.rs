//! API versioning: a plugin built against `malt:plugin@0.2.0` (tests/fixtures/v020, a copy of
//! the WIT with the version bumped) is refused before linking, with both versions named.

mod common;

use std::collections::BTreeMap;

use malt_plugins::{Plugin, PluginError, Sandbox};

#[test]
fn future_api_version_is_refused() {
    let wasm = common::fixture("v020");
    let e = Plugin::load(
        &common::runtime(),
        "future-api",
        &wasm,
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap_err();
    assert!(matches!(e, PluginError::UnsupportedApi { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("targets malt:plugin@0.2.0; this host supports malt:plugin@0.1.0"),
        "{msg}"
    );
}

#[test]
fn garbage_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.wasm");
    std::fs::write(&p, b"\0asm garbage").unwrap();
    let e = Plugin::load(
        &common::runtime(),
        "junk",
        &p,
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap_err();
    assert!(matches!(e, PluginError::Invalid { .. }), "{e}");
    assert!(e.to_string().starts_with("plugin `junk`: "), "{e}");
}

#[test]
fn precompiled_cache_is_reused() {
    let wasm = common::hostile();
    let dir = tempfile::tempdir().unwrap();
    let rt = malt_plugins::Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let a = Plugin::load(&rt, "h", &wasm, &BTreeMap::new(), &Sandbox::default()).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        files[0].file_name().unwrap().to_string_lossy(),
        format!("{}.cwasm", a.hash())
    );
    let t = std::time::Instant::now();
    let _b = Plugin::load(&rt, "h", &wasm, &BTreeMap::new(), &Sandbox::default()).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
}
