//! The result log: one JSON line per (seed, system, question, attempt), appended as soon as the
//! attempt finishes, so a crashed or interrupted evaluation resumes where it stopped.
//!
//! Line format (`results.jsonl`):
//! `{"seed":1,"system":"trained_chain","example_idx":17,"attempt":0,"sample_seed":123,
//!   "turns":[{"agent":"generator","output":"...","outcome":{"kind":"answer","answer":"42","correct":true}}, ...],
//!   "error":null}`
//! `outcome.kind` is `answer` (with `answer`, optional `key`, `correct`), `unparseable` or
//! `no_answer`; a turn the system skips has `"skipped":true`. An errored attempt has
//! `"turns":[]` and `"error":"message"`. Logs written before systems were configurable name the
//! system `"variant"`; they read the same.
//!
//! Robustness rules on reopen: a last line that does not parse is a torn write from a crash; it
//! is dropped with a warning and cut from the file so the next append starts on a clean line.
//! A bad line anywhere else means the file was damaged or edited and is an error (silently
//! skipping it would change the figures). A key seen twice keeps its first record.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::trace::{ChainTrace, Outcome, Turn};

/// Identity of one attempt; the resume key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptKey {
    pub seed: u64,
    /// A [`crate::plan::System`] id.
    pub system: String,
    pub example_idx: usize,
    pub attempt: u32,
}

impl std::fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} / {} / example {} / attempt {}",
            self.seed, self.system, self.example_idx, self.attempt
        )
    }
}

/// One line of the result log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub seed: u64,
    #[serde(alias = "variant")]
    pub system: String,
    pub example_idx: usize,
    pub attempt: u32,
    pub sample_seed: u64,
    #[serde(default)]
    pub turns: Vec<Turn>,
    /// Set when the runner reported [`crate::ChainError::Item`]; the attempt counts as wrong.
    #[serde(default)]
    pub error: Option<String>,
}

impl AttemptRecord {
    /// The record of a finished attempt; `Err` holds the message of an errored attempt.
    pub fn new(key: AttemptKey, sample_seed: u64, result: Result<ChainTrace, String>) -> Self {
        let (turns, error) = match result {
            Ok(trace) => (trace.turns, None),
            Err(message) => (Vec::new(), Some(message)),
        };
        AttemptRecord {
            seed: key.seed,
            system: key.system,
            example_idx: key.example_idx,
            attempt: key.attempt,
            sample_seed,
            turns,
            error,
        }
    }

    pub fn key(&self) -> AttemptKey {
        AttemptKey {
            seed: self.seed,
            system: self.system.clone(),
            example_idx: self.example_idx,
            attempt: self.attempt,
        }
    }

    pub fn is_errored(&self) -> bool {
        self.error.is_some()
    }

    /// The final outcome, `None` for an errored attempt.
    pub fn final_outcome(&self) -> Option<&Outcome> {
        if self.is_errored() {
            return None;
        }
        Some(crate::trace::final_outcome(&self.turns))
    }

    /// The outcome of turn `t`, `None` for an errored attempt. A trace shorter than `t + 1`
    /// (a chain that stopped early) is unparseable at `t`.
    pub fn outcome_at(&self, t: usize) -> Option<&Outcome> {
        if self.is_errored() {
            return None;
        }
        const UNPARSEABLE: &Outcome = &Outcome::Unparseable;
        Some(
            self.turns
                .get(t)
                .map(|turn| &turn.outcome)
                .unwrap_or(UNPARSEABLE),
        )
    }
}

/// The open result log: records read at open time plus everything appended since.
#[derive(Debug)]
pub struct ResultLog {
    path: PathBuf,
    file: File,
    records: BTreeMap<AttemptKey, AttemptRecord>,
}

impl ResultLog {
    /// Opens (creating if needed) the log at `path` and loads its records (see module doc).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| EvalError::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| EvalError::io(&path, e))?;

        let Parsed {
            records,
            keep_len,
            needs_newline,
        } = parse(&path, &bytes)?;
        if keep_len < bytes.len() {
            file.set_len(keep_len as u64)
                .map_err(|e| EvalError::io(&path, e))?;
        }
        if needs_newline {
            // A complete record whose newline never hit the disk: terminate it so the next
            // append does not glue onto it.
            file.write_all(b"\n").map_err(|e| EvalError::io(&path, e))?;
        }
        Ok(ResultLog {
            path,
            file,
            records,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, key: &AttemptKey) -> bool {
        self.records.contains_key(key)
    }

    pub fn records(&self) -> &BTreeMap<AttemptKey, AttemptRecord> {
        &self.records
    }

    /// Appends `record` unless its key is already logged (then it is a no-op: the first result
    /// stands). The line is written with a single `write_all` and flushed before returning.
    pub fn append(&mut self, record: AttemptRecord) -> Result<(), EvalError> {
        let key = record.key();
        if self.records.contains_key(&key) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|e| EvalError::io(&self.path, e))?;
        self.records.insert(key, record);
        Ok(())
    }
}

/// What a log's bytes hold: its records, the length to keep (without a torn last line) and
/// whether the last complete record lacks its newline.
struct Parsed {
    records: BTreeMap<AttemptKey, AttemptRecord>,
    keep_len: usize,
    needs_newline: bool,
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, EvalError> {
    let mut records = BTreeMap::new();
    let mut offset = 0usize;
    let mut line_no = 0usize;
    let mut keep_len = bytes.len();
    let mut needs_newline = false;
    while offset < bytes.len() {
        line_no += 1;
        let end = bytes[offset..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| offset + p);
        let line = &bytes[offset..end.unwrap_or(bytes.len())];
        let next = end.map(|e| e + 1).unwrap_or(bytes.len());
        let is_last = next >= bytes.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            offset = next;
            continue;
        }
        match serde_json::from_slice::<AttemptRecord>(line) {
            Ok(rec) => {
                match records.entry(rec.key()) {
                    Entry::Vacant(slot) => {
                        slot.insert(rec);
                    }
                    Entry::Occupied(slot) => {
                        let key = slot.key();
                        tracing::warn!(path = %path.display(), line = line_no, %key,
                            "duplicate result line ignored (first one kept)");
                    }
                }
                needs_newline = end.is_none();
            }
            Err(e) if is_last => {
                tracing::warn!(path = %path.display(), line = line_no, error = %e,
                    "dropping torn last line of the result log");
                keep_len = offset;
            }
            Err(e) => {
                return Err(EvalError::CorruptLog {
                    path: path.to_path_buf(),
                    line: line_no,
                    message: e.to_string(),
                })
            }
        }
        offset = next;
    }
    Ok(Parsed {
        records,
        keep_len,
        needs_newline,
    })
}

/// The records of the log at `path` without opening it for writing: safe while another process
/// appends (a torn last line is skipped, not truncated).
pub fn read_records(path: &Path) -> Result<BTreeMap<AttemptKey, AttemptRecord>, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    Ok(parse(path, &bytes)?.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(attempt: u32, correct: bool) -> AttemptRecord {
        AttemptRecord {
            seed: 1,
            system: "single".into(),
            example_idx: 3,
            attempt,
            sample_seed: 9,
            turns: vec![Turn {
                agent: "generator".into(),
                output: "x\n\"quoted\"".into(),
                outcome: Outcome::Answer {
                    answer: "4".into(),
                    key: None,
                    correct,
                },
                skipped: false,
                truncated: false,
            }],
            error: None,
        }
    }

    #[test]
    fn logs_that_name_the_system_variant_still_read() {
        let line = r#"{"seed":1,"variant":"single","example_idx":3,"attempt":0,"sample_seed":9,"turns":[{"agent":"generator","output":"x\n\"quoted\"","outcome":{"kind":"answer","answer":"4","correct":true}}],"error":null}"#;
        let r: AttemptRecord = serde_json::from_str(line).expect("old line");
        assert_eq!(r, rec(0, true));
        let new = serde_json::to_string(&r).expect("json");
        assert!(
            new.contains(r#""system":"single""#) && !new.contains("skipped"),
            "{new}"
        );
    }

    #[test]
    fn roundtrip_and_no_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        {
            let mut log = ResultLog::open(&path).expect("open");
            log.append(rec(0, true)).expect("append");
            log.append(rec(0, false)).expect("dup is a no-op");
            log.append(rec(1, false)).expect("append");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        let log = ResultLog::open(&path).expect("reopen");
        assert_eq!(log.records().len(), 2);
        assert_eq!(log.records().values().next(), Some(&rec(0, true)));
    }

    #[test]
    fn torn_last_line_is_dropped_and_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        let good = serde_json::to_string(&rec(0, true)).expect("json");
        std::fs::write(&path, format!("{good}\n{{\"seed\":1,\"vari")).expect("write");
        let mut log = ResultLog::open(&path).expect("open");
        assert_eq!(log.records().len(), 1);
        log.append(rec(1, true)).expect("append");
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        assert_eq!(ResultLog::open(&path).expect("reopen").records().len(), 2);
    }

    #[test]
    fn complete_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        let good = serde_json::to_string(&rec(0, true)).expect("json");
        std::fs::write(&path, &good).expect("write");
        let mut log = ResultLog::open(&path).expect("open");
        log.append(rec(1, true)).expect("append");
        drop(log);
        assert_eq!(ResultLog::open(&path).expect("reopen").records().len(), 2);
    }

    #[test]
    fn corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        let good = serde_json::to_string(&rec(0, true)).expect("json");
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).expect("write");
        assert!(matches!(
            ResultLog::open(&path),
            Err(EvalError::CorruptLog { line: 2, .. })
        ));
    }
}
