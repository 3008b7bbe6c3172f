//! Shared helpers of the integration tests: build the fixture guest crates once per test run
//! into a cached target dir (target/malt-fixtures).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use malt_plugins::Runtime;

/// The repository root: the nearest ancestor of the testing crate that holds `tests/fixtures`
/// (these tests are compiled into `host` and into `host/crates/*`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("tests/fixtures").is_dir())
        .expect("repo root")
        .canonicalize()
        .expect("repo root")
}

/// Build tests/fixtures/NAME (a standalone guest crate) and return its component.
pub fn fixture(name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = repo().join("tests/fixtures").join(name);
    let mut c = malt_plugins::build::guest_crate(name, &dir).expect("fixture crate");
    c.target_dir = repo().join("target/malt-fixtures");
    malt_plugins::build::ensure_built(name, &c)
        .unwrap_or_else(|e| panic!("building fixture {name}: {e}"))
}

pub fn hostile() -> PathBuf {
    fixture("hostile")
}

/// One runtime per test binary, caching precompiled components under target/.
pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(Some(repo().join("target/malt-fixtures/cwasm"))).expect("runtime")
    })
    .clone()
}
