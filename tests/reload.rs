//! Hot reload: while the host runs, edit the config and replace the plugin's .wasm; a new
//! generation appears. Broken edits (bad TOML, garbage wasm) keep the old set and report the
//! error; fixing them swaps the new set in.

mod common;

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use malt_plugins::reload::{ReloadEvent, Reloader};
use malt_plugins::GradeRequest;

fn config(theta: f64) -> String {
    format!(
        r#"
[dataset]
plugin = "h"
generate = {{ seed = 1, count = 20 }}
train = 10
test = 10

[plugins.h]
path = "h.wasm"

[credit]
theta = {theta}

[[agents]]
name = "generator"

[[agents]]
name = "refiner"
"#
    )
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Append a custom section: a different but valid component (another hash).
fn variant(wasm: &[u8], tag: &str) -> Vec<u8> {
    let mut out = wasm.to_vec();
    let name = b"malt-test";
    let payload = tag.as_bytes();
    let body_len = 1 + name.len() + payload.len();
    out.push(0);
    out.push(body_len as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

fn wait(
    rx: &Receiver<ReloadEvent>,
    what: &str,
    pred: impl Fn(&ReloadEvent) -> bool,
) -> ReloadEvent {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev) => return ev,
            Ok(ev) => eprintln!("(skipping event {ev:?} while waiting for {what})"),
            Err(_) => panic!("no reload event for: {what}"),
        }
    }
}

fn still_grades(r: &Reloader) {
    let cur = r.current();
    let g = cur.plugins.get("h").unwrap().grade(&[GradeRequest {
        answer: Some("1".into()),
        gold: "1".into(),
    }]);
    assert_eq!(g[0].as_ref().unwrap().reward, 1.0);
}

#[test]
fn edits_reload_and_broken_edits_keep_the_old_set() {
    let wasm = std::fs::read(common::hostile()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    let plugin = dir.path().join("h.wasm");
    std::fs::write(&plugin, &wasm).unwrap();
    std::fs::write(&cfg, config(0.5)).unwrap();

    let r = Reloader::start(common::runtime(), &cfg).unwrap();
    let rx = r.subscribe();
    assert_eq!(r.generation(), 0);
    let hash0 = r.current().plugins.get("h").unwrap().hash().to_string();
    std::thread::sleep(Duration::from_millis(300));

    // 1. a threshold in the config
    write_atomic(&cfg, config(0.7).as_bytes());
    let ev = wait(&rx, "theta edit", |e| e.result.is_ok() && e.generation >= 1);
    assert_eq!(r.current().config.credit.theta, 0.7);
    let g1 = ev.generation;

    // 2. a new build of the plugin
    write_atomic(&plugin, &variant(&wasm, "v2"));
    wait(&rx, "plugin replaced", |e| {
        e.result.is_ok() && e.generation > g1
    });
    assert_ne!(r.current().plugins.get("h").unwrap().hash(), hash0);
    let g2 = r.generation();
    still_grades(&r);

    // 3. garbage wasm: refused, old set kept
    write_atomic(&plugin, b"this is not wasm");
    let ev = wait(&rx, "garbage wasm refused", |e| e.result.is_err());
    assert_eq!(ev.generation, g2);
    assert!(
        ev.result
            .as_ref()
            .unwrap_err()
            .contains("not a valid WebAssembly component"),
        "{ev:?}"
    );
    assert_eq!(r.generation(), g2);
    still_grades(&r);

    // 4. bad TOML too: refused
    write_atomic(&cfg, b"[credit\ntheta = ");
    let ev = wait(&rx, "bad TOML refused", |e| {
        e.result.as_ref().is_err_and(|m| m.contains("run.toml:1:"))
    });
    assert_eq!(ev.generation, g2);
    assert_eq!(r.current().config.credit.theta, 0.7);

    // 5. fix both: swapped in
    write_atomic(&plugin, &variant(&wasm, "v3"));
    write_atomic(&cfg, config(0.9).as_bytes());
    wait(&rx, "fixed", |e| e.result.is_ok() && e.generation > g2);
    // the last of possibly several events must reflect both files
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.current().config.credit.theta != 0.9 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.current().config.credit.theta, 0.9);
    still_grades(&r);
}
