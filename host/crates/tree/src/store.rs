//! The run directory: `manifest.json`, `trees.jsonl`, `run.lock`, and derived outputs.
//!
//! Durability: each finished tree is one line written with a single `write_all` on a file
//! opened for append, then `fsync`ed; the directory is `fsync`ed when a file is created, so
//! the new name survives power loss. A crash therefore leaves every finished tree intact and
//! at most one torn last line, which its checksum exposes; it is dropped with a warning (and
//! cut off before the writer appends again). Derived files (manifest, datasets, stats) are
//! written to a temporary name, fsynced and renamed, so readers see the old or the new file.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use malt_base::atomic::{sync_dir, write_atomic};
use malt_base::hash::sha256_hex;
use serde::{Deserialize, Serialize};

use crate::chain::ChainSpec;
use crate::credit::CreditSettings;
use crate::error::{Result, TreeError};
use crate::tree::Tree;

pub use malt_layout::{LOCK, MANIFEST, TREES};
pub const MANIFEST_FORMAT: u32 = 1;

/// What a run was generated from. Written once when the run is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of this file's layout (currently 1).
    pub format: u32,
    /// `CARGO_PKG_VERSION` of the writer.
    pub malt_version: String,
    /// The config file's text, verbatim.
    pub config_text: String,
    /// Lowercase hex SHA-256 of `config_text`.
    pub config_sha256: String,
    /// Plugin name -> lowercase hex SHA-256 of its component file.
    pub plugins: BTreeMap<String, String>,
    /// Model identity (e.g. repo id + revision + weights hash), as the model layer names it.
    pub model: String,
    /// Fingerprint of the tokenizer and chat template the trees were sampled with (the model
    /// layer's `tokenizer::fingerprint`); absent in runs created before malt recorded it, and
    /// when the tokenizer could not be read (a remote engine's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Run seed; node seeds derive from it (see `generate::node_seed`).
    pub run_seed: u64,
    /// The chain the trees were generated with.
    pub chain: ChainSpec,
    /// Credit settings at creation (informative; `malt credit` uses the current config).
    pub credit: CreditSettings,
}

impl Manifest {
    pub fn new(
        config_text: &str,
        plugins: BTreeMap<String, String>,
        model: &str,
        run_seed: u64,
        chain: ChainSpec,
        credit: CreditSettings,
    ) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            malt_version: env!("CARGO_PKG_VERSION").to_owned(),
            config_text: config_text.to_owned(),
            config_sha256: sha256_hex(config_text.as_bytes()),
            plugins,
            model: model.to_owned(),
            tokenizer: None,
            run_seed,
            chain,
            credit,
        }
    }

    /// The same manifest recording the sampling tokenizer's fingerprint (see [`Manifest::tokenizer`]).
    pub fn with_tokenizer(self, tokenizer: Option<String>) -> Self {
        Manifest { tokenizer, ..self }
    }

    /// Reads `<dir>/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|e| TreeError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| TreeError::Line {
            path,
            line: e.line(),
            msg: format!("bad manifest: {e}"),
        })
    }
}

/// `{"crc32":"` + 8 hex digits + `","tree":` + payload + `}` + newline.
const REC_HEAD: &str = "{\"crc32\":\"";
const REC_MID: &str = "\",\"tree\":";
const PAYLOAD_AT: usize = REC_HEAD.len() + 8 + REC_MID.len();

/// Encodes one tree as a `trees.jsonl` line (with the trailing newline).
pub fn encode_record(tree: &Tree) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(tree).map_err(|e| TreeError::Config(e.to_string()))?;
    let crc = crc32fast::hash(&payload);
    let mut line = Vec::with_capacity(payload.len() + PAYLOAD_AT + 2);
    line.extend_from_slice(REC_HEAD.as_bytes());
    line.extend_from_slice(format!("{crc:08x}").as_bytes());
    line.extend_from_slice(REC_MID.as_bytes());
    line.extend_from_slice(&payload);
    line.extend_from_slice(b"}\n");
    Ok(line)
}

/// Decodes one line (without its newline); `Err` says what is wrong.
pub fn decode_record(line: &[u8]) -> std::result::Result<Tree, String> {
    if line.len() < PAYLOAD_AT + 1
        || !line.starts_with(REC_HEAD.as_bytes())
        || &line[REC_HEAD.len() + 8..PAYLOAD_AT] != REC_MID.as_bytes()
        || line.last() != Some(&b'}')
    {
        return Err("not a tree record (expected {\"crc32\":\"........\",\"tree\":{...}})".into());
    }
    let hexcrc = std::str::from_utf8(&line[REC_HEAD.len()..REC_HEAD.len() + 8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("bad crc32 field")?;
    let payload = &line[PAYLOAD_AT..line.len() - 1];
    let crc = crc32fast::hash(payload);
    if crc != hexcrc {
        return Err(format!(
            "checksum mismatch (stored {hexcrc:08x}, computed {crc:08x})"
        ));
    }
    serde_json::from_slice(payload).map_err(|e| format!("bad tree JSON: {e}"))
}

/// The valid records of a `trees.jsonl`.
#[derive(Debug, Default)]
pub struct LoadedTrees {
    pub trees: Vec<Tree>,
    /// 1-based line number of each tree.
    pub lines: Vec<usize>,
    /// Length in bytes of the valid prefix of the file.
    pub valid_len: u64,
    /// Set when a torn or corrupt last record was dropped: why.
    pub dropped_tail: Option<String>,
}

/// Reads and verifies `trees.jsonl`. A bad *last* line is the signature of a crash mid-append:
/// it is dropped with a warning. A bad line followed by good ones is corruption: an error
/// naming the line. A repeated question id is an error too (the writer never produces one).
/// A missing file reads as empty.
pub fn read_trees(path: &Path) -> Result<LoadedTrees> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LoadedTrees::default()),
        Err(e) => return Err(TreeError::io(path, e)),
    };
    // Split into lines (end offset, complete?), then decode in parallel: checksum and JSON
    // parsing dominate re-crediting a large run.
    let mut spans = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        match data[at..].iter().position(|&b| b == b'\n') {
            Some(k) => {
                spans.push((at, at + k, true));
                at += k + 1;
            }
            None => {
                spans.push((at, data.len(), false));
                at = data.len();
            }
        }
    }
    let decode = |&(s, e, complete): &(usize, usize, bool)| {
        if complete {
            decode_record(&data[s..e])
        } else {
            Err("record has no terminating newline".to_owned())
        }
    };
    let decoded = par_map(&spans, decode);

    let mut out = LoadedTrees::default();
    let mut seen: HashSet<String> = HashSet::with_capacity(spans.len());
    let n = spans.len();
    for (k, ((_, end, _), decoded)) in spans.iter().zip(decoded).enumerate() {
        let lineno = k + 1;
        match decoded {
            Ok(tree) => {
                if !seen.insert(tree.question_id.clone()) {
                    return Err(TreeError::Line {
                        path: path.to_owned(),
                        line: lineno,
                        msg: format!("question {:?} appears twice", tree.question_id),
                    });
                }
                out.trees.push(tree);
                out.lines.push(lineno);
                out.valid_len = (*end + 1).min(data.len()) as u64;
            }
            Err(msg) if lineno == n => {
                tracing::warn!(
                    "{}:{lineno}: dropping torn last record ({msg}); its question will be regenerated",
                    path.display()
                );
                out.dropped_tail = Some(format!("{}:{lineno}: {msg}", path.display()));
            }
            Err(msg) => {
                return Err(TreeError::Line {
                    path: path.to_owned(),
                    line: lineno,
                    msg,
                })
            }
        }
    }
    Ok(out)
}

pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Maps `f` over `items` on all available cores, keeping order.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads();
    if threads < 2 || items.len() < 2 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    })
}

/// The single writer of a run directory. Holds an exclusive lock on `run.lock` for its
/// lifetime; the OS releases it when the process dies, so a kill -9 leaves no stale lock.
pub struct RunWriter {
    dir: PathBuf,
    manifest: Manifest,
    trees: File,
    done: HashSet<String>,
    _lock: File,
}

impl std::fmt::Debug for RunWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunWriter")
            .field("dir", &self.dir)
            .field("done", &self.done.len())
            .finish()
    }
}

impl RunWriter {
    /// Creates the run directory (or resumes it). On resume the stored manifest must have the
    /// same chain (generation part), run seed and model; a different config text or plugin
    /// hash is allowed with a warning (thresholds and graders may legitimately change).
    pub fn open(dir: &Path, manifest: Manifest) -> Result<RunWriter> {
        manifest.chain.validate()?;
        let created = !dir.exists();
        fs::create_dir_all(dir).map_err(|e| TreeError::io(dir, e))?;
        if created {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| TreeError::io(parent, e))?;
            }
        }
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| TreeError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(TreeError::Locked {
                    run: dir.to_owned(),
                    lock: lock_path,
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(TreeError::io(&lock_path, e)),
        }

        let manifest_path = dir.join(MANIFEST);
        let manifest = if manifest_path.exists() {
            let old = Manifest::load(dir)?;
            check_resume(dir, &old, &manifest)?;
            old
        } else {
            let text = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| TreeError::Config(e.to_string()))?;
            write_atomic(&manifest_path, &text).map_err(|e| TreeError::io(&manifest_path, e))?;
            manifest
        };

        let trees_path = dir.join(TREES);
        let loaded = read_trees(&trees_path)?;
        let exists = trees_path.exists();
        let trees = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&trees_path)
            .map_err(|e| TreeError::io(&trees_path, e))?;
        if !exists {
            sync_dir(dir).map_err(|e| TreeError::io(dir, e))?;
        }
        if loaded.dropped_tail.is_some() {
            // Cut the torn tail so the next record starts on a fresh line.
            trees
                .set_len(loaded.valid_len)
                .and_then(|()| trees.sync_all())
                .map_err(|e| TreeError::io(&trees_path, e))?;
        }
        for (tree, &line) in loaded.trees.iter().zip(&loaded.lines) {
            if let Err(msg) = tree.check_shape(&manifest.chain) {
                return Err(TreeError::Line {
                    path: trees_path,
                    line,
                    msg,
                });
            }
        }
        let done = loaded.trees.into_iter().map(|t| t.question_id).collect();
        Ok(RunWriter {
            dir: dir.to_owned(),
            manifest,
            trees,
            done,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn is_done(&self, question_id: &str) -> bool {
        self.done.contains(question_id)
    }

    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Appends one finished tree durably. Refuses a question already stored.
    pub fn append(&mut self, tree: &Tree) -> Result<()> {
        let path = self.dir.join(TREES);
        if self.done.contains(&tree.question_id) {
            return Err(TreeError::File {
                path,
                msg: format!("question {:?} is already stored", tree.question_id),
            });
        }
        tree.check_shape(&self.manifest.chain)
            .map_err(|msg| TreeError::File {
                path: path.clone(),
                msg: format!("refusing to store question {:?}: {msg}", tree.question_id),
            })?;
        let line = encode_record(tree)?;
        self.trees
            .write_all(&line)
            .and_then(|()| self.trees.sync_data())
            .map_err(|e| TreeError::io(&path, e))?;
        self.done.insert(tree.question_id.clone());
        Ok(())
    }
}

fn check_resume(dir: &Path, old: &Manifest, new: &Manifest) -> Result<()> {
    let mismatch = |msg: String| TreeError::Mismatch {
        run: dir.to_owned(),
        msg,
    };
    if old.chain.generation_fingerprint() != new.chain.generation_fingerprint() {
        return Err(mismatch(
            "the chain (agents, roles, plugins, branches or sampling) differs from the one the run was created with; use a new run directory".into(),
        ));
    }
    if old.run_seed != new.run_seed {
        return Err(mismatch(format!(
            "run seed {} differs from the stored {}",
            new.run_seed, old.run_seed
        )));
    }
    if old.model != new.model {
        return Err(mismatch(format!(
            "model {:?} differs from the stored {:?}",
            new.model, old.model
        )));
    }
    match (&old.tokenizer, &new.tokenizer) {
        (old_fp, Some(fp)) if old_fp.as_ref() != Some(fp) => {
            return Err(mismatch(format!(
                "the stored trees were sampled with another tokenization ({}; now {fp}): \
                 their prompts and token ids are not this model's. Use a new run directory, \
                 or let `malt run` recompute them",
                match old_fp {
                    Some(o) => format!("tokenizer fingerprint {o}"),
                    None => "before malt recorded the tokenizer, 2026-12-06".to_owned(),
                }
            )));
        }
        (Some(_), None) => tracing::warn!(
            "{}: the model's tokenizer cannot be read now: the stored trees' tokenization is \
             not checked",
            dir.display()
        ),
        _ => {}
    }
    if old.config_sha256 != new.config_sha256 {
        tracing::warn!(
            "{}: config text changed since the run was created (generation settings are identical)",
            dir.display()
        );
    }
    if old.plugins != new.plugins {
        tracing::warn!(
            "{}: plugin hashes changed since the run was created; stored trees were scored by the old plugins",
            dir.display()
        );
    }
    Ok(())
}
