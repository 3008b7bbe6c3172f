//! Replacing a file atomically: the contents go to a temporary sibling, are fsynced, renamed
//! over the target, and the directory is fsynced. A reader sees the old file or the new one,
//! never half of one, and after a crash or power loss the target is one of the two.
//!
//! The temporary name is `.NAME.tmp.PID.SEQ` in the target's directory: in the same directory
//! because a rename is only atomic within one file system; derived from the whole file name so
//! that `report.md` and `report.json` never share one; with the process id and a per-process
//! sequence number so that concurrent writers of one target (processes or threads) never write
//! into each other's file; a dot-file so that directory listings that skip hidden files (stage
//! output hashes) ignore a write in progress.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically (see the module documentation). On failure the target is
/// untouched and no temporary file is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// [`write_atomic`] for writers that only take a path (a library's `save(path)`): `write`
/// creates the file at the temporary path it is given, which is then fsynced and renamed over
/// `path`. Errors of `write` that are not I/O errors can be carried by [`io::Error::other`].
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    replace(path, |tmp| {
        write(tmp)?;
        File::open(tmp)?.sync_all()
    })
}

/// fsyncs a directory so that entries created or renamed in it survive power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `fill` writes the temporary file durably; this renames it into place or removes it.
fn replace(path: &Path, fill: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = temp_path(path)?;
    if let Err(e) = fill(&tmp).and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_dir(path))
}

/// The directory `path` is in: `.` for a bare file name, whose `parent()` is empty (and an
/// empty path cannot be opened to be fsynced).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(path).join(format!(
        ".{}.tmp.{}.{seq}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces_leaving_only_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["manifest.json"]);
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |tmp| {
            fs::write(tmp, b"half")?;
            Err(io::Error::other("writer failed"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "writer failed");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["report.json"]);

        // The rename fails: the target is a non-empty directory.
        let d = dir.path().join("taken");
        fs::create_dir_all(d.join("inside")).unwrap();
        assert!(write_atomic(&d, b"x").is_err());
        assert_eq!(names(dir.path()), ["report.json", "taken"]);
    }

    #[test]
    fn files_of_one_stem_and_one_file_twice_get_distinct_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let md = temp_path(&dir.path().join("report.md")).unwrap();
        let json = temp_path(&dir.path().join("report.json")).unwrap();
        let json2 = temp_path(&dir.path().join("report.json")).unwrap();
        assert_ne!(md, json);
        assert_ne!(json, json2);
        for t in [&md, &json, &json2] {
            assert_eq!(t.parent(), Some(dir.path()));
            assert!(t.file_name().unwrap().to_string_lossy().starts_with('.'));
        }
        assert!(md.to_string_lossy().contains(".report.md.tmp."));

        // Concurrent writers of both files: each ends with one writer's whole contents.
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let dir = dir.path();
                s.spawn(move || {
                    write_atomic(&dir.join("report.md"), &[b'm'; 4096].map(|b| b + i)).unwrap();
                    write_atomic(&dir.join("report.json"), &[b'j'; 4096].map(|b| b + i)).unwrap();
                });
            }
        });
        for (name, base) in [("report.md", b'm'), ("report.json", b'j')] {
            let got = fs::read(dir.path().join(name)).unwrap();
            assert_eq!(got.len(), 4096);
            assert!(got
                .iter()
                .all(|&b| b == got[0] && (base..base + 8).contains(&b)));
        }
        assert_eq!(names(dir.path()), ["report.json", "report.md"]);
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("out.json")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/out.json")), Path::new("a"));
        assert_eq!(
            temp_path(Path::new("out.json")).unwrap().parent(),
            Some(Path::new("."))
        );
        assert!(temp_path(Path::new("/")).is_err());
    }
}
