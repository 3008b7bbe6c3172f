//! `[rounds]` end to end on the tiny model and the parity fixture: two rounds with rising
//! theta, every round's trees, datasets, adapters and report kept; killed while round 2
//! samples its trees and again while it trains, then resumed to byte-identical reports.

mod common;
#[path = "pipeline_support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Child;

use malt_eval::Report;
use support::*;

/// Waits for `path` to have at least `n` lines, or panics when the child ends first.
fn kill_at_lines(child: &mut Child, path: &Path, n: usize) {
    kill_when(child, &format!("{} lines in {}", n, path.display()), || {
        lines(path) >= n
    });
}

#[test]
fn rounds_keep_every_round_and_resume_after_a_kill() {
    let fx = fixture();
    let text = format!(
        "{}systems = [\"single\", \"untrained\", \"star\", \"malt\"]\n\n[rounds]\ncount = 2\ntheta = [0.5, 0.6]\n",
        config(&fx.model, &fx.plugin, 0.5, "even")
    );
    let cfg = fx.write_text("rounds", &text);
    let systems = ["single", "untrained_chain", "star", "trained_chain"];

    let a = fx.workdir("a");
    let a_run = a.join("runs/pipeline");
    let a_log = fx.root.join("a.log");
    let first = run_to_end(&cfg, &a, &a_log);
    assert!(first.contains("generate (round 2)"), "{first}");
    let a2 = a_run.join("rounds/2");
    for (dir, eval) in [(&a_run, a_run.join("eval")), (&a2, a2.join("eval"))] {
        check_report_of(dir, &eval, &systems);
        assert_eq!(question_ids(dir).len(), 8);
        for agent in ["generator", "verifier", "refiner"] {
            assert!(
                malt_train::final_adapter_dir(dir, agent).is_some(),
                "{agent}"
            );
        }
        assert!(dir.join("stages/eval.json").is_file());
    }
    // Round 2 sampled its own trees, with round 1's adapters.
    let trees = |d: &Path| malt_tree::read_trees(&d.join("trees.jsonl")).unwrap().trees;
    assert_ne!(trees(&a_run), trees(&a2));
    let manifest = malt_tree::Manifest::load(&a2).unwrap();
    assert!(
        manifest.model.contains("adapters of round 1"),
        "{}",
        manifest.model
    );
    // Round 2's report shows both rounds; the systems without adapters are round 1's attempts.
    let r1 = report(&a_run);
    let r2: Report =
        serde_json::from_str(&std::fs::read_to_string(a2.join("eval/report.json")).unwrap())
            .unwrap();
    let rounds: Vec<(u32, f64)> = r2.rounds.iter().map(|r| (r.round, r.theta)).collect();
    assert_eq!(rounds, [(1, 0.5), (2, 0.6)]);
    assert_eq!(r1.rounds.len(), 1);
    for id in [
        "single",
        "single_mv3",
        "untrained_chain",
        "untrained_chain_mv3",
    ] {
        let row = |r: &Report| {
            r.systems
                .iter()
                .find(|s| s.id == id)
                .unwrap()
                .per_seed
                .clone()
        };
        assert_eq!(row(&r1), row(&r2), "{id}");
        assert_eq!(
            r2.rounds[0]
                .rows
                .iter()
                .find(|x| x.id == id)
                .unwrap()
                .mean_pct,
            r1.systems.iter().find(|s| s.id == id).unwrap().mean_pct
        );
    }
    let md = std::fs::read_to_string(a2.join("eval/report.md")).unwrap();
    assert!(md.contains("## Accuracy by round"), "{md}");
    assert!(a2.join("eval/rounds.svg").is_file());

    // B: killed while round 2 samples its trees, again while it trains, then resumed.
    let b = fx.workdir("b");
    let b_run = b.join("runs/pipeline");
    let b2 = b_run.join("rounds/2");
    let b_log = fx.root.join("b.log");
    let mut child = spawn(&cfg, &b, &b_log);
    kill_at_lines(&mut child, &b2.join("trees.jsonl"), 2);
    assert!(
        lines(&b2.join("trees.jsonl")) < 8,
        "round 2 was not interrupted"
    );
    assert_eq!(stage_status(&b2, "generate")["status"], "running");
    assert_eq!(stage_status(&b_run, "eval")["status"], "done");
    let mut child = spawn(&cfg, &b, &b_log);
    kill_when(&mut child, "a round 2 training checkpoint", || {
        !checkpoints(&b2).is_empty()
    });
    assert_eq!(stage_status(&b2, "train")["status"], "running");
    let resumed = run_to_end(&cfg, &b, &b_log);
    assert!(
        resumed.contains("train: interrupted earlier, resuming"),
        "{resumed}"
    );
    for stage in ["generate", "credit", "train", "star", "eval"] {
        assert_eq!(stage_status(&b_run, stage)["status"], "done", "{stage}");
        assert_eq!(stage_status(&b2, stage)["status"], "done", "{stage}");
    }
    assert_eq!(question_ids(&b2).len(), 8);
    // Every round's outputs equal the uninterrupted run's.
    for (x, y) in [(&a_run, &b_run), (&a2, &b2)] {
        assert_eq!(trees(x), trees(y));
        for f in ["eval/report.json", "eval/results.jsonl", "eval/report.md"] {
            assert_eq!(
                std::fs::read(x.join(f)).unwrap(),
                std::fs::read(y.join(f)).unwrap(),
                "{} differs after the kills",
                y.join(f).display()
            );
        }
    }
    // Once finished, every stage of every round is current.
    let again = run_to_end(&cfg, &b, &b_log);
    assert_eq!(again.matches("current, skipped").count(), 10, "{again}");
}

/// `[rounds]` with the remote backend against `malt serve` on loopback: round 2's trees come
/// from the server with round 1's adapters loaded into it for the round (`{agent}-round1`),
/// node for node those of the embedded run; the run unloads them once the trees are sampled.
#[test]
fn rounds_with_remote_generation_serve_the_previous_rounds_adapters() {
    let fx = fixture();
    let text = format!(
        "{}systems = [\"single\", \"malt\"]\n\n[rounds]\ncount = 2\ntheta = [0.5, 0.6]\n",
        config(&fx.model, &fx.plugin, 0.5, "even")
    );
    let embedded = fx.write_text("rounds-embedded", &text);
    let a = fx.workdir("embedded");
    run_to_end(&embedded, &a, &fx.root.join("a.log"));

    let (_server, url) = serve_in_process(&fx.model);
    let remote = fx.write_text(
        "rounds-remote",
        &format!(
            "{text}\n[generation]\nbackend = \"remote\"\n\n[[generation.endpoints]]\nurl = \"{url}\"\n"
        ),
    );
    let b = fx.workdir("remote");
    let log = run_to_end(&remote, &b, &fx.root.join("b.log"));
    assert!(log.contains("verifier-round1"), "{log}");
    // The embedded sampler also records log-probs, which plain remote generation does not ask
    // for; everything else is the same.
    let nodes = |run: &Path| -> Vec<serde_json::Value> {
        malt_tree::read_trees(&run.join("trees.jsonl"))
            .unwrap()
            .trees
            .iter()
            .flat_map(|t| t.nodes.clone())
            .map(|mut n| {
                n.logprobs = None;
                serde_json::to_value(n).unwrap()
            })
            .collect()
    };
    for r in ["runs/pipeline", "runs/pipeline/rounds/2"] {
        let (x, y) = (nodes(&a.join(r)), nodes(&b.join(r)));
        assert_eq!(x.len(), y.len(), "{r}");
        assert!(
            x == y,
            "{r}: the remote trees differ from the embedded ones"
        );
    }
    let manifest = malt_tree::Manifest::load(&b.join("runs/pipeline/rounds/2")).unwrap();
    assert!(
        manifest.model.contains("adapters of round 1"),
        "{}",
        manifest.model
    );
    assert_eq!(
        served_models(&url),
        ["tiny"],
        "round 1's adapters left loaded"
    );
}
