//! A real hostile component (tests/fixtures/hostile) misbehaves per input; each misbehaviour is
//! contained with a clear, typed error, and the host keeps serving: another plugin in the same
//! process still answers, and the hostile plugin answers again after its instance is rebuilt.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use malt_plugins::{CallErrorKind, ExtractRequest, GradeRequest, Plugin, PluginError, Sandbox};

fn load(name: &str, options: &[(&str, &str)]) -> Result<Plugin, PluginError> {
    load_with(name, options, &Sandbox::default())
}

fn load_with(
    name: &str,
    options: &[(&str, &str)],
    limits: &Sandbox,
) -> Result<Plugin, PluginError> {
    let opts: BTreeMap<String, String> = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Plugin::load(&common::runtime(), name, &common::hostile(), &opts, limits)
}

/// A deadline long enough that a memory bomb hits the memory cap, or a huge output the size
/// check, first on a loaded machine.
fn patient() -> Sandbox {
    Sandbox {
        timeout_ms: 1000,
        ..Sandbox::default()
    }
}

fn req(gold: &str) -> GradeRequest {
    GradeRequest {
        answer: Some(gold.to_string()),
        gold: gold.to_string(),
    }
}

/// The hostile plugin and a bystander plugin both still answer normally.
fn still_serving(hostile: &Plugin) {
    let bystander = load("bystander", &[]).expect("bystander");
    let g = bystander.grade(&[req("7")]);
    assert_eq!(g[0].as_ref().expect("bystander answers").reward, 1.0);
    let g = hostile.grade(&[req("7")]);
    assert_eq!(
        g[0].as_ref()
            .expect("hostile answers again after rebuild")
            .reward,
        1.0
    );
}

#[test]
fn infinite_loop_times_out() {
    let p = load("hostile", &[]).unwrap();
    let t = Instant::now();
    let r = p.grade(&[req("loop")]);
    let elapsed = t.elapsed();
    let e = r[0].as_ref().unwrap_err();
    assert!(matches!(e.kind, CallErrorKind::Timeout { .. }), "{e}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("plugin `hostile` 0.1.0: grade: timed out"),
        "{msg}"
    );
    assert_eq!(p.stats().timeouts, 1);
    still_serving(&p);
}

#[test]
fn memory_bomb_hits_the_cap() {
    let p = load_with("hostile", &[], &patient()).unwrap();
    let r = p.extract(&[ExtractRequest {
        output: "bomb".into(),
        choices: vec![],
    }]);
    let e = r[0].as_ref().unwrap_err();
    assert!(
        matches!(e.kind, CallErrorKind::MemoryLimit { mib: 64 }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("extract: exceeded its memory limit of 64 MiB"),
        "{e}"
    );
    still_serving(&p);
}

#[test]
fn panic_message_reaches_the_host() {
    let p = load("hostile", &[]).unwrap();
    let r = p.grade(&[req("panic")]);
    let e = r[0].as_ref().unwrap_err();
    assert!(matches!(e.kind, CallErrorKind::Trap(_)), "{e}");
    assert_eq!(
        e.panic.as_deref(),
        Some("hostile panic"),
        "{e}\nstderr: {}",
        e.stderr
    );
    assert!(
        e.to_string().contains("guest panicked: hostile panic"),
        "{e}"
    );
    still_serving(&p);
}

#[test]
fn ten_megabyte_output_is_refused() {
    // Building 10 MB inside the guest can take over the default 100 ms on a loaded machine; the
    // size check is what this test is about.
    let p = load_with("hostile", &[], &patient()).unwrap();
    let r = p.extract(&[ExtractRequest {
        output: "big".into(),
        choices: vec![],
    }]);
    let e = r[0].as_ref().unwrap_err();
    assert!(
        matches!(
            e.kind,
            CallErrorKind::OutputTooLarge {
                bytes: 10485760,
                max: 1048576
            }
        ),
        "{e}"
    );
    still_serving(&p);
}

#[test]
fn no_filesystem() {
    let p = load("hostile", &[]).unwrap();
    let r = p.grade(&[req("fs")]);
    let reason = &r[0].as_ref().unwrap().reason;
    assert!(reason.starts_with("fs: denied"), "{reason}");
}

#[test]
fn no_environment() {
    std::env::set_var("MALT_SECRET_FOR_TEST", "leak");
    let p = load("hostile", &[]).unwrap();
    let r = p.grade(&[req("env")]);
    let reason = &r[0].as_ref().unwrap().reason;
    assert_eq!(reason, "env: 0 vars [] HOME=None PATH=None");
}

#[test]
fn one_poisonous_item_does_not_fail_its_batch_mates() {
    let p = load_with("hostile", &[], &patient()).unwrap();
    let items = [
        req("1"),
        req("loop"),
        req("2"),
        req("panic"),
        req("3"),
        req("bomb"),
        req("4"),
    ];
    let r = p.grade(&items);
    assert_eq!(r.len(), items.len());
    for i in [0, 2, 4, 6] {
        assert_eq!(r[i].as_ref().unwrap().reward, 1.0, "item {i}");
    }
    assert!(matches!(
        r[1].as_ref().unwrap_err().kind,
        CallErrorKind::Timeout { .. }
    ));
    assert!(matches!(
        r[3].as_ref().unwrap_err().kind,
        CallErrorKind::Trap(_)
    ));
    assert!(matches!(
        r[5].as_ref().unwrap_err().kind,
        CallErrorKind::MemoryLimit { .. }
    ));
    let s = p.stats();
    assert_eq!(s.item_errors, 3, "{s:?}");
    assert!(s.rebuilds >= 4, "{s:?}");
}

#[test]
fn big_batches_get_a_scaled_deadline() {
    let p = load("hostile", &[]).unwrap();
    let items: Vec<GradeRequest> = (0..20_000).map(|i| req(&i.to_string())).collect();
    let r = p.grade(&items);
    assert!(r
        .iter()
        .all(|g| g.as_ref().map(|g| g.reward == 1.0).unwrap_or(false)));
    assert_eq!(p.stats().timeouts, 0);
}

#[test]
fn configure_errors_are_load_errors() {
    let e = load("hostile", &[("mode", "reject")]).unwrap_err();
    assert!(matches!(e, PluginError::Configure { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "plugin `hostile`: configure refused the options: mode=reject: rejected on purpose"
    );
    let e = load("hostile", &[("mode", "panic")]).unwrap_err();
    assert!(e.to_string().contains("configure panic"), "{e}");
    let e = load("hostile", &[("mode", "loop")]).unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
}

#[test]
fn many_threads_share_one_plugin() {
    let p = std::sync::Arc::new(load("hostile", &[]).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let gold = if i == 25 && t == 0 {
                        "panic".to_string()
                    } else {
                        format!("{t}-{i}")
                    };
                    let r = p.grade(&[req(&gold), req("ok")]);
                    assert_eq!(r[1].as_ref().unwrap().reward, 1.0);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(p.stats().item_errors, 1);
}

#[test]
fn conformance_battery_runs_on_a_well_behaved_input_set() {
    let p = load("hostile", &[]).unwrap();
    let report = malt_plugins::conformance::run(&p, &[]);
    // The hostile plugin passes: its misbehaviour needs magic inputs the battery never sends.
    assert!(report.passed(), "{report}");
}
