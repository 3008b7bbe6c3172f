//! The credit benchmark as a test: a quick run always, the full one with `--ignored`
//! (`cargo test -p malt-bench --release --test credit -- --ignored --nocapture`).

use std::time::Duration;

use malt_bench::credit::{run_credit_bench, CreditBenchOptions};

#[test]
fn quick_bench_runs_and_self_checks() {
    let r = run_credit_bench(&CreditBenchOptions {
        trees: 2000,
        min_time: Duration::from_millis(50),
        stored_trees: 20,
        pad: 100,
        ..Default::default()
    })
    .unwrap();
    eprintln!("{r}");
    assert!(r.fast_leaves_per_sec > 1e6, "{r}");
    assert!(r.ratio() > 1.0, "{r}");
    assert_eq!(r.stored.unwrap().trees, 20);
}

#[test]
#[ignore]
fn full_bench() {
    let r = run_credit_bench(&CreditBenchOptions::default()).unwrap();
    eprintln!("{r}");
    assert!(r.fast_leaves_per_sec > 1e6);
    assert!(r.stored.unwrap().total < Duration::from_secs(2));
}
