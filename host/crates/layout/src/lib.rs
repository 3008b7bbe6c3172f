//! malt-layout: the run directory's layout, in one place. The tree store, the trainer, the
//! evaluation and the host all find their files through it, so a path has one spelling.
//!
//! ```text
//! runs/<name>/                 round 1 (and everything of a one-round run)
//!   manifest.json  trees.jsonl  run.lock  stats.json
//!   datasets/<agent>/{sft,dpo}.jsonl
//!   adapters/<agent>/{sft,dpo}/
//!   train/<agent>/{sft,dpo}/
//!   star/                      the STaR baseline: a one-agent run of its own (same layout)
//!   eval/                      results.jsonl, report.md, report.json, *.svg
//!   stages/<stage>.json        what `malt run` computed each stage from
//!   rounds/<k>/                round k >= 2 of `[rounds] count`, the same layout again
//! ```
//!
//! Round 1 lives at the run's root so that a one-round run (the default) is laid out exactly
//! as before rounds existed, and every command that reads a run keeps working on it.

use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
pub const TREES: &str = "trees.jsonl";
pub const LOCK: &str = "run.lock";
pub const STATS: &str = "stats.json";
pub const DATASETS: &str = "datasets";
pub const ADAPTERS: &str = "adapters";
pub const TRAIN: &str = "train";
pub const EVAL: &str = "eval";
pub const STAGES: &str = "stages";
pub const STAR: &str = "star";
pub const ROUNDS: &str = "rounds";
/// The evaluation's append-only attempt log, inside [`RoundLayout::eval`].
pub const RESULTS: &str = "results.jsonl";
/// Where `malt eval --partial` writes, inside [`RoundLayout::eval`].
pub const PARTIAL: &str = "partial";

/// A whole run directory (`[run] dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Round `k` (1-based; 0 is treated as 1): the root for round 1, `rounds/<k>/` after it.
    pub fn round(&self, k: u32) -> RoundLayout {
        let k = k.max(1);
        let dir = if k == 1 {
            self.root.clone()
        } else {
            self.root.join(ROUNDS).join(k.to_string())
        };
        RoundLayout { dir, round: k }
    }

    /// The rounds present on disk, in order: round 1 always, then every `rounds/<k>/`.
    pub fn rounds_on_disk(&self) -> Vec<u32> {
        let mut ks: Vec<u32> = std::fs::read_dir(self.root.join(ROUNDS))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&k| k >= 2)
            .collect();
        ks.sort_unstable();
        ks.insert(0, 1);
        ks
    }

    /// The latest round whose `adapters/` exists (round 1 when none has): what `malt serve`
    /// and `malt export` hand out.
    pub fn latest_trained_round(&self) -> RoundLayout {
        self.rounds_on_disk()
            .into_iter()
            .rev()
            .map(|k| self.round(k))
            .find(|r| r.adapters().is_dir())
            .unwrap_or_else(|| self.round(1))
    }
}

/// One round of a run, or any directory laid out like one (the STaR sub-run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundLayout {
    dir: PathBuf,
    round: u32,
}

impl RoundLayout {
    /// A directory laid out like a round (for callers that were handed one, e.g. `malt train`
    /// on a run directory); its round number is taken as 1.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        RoundLayout {
            dir: dir.into(),
            round: 1,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// 1-based round number.
    pub fn round(&self) -> u32 {
        self.round
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    pub fn trees(&self) -> PathBuf {
        self.dir.join(TREES)
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.join(LOCK)
    }

    pub fn stats(&self) -> PathBuf {
        self.dir.join(STATS)
    }

    /// `datasets/`: every agent's sets.
    pub fn datasets(&self) -> PathBuf {
        self.dir.join(DATASETS)
    }

    /// `datasets/<agent>/`.
    pub fn agent_datasets(&self, agent: &str) -> PathBuf {
        self.datasets().join(agent)
    }

    /// `datasets/<agent>/<phase>.jsonl` (`phase`: `sft` or `dpo`).
    pub fn dataset(&self, agent: &str, phase: &str) -> PathBuf {
        self.agent_datasets(agent).join(format!("{phase}.jsonl"))
    }

    /// `adapters/`: every agent's trained adapters.
    pub fn adapters(&self) -> PathBuf {
        self.dir.join(ADAPTERS)
    }

    /// `adapters/<agent>/<phase>/`: one PEFT adapter.
    pub fn adapter(&self, agent: &str, phase: &str) -> PathBuf {
        self.adapters().join(agent).join(phase)
    }

    /// `train/`: the trainer's work directories.
    pub fn train(&self) -> PathBuf {
        self.dir.join(TRAIN)
    }

    /// `train/<agent>/<phase>/`: metrics, loss curve, checkpoints of one phase.
    pub fn train_phase(&self, agent: &str, phase: &str) -> PathBuf {
        self.train().join(agent).join(phase)
    }

    /// `eval/`: the evaluation's log and reports.
    pub fn eval(&self) -> PathBuf {
        self.dir.join(EVAL)
    }

    /// `eval/results.jsonl`.
    pub fn eval_results(&self) -> PathBuf {
        self.eval().join(RESULTS)
    }

    /// `stages/`: `malt run`'s records.
    pub fn stages(&self) -> PathBuf {
        self.dir.join(STAGES)
    }

    /// `stages/<stage>.json`.
    pub fn stage_record(&self, stage: &str) -> PathBuf {
        self.stages().join(format!("{stage}.json"))
    }

    /// `online/`: `malt online`'s work: `metrics.jsonl` (one line per step), `rewards.svg`
    /// (each agent's mean reward per step), `tensorboard/`, `trees/`
    /// (`step-XXXXXXXX.jsonl`, each step's scored trees), `checkpoints/step-XXXXXXXX/`
    /// (`adapters/<agent>/`, `optimizer/<agent>.safetensors`, `state.json`; the newest two
    /// kept) and `adapters/<agent>/` (the last step's adapters).
    pub fn online(&self) -> PathBuf {
        self.dir.join("online")
    }

    /// `online/adapters/<agent>/`: the adapter `malt online` left for `agent` (PEFT).
    pub fn online_adapter(&self, agent: &str) -> PathBuf {
        self.online().join(ADAPTERS).join(agent)
    }

    /// The STaR baseline of this round: a one-agent run laid out like a round.
    pub fn star(&self) -> RoundLayout {
        RoundLayout {
            dir: self.dir.join(STAR),
            round: self.round,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_one_is_the_root_and_later_rounds_nest() {
        let run = RunLayout::new("/r");
        let r1 = run.round(1);
        assert_eq!(r1.dir(), Path::new("/r"));
        assert_eq!(run.round(0), r1);
        assert_eq!(r1.trees(), Path::new("/r/trees.jsonl"));
        assert_eq!(
            r1.dataset("verifier", "dpo"),
            Path::new("/r/datasets/verifier/dpo.jsonl")
        );
        assert_eq!(
            r1.adapter("refiner", "sft"),
            Path::new("/r/adapters/refiner/sft")
        );
        assert_eq!(
            r1.train_phase("refiner", "sft"),
            Path::new("/r/train/refiner/sft")
        );
        assert_eq!(r1.eval_results(), Path::new("/r/eval/results.jsonl"));
        assert_eq!(r1.stage_record("eval"), Path::new("/r/stages/eval.json"));
        let r3 = run.round(3);
        assert_eq!(r3.round(), 3);
        assert_eq!(r3.dir(), Path::new("/r/rounds/3"));
        assert_eq!(
            r3.star().adapter("generator", "sft"),
            Path::new("/r/rounds/3/star/adapters/generator/sft")
        );
    }

    #[test]
    fn rounds_on_disk_and_the_latest_trained_one() {
        let d = tempfile::tempdir().unwrap();
        let run = RunLayout::new(d.path());
        assert_eq!(run.rounds_on_disk(), vec![1]);
        assert_eq!(run.latest_trained_round().round(), 1);
        for k in ["2", "10", "x", "0"] {
            std::fs::create_dir_all(d.path().join("rounds").join(k)).unwrap();
        }
        assert_eq!(run.rounds_on_disk(), vec![1, 2, 10]);
        std::fs::create_dir_all(run.round(2).adapters()).unwrap();
        assert_eq!(run.latest_trained_round().round(), 2);
    }
}
