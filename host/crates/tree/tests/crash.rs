//! Crash safety: a writer process is SIGKILLed at pseudo-random instants many times and
//! resumed; the final `trees.jsonl` must equal an uninterrupted run's, byte for byte, with no
//! tree lost or duplicated.
//!
//! The writer is this very test binary, re-executed with a filter selecting
//! `crash_child_writer` and an environment variable naming the run directory.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use malt_base::mix::mix;
use malt_tree::fake::{fake_examples, FakeSampler, FakeScorer};
use malt_tree::store::{read_trees, Manifest, RunWriter, TREES};
use malt_tree::{generate_run, CreditSettings};

const CHILD_ENV: &str = "MALT_TREE_CRASH_CHILD_DIR";
const QUESTIONS: usize = 24;

fn write_run(dir: &Path, delay: Duration) {
    let chain = common::gvr(3);
    let manifest = Manifest::new(
        "# crash test",
        Default::default(),
        "fake",
        42,
        chain.clone(),
        CreditSettings::default(),
    );
    let mut run = RunWriter::open(dir, manifest).expect("open run");
    let mut sampler = FakeSampler {
        pad: 300,
        delay,
        ..Default::default()
    };
    generate_run(
        &mut run,
        &chain,
        &fake_examples(QUESTIONS),
        &mut sampler,
        &mut FakeScorer::default(),
        &mut |_| {},
    )
    .expect("generate");
}

/// The writer process; a no-op unless spawned by the test below.
#[test]
fn crash_child_writer() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        write_run(Path::new(&dir), Duration::from_millis(1));
    }
}

fn spawn_writer(dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer")
}

#[test]
fn sigkill_at_random_points_then_resume_equals_uninterrupted_run() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let reference = tempfile::tempdir().unwrap();
    write_run(reference.path(), Duration::ZERO);
    let want = std::fs::read(reference.path().join(TREES)).unwrap();

    let crashed = tempfile::tempdir().unwrap();
    let trees = crashed.path().join(TREES);
    let mut kills = 0;
    let mut prev = 0;
    let start = Instant::now();
    for i in 0..80u64 {
        let mut child = spawn_writer(crashed.path());
        std::thread::sleep(Duration::from_millis(5 + mix(i) % 90));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on Unix
            kills += 1;
        }
        child.wait().unwrap();
        // Every finished tree survives; a torn last record is at most one tree.
        let loaded = read_trees(&trees).unwrap();
        assert!(loaded.trees.len() >= prev, "lost trees after kill {i}");
        prev = loaded.trees.len();
        if prev == QUESTIONS || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(
        kills >= 10,
        "only {kills} kills landed; the writer is too fast for this test"
    );
    let status = spawn_writer(crashed.path()).wait().unwrap();
    assert!(status.success());

    let got = read_trees(&trees).unwrap();
    assert!(got.dropped_tail.is_none());
    let ids: Vec<_> = got.trees.iter().map(|t| t.question_id.clone()).collect();
    let want_ids: Vec<_> = fake_examples(QUESTIONS).into_iter().map(|e| e.id).collect();
    assert_eq!(ids, want_ids, "trees lost, duplicated or reordered");
    assert!(
        std::fs::read(&trees).unwrap() == want,
        "resumed run differs from the uninterrupted one"
    );
    eprintln!("{kills} SIGKILLs, final run identical to the uninterrupted one");
}
