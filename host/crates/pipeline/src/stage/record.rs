//! Stage currency for `malt run`: each stage records in `<run>/stages/<stage>.json` what it was
//! computed from (named hashes of the config sections, plugins, model and input files that affect
//! it) and a hash of what it produced. The next `malt run` compares:
//!
//! - same inputs, finished, outputs untouched: the stage is current and skipped;
//! - same inputs, not finished (crash, Ctrl-C): the stage resumes;
//! - different inputs: the stage's old outputs are stale; the caller discards what cannot be
//!   reused (checkpoints, eval attempts) and recomputes.
//!
//! Every stage's inputs include the hash of the previous stage's outputs, so a changed upstream
//! output invalidates everything downstream and an unchanged one (a re-credit that produced the
//! same datasets) keeps it current.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use malt_base::hash::{sha256_file, sha256_hex};
use serde::{Deserialize, Serialize};

/// Hash of a value's JSON form: config sections are compared by meaning, not by formatting.
pub fn json_hash<T: Serialize + ?Sized>(value: &T) -> String {
    sha256_hex(&serde_json::to_vec(value).unwrap_or_default())
}

/// Hash of the files under `root` whose path (relative to `root`) satisfies `keep`: names and
/// contents, in sorted order. A missing root hashes as empty.
pub fn tree_hash(root: &Path, keep: &dyn Fn(&Path) -> bool) -> anyhow::Result<String> {
    let mut files = Vec::new();
    collect_files(root, root, &mut files)?;
    files.retain(|p| keep(p));
    files.sort();
    let mut listing = String::new();
    for rel in files {
        let path = root.join(&rel);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        listing.push_str(&format!("{} {}\n", sha256_hex(&bytes), rel.display()));
    }
    Ok(sha256_hex(listing.as_bytes()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        // Temporary files of an atomic write in progress are not outputs.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// Hash of one file's content; a missing file hashes as the empty string's hash.
pub fn file_hash(path: &Path) -> anyhow::Result<String> {
    match sha256_file(path) {
        Ok(sha) => Ok(sha),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(sha256_hex(b"")),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Done,
}

/// The content of `<run>/stages/<stage>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordFile {
    pub stage: String,
    pub status: Status,
    /// Input name -> hash (e.g. `config [credit]`, `trees.jsonl`, `plugin parity`).
    pub inputs: BTreeMap<String, String>,
    /// Hash of the stage's outputs when it finished.
    pub outputs: Option<String>,
    pub malt_version: String,
}

/// What `malt run` does with a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Finished with these inputs and its outputs are untouched: skip.
    Current,
    /// Started with these inputs and interrupted: continue where it stopped.
    Resume,
    /// Never run (by `malt run`): run it, reusing whatever its own resume logic accepts.
    New,
    /// These inputs changed since it ran: its outputs are stale.
    InputsChanged(Vec<String>),
    /// Same inputs but its outputs changed since it finished (edited or removed by hand, or
    /// rewritten by a standalone command): run it again.
    OutputsChanged,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Current => write!(f, "current, skipped"),
            Decision::Resume => write!(f, "interrupted earlier, resuming"),
            Decision::New => write!(f, "no record of an earlier run, running"),
            Decision::InputsChanged(what) => {
                write!(f, "inputs changed ({}), recomputing", what.join(", "))
            }
            Decision::OutputsChanged => {
                write!(f, "outputs changed since it finished, running again")
            }
        }
    }
}

/// One stage of a run directory with the inputs it is about to be computed from.
pub struct StageRecord {
    pub name: &'static str,
    path: PathBuf,
    inputs: BTreeMap<String, String>,
}

impl StageRecord {
    pub fn new(
        run_dir: &Path,
        name: &'static str,
        inputs: BTreeMap<String, String>,
    ) -> StageRecord {
        StageRecord {
            name,
            path: malt_layout::RoundLayout::at(run_dir).stage_record(name),
            inputs,
        }
    }

    pub fn record_path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> anyhow::Result<Option<RecordFile>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        match serde_json::from_str(&text) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                // Derived bookkeeping: a damaged record only costs a recomputation.
                tracing::warn!(
                    "{}: unreadable stage record ({e}); treating the stage as never run",
                    self.path.display()
                );
                Ok(None)
            }
        }
    }

    /// Compares the stored record with this stage's inputs; `outputs` hashes the current
    /// outputs (only called for a finished stage).
    pub fn decide(
        &self,
        outputs: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<Decision> {
        let Some(rec) = self.read()? else {
            return Ok(Decision::New);
        };
        if rec.inputs != self.inputs {
            let keys: std::collections::BTreeSet<&String> =
                rec.inputs.keys().chain(self.inputs.keys()).collect();
            let changed = keys
                .into_iter()
                .filter(|k| rec.inputs.get(*k) != self.inputs.get(*k))
                .cloned()
                .collect();
            return Ok(Decision::InputsChanged(changed));
        }
        Ok(match rec.status {
            Status::Running => Decision::Resume,
            Status::Done if rec.outputs.as_deref() == Some(outputs()?.as_str()) => {
                Decision::Current
            }
            Status::Done => Decision::OutputsChanged,
        })
    }

    fn write(&self, status: Status, outputs: Option<String>) -> anyhow::Result<()> {
        let rec = RecordFile {
            stage: self.name.to_owned(),
            status,
            inputs: self.inputs.clone(),
            outputs,
            malt_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_vec_pretty(&rec)?;
        malt_base::atomic::write_atomic(&self.path, &text)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Marks the stage started with these inputs (a crash from here on resumes it).
    pub fn begin(&self) -> anyhow::Result<()> {
        self.write(Status::Running, None)
    }

    /// Marks the stage finished, with the hash of what it produced.
    pub fn finish(&self, outputs: String) -> anyhow::Result<()> {
        self.write(Status::Done, Some(outputs))
    }
}

/// Removes `path` (file or directory) if it exists.
pub fn discard(path: &Path) -> anyhow::Result<()> {
    let r = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else if path.exists() {
        std::fs::remove_file(path)
    } else {
        return Ok(());
    };
    tracing::info!("discarding stale {}", path.display());
    r.with_context(|| format!("cannot remove stale {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decisions_follow_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let a = StageRecord::new(
            dir.path(),
            "credit",
            inputs(&[("trees", "1"), ("theta", "x")]),
        );
        assert_eq!(a.decide(|| Ok("o".into())).unwrap(), Decision::New);
        a.begin().unwrap();
        assert_eq!(a.decide(|| Ok("o".into())).unwrap(), Decision::Resume);
        a.finish("o".into()).unwrap();
        assert_eq!(a.decide(|| Ok("o".into())).unwrap(), Decision::Current);
        assert_eq!(
            a.decide(|| Ok("p".into())).unwrap(),
            Decision::OutputsChanged
        );
        let b = StageRecord::new(
            dir.path(),
            "credit",
            inputs(&[("trees", "1"), ("theta", "y")]),
        );
        assert_eq!(
            b.decide(|| Ok("o".into())).unwrap(),
            Decision::InputsChanged(vec!["theta".into()])
        );
        let c = StageRecord::new(dir.path(), "credit", inputs(&[("trees", "1")]));
        assert_eq!(
            c.decide(|| Ok("o".into())).unwrap(),
            Decision::InputsChanged(vec!["theta".into()])
        );
    }

    #[test]
    fn tree_hash_sees_names_and_contents_and_skips_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let all = |_: &Path| true;
        let empty = tree_hash(&dir.path().join("missing"), &all).unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), "1").unwrap();
        let h1 = tree_hash(dir.path(), &all).unwrap();
        assert_ne!(h1, empty);
        std::fs::write(dir.path().join("a/.x.tmp"), "junk").unwrap();
        assert_eq!(tree_hash(dir.path(), &all).unwrap(), h1);
        std::fs::write(dir.path().join("a/x"), "2").unwrap();
        assert_ne!(tree_hash(dir.path(), &all).unwrap(), h1);
    }
}
