//! The reference experiments committed under `results/`: every `report.json` agrees with its
//! own per-seed counts (each accuracy is correct / total, each mean and std those of the
//! per-seed accuracies in the report's convention, each paired comparison's difference, counts
//! and p-values follow from its two rows: the per-pair sign test of a format-2 report, the
//! distinct-question test and Holm's correction of a format-3 one, which also re-renders from
//! its stored answers to itself), its `report.md` is exactly what the report renders to, and
//! every `results/` link of the README points at a file that exists.
//!
//! After a change of `report.md`'s wording, `MALT_RENDER_RESULTS=1 cargo test -p malt-eval
//! --test committed_results` writes every committed `report.md` anew from its `report.json`
//! (the figures are still checked), for the diff to be reviewed.

use std::path::{Path, PathBuf};

use malt_eval::significance::{holm, sign_test};
use malt_eval::stats::mean;
use malt_eval::Report;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("results").is_dir() && d.join("README.md").is_file())
        .expect("the repository root holds results/")
        .to_path_buf()
}

fn reports(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list results") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            reports(&path, out);
        } else if path.file_name().and_then(|n| n.to_str()) == Some("report.json") {
            out.push(path);
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn check(path: &Path) {
    let at = path.display();
    let text = std::fs::read_to_string(path).expect("read report.json");
    let r: Report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert_eq!(r.subsets.len(), r.plan.seeds.len(), "{at}");
    assert_eq!(r.systems.len(), 2 * r.plan.systems.len(), "{at}");
    for s in &r.systems {
        let mut pcts = Vec::new();
        for (a, seed) in s.per_seed.iter().zip(&r.plan.seeds) {
            assert_eq!(a.seed, *seed, "{at}: {}", s.id);
            assert_eq!(a.total, r.plan.questions, "{at}: {}", s.id);
            assert!(a.correct <= a.total, "{at}: {}", s.id);
            let pct = 100.0 * a.correct as f64 / a.total as f64;
            assert!(close(a.accuracy_pct, pct), "{at}: {} seed {}", s.id, a.seed);
            pcts.push(pct);
        }
        assert!(
            close(s.mean_pct, mean(&pcts).expect("seeds")),
            "{at}: {}",
            s.id
        );
        match (s.std_pct, r.plan.std.std(&pcts)) {
            (Some(x), Some(y)) => assert!(close(x, y), "{at}: {}", s.id),
            (x, y) => assert_eq!(x, y, "{at}: {}", s.id),
        }
    }
    let row = |id: &str| {
        r.systems
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("{at}: no row {id}"))
    };
    for c in &r.comparisons {
        let (refr, other) = (row(&c.reference), row(&c.row));
        assert_eq!(
            c.pairs,
            r.plan.seeds.len() * r.plan.questions,
            "{at}: {}",
            c.row
        );
        let net = refr.per_seed.iter().map(|a| a.correct as i64).sum::<i64>()
            - other.per_seed.iter().map(|a| a.correct as i64).sum::<i64>();
        assert_eq!(
            net,
            c.reference_only as i64 - c.row_only as i64,
            "{at}: {}",
            c.row
        );
        let diffs: Vec<f64> = refr
            .per_seed
            .iter()
            .zip(&other.per_seed)
            .map(|(a, b)| a.accuracy_pct - b.accuracy_pct)
            .collect();
        assert_eq!(diffs.len(), c.diff_per_seed_pct.len(), "{at}");
        for (x, y) in diffs.iter().zip(&c.diff_per_seed_pct) {
            assert!(close(*x, *y), "{at}: {}", c.row);
        }
        assert!(close(c.diff_mean_pct, mean(&diffs).expect("seeds")), "{at}");
        match (&c.test, c.sign_test_p) {
            (Some(t), None) => {
                let p = sign_test(t.reference_wins as u64, t.row_wins as u64);
                assert!((t.p - p).abs() < 1e-12, "{at}: {}", c.row);
                // A question favours a side only if some pair of it does.
                assert!(t.reference_wins <= c.reference_only, "{at}: {}", c.row);
                assert!(t.row_wins <= c.row_only, "{at}: {}", c.row);
                assert!(t.questions <= c.pairs, "{at}: {}", c.row);
            }
            (None, Some(p)) => {
                assert!(
                    r.format < 3,
                    "{at}: format {} with a per-pair test",
                    r.format
                );
                let want = sign_test(c.reference_only as u64, c.row_only as u64);
                assert!((p - want).abs() < 1e-12, "{at}: {}", c.row);
            }
            (t, p) => panic!("{at}: {}: test {t:?} and per-pair p {p:?}", c.row),
        }
    }
    let tests: Vec<_> = r
        .comparisons
        .iter()
        .filter_map(|c| c.test.as_ref())
        .collect();
    let adjusted = holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    for (t, h) in tests.iter().zip(adjusted) {
        assert!((t.holm_p - h).abs() < 1e-12, "{at}: Holm");
    }
    if r.format >= 3 {
        let again = malt_eval::rerender(&r).unwrap_or_else(|e| panic!("{at}: {e}"));
        let again = Report {
            format: r.format,
            ..again
        };
        assert!(
            again == r,
            "{at} does not re-render from its answers to itself"
        );
    }
    if let Some(star) = &r.star {
        assert!(star.kept <= star.samples, "{at}");
    }
    if let Some(last) = r.rounds.last() {
        for x in &last.rows {
            assert!(close(x.mean_pct, row(&x.id).mean_pct), "{at}: {}", x.id);
        }
    }
    let md = path.with_file_name("report.md");
    if std::env::var_os("MALT_RENDER_RESULTS").is_some() {
        std::fs::write(&md, malt_eval::render_markdown(&r))
            .unwrap_or_else(|e| panic!("{}: {e}", md.display()));
        return;
    }
    assert_eq!(
        std::fs::read_to_string(&md).unwrap_or_else(|e| panic!("{}: {e}", md.display())),
        malt_eval::render_markdown(&r),
        "{} is not what {at} renders to",
        md.display()
    );
}

#[test]
fn committed_reports_agree_with_their_counts() {
    let root = repo();
    let mut found = Vec::new();
    reports(&root.join("results"), &mut found);
    assert!(!found.is_empty(), "no report.json under results/");
    for path in &found {
        check(path);
    }
}

#[test]
fn readme_links_into_results_exist() {
    let root = repo();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let mut links = 0;
    for (i, _) in readme.match_indices("](results/") {
        let rest = &readme[i + 2..];
        let end = rest.find(')').expect("closing parenthesis");
        let target = rest[..end].split('#').next().unwrap_or_default();
        assert!(
            root.join(target).exists(),
            "README links to {target}, which does not exist"
        );
        links += 1;
    }
    assert!(links > 0, "the README's result tables link to results/");
}
