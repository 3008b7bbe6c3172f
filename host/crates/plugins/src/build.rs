//! Finding a plugin's component and building guest crates on demand.
//!
//! A plugin is named by a path (a `.wasm` component or a guest crate directory) or, without a
//! path, by name: `plugins/NAME` is looked up in the config's directory and its ancestors, then
//! in this repository's `plugins/` (its absolute path is compiled in from
//! `env!("CARGO_MANIFEST_DIR")`). A crate is (re)built with
//! `cargo build --release --target wasm32-wasip2` when its `.wasm` is missing or older than any
//! source file of the crate (or of its workspace, e.g. the SDK); a crate that is a member of a
//! workspace is built with `--manifest-path WORKSPACE/Cargo.toml -p PACKAGE`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::PluginError;

/// This repository's `plugins/` directory, as compiled in.
pub fn repo_plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../plugins")
}

/// A guest crate and where its component lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCrate {
    pub dir: PathBuf,
    pub package: String,
    /// The manifest to pass to cargo (the workspace's when the crate is a member).
    pub manifest: PathBuf,
    /// Whether `-p package` is needed (member of a workspace).
    pub member: bool,
    /// Root whose files decide staleness (the workspace root, or the crate dir).
    pub source_root: PathBuf,
    pub target_dir: PathBuf,
}

impl GuestCrate {
    pub fn wasm_path(&self) -> PathBuf {
        self.target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", self.package.replace('-', "_")))
    }
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Wasm(PathBuf),
    Crate(GuestCrate),
}

impl Source {
    /// Files and directories whose changes should trigger a reload.
    pub fn watch_paths(&self) -> Vec<PathBuf> {
        match self {
            Source::Wasm(p) => vec![p.clone()],
            Source::Crate(c) => vec![c.dir.clone()],
        }
    }
}

/// Resolve a plugin spec: `path` if given (relative to `base`), else `plugins/NAME` searched
/// from `base` upwards and then in this repository.
pub fn resolve(name: &str, path: Option<&Path>, base: &Path) -> Result<Source, PluginError> {
    let not_found = |message: String| PluginError::NotFound {
        name: name.into(),
        message,
    };
    let candidate = match path {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => base.join(p),
        None => {
            let mut found = None;
            for dir in base.ancestors() {
                let c = dir.join("plugins").join(name);
                if c.join("Cargo.toml").is_file() {
                    found = Some(c);
                    break;
                }
            }
            let repo = repo_plugins_dir().join(name);
            match found.or_else(|| repo.join("Cargo.toml").is_file().then_some(repo)) {
                Some(c) => c,
                None => {
                    return Err(not_found(format!(
                        "no path given and no plugins/{name} crate found above {} or in {}",
                        base.display(),
                        repo_plugins_dir().display()
                    )))
                }
            }
        }
    };
    if candidate.is_dir() {
        guest_crate(name, &candidate).map(Source::Crate)
    } else if candidate.is_file() {
        Ok(Source::Wasm(candidate))
    } else {
        Err(not_found(format!("{} does not exist", candidate.display())))
    }
}

fn read_toml(name: &str, path: &Path) -> Result<toml::Table, PluginError> {
    let text = std::fs::read_to_string(path).map_err(|source| PluginError::Io {
        name: name.into(),
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| PluginError::NotFound {
        name: name.into(),
        message: format!("{}: {}", path.display(), e.message()),
    })
}

/// Describe the guest crate in `dir`.
pub fn guest_crate(name: &str, dir: &Path) -> Result<GuestCrate, PluginError> {
    let dir = std::path::absolute(dir).unwrap_or(dir.to_path_buf());
    let manifest = dir.join("Cargo.toml");
    let t = read_toml(name, &manifest)?;
    let package = t
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| PluginError::NotFound {
            name: name.into(),
            message: format!("{} has no [package] name", manifest.display()),
        })?
        .to_string();
    let standalone = || GuestCrate {
        dir: dir.clone(),
        package: package.clone(),
        manifest: manifest.clone(),
        member: false,
        source_root: dir.clone(),
        target_dir: dir.join("target"),
    };
    if t.contains_key("workspace") {
        return Ok(standalone());
    }
    // A member of the workspace in an ancestor directory?
    for ws in dir.ancestors().skip(1) {
        let ws_manifest = ws.join("Cargo.toml");
        if !ws_manifest.is_file() {
            continue;
        }
        let Ok(wt) = read_toml(name, &ws_manifest) else {
            continue;
        };
        let Some(w) = wt.get("workspace") else {
            continue;
        };
        let rel = dir
            .strip_prefix(ws)
            .unwrap_or(&dir)
            .to_string_lossy()
            .replace('\\', "/");
        let members = w
            .get("members")
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default();
        let is_member = members.iter().filter_map(|m| m.as_str()).any(|m| {
            m == rel
                || (m.ends_with("/*")
                    && Path::new(&rel).parent() == Some(Path::new(&m[..m.len() - 2])))
        });
        if is_member {
            return Ok(GuestCrate {
                dir: dir.clone(),
                package,
                manifest: ws_manifest,
                member: true,
                source_root: ws.to_path_buf(),
                target_dir: ws.join("target"),
            });
        }
        break;
    }
    Ok(standalone())
}

fn newest_source(root: &Path) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let fname = e.file_name();
            let fname = fname.to_string_lossy();
            if fname == "target" || fname.starts_with('.') {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("rs" | "toml" | "lock" | "wit" | "tmpl" | "json")
            ) {
                if let Ok(m) = md.modified() {
                    newest = Some(newest.map_or(m, |n| n.max(m)));
                }
            }
        }
    }
    newest
}

/// Whether the crate's component is missing or older than any of its sources.
pub fn is_stale(c: &GuestCrate) -> bool {
    let Ok(built) = std::fs::metadata(c.wasm_path()).and_then(|m| m.modified()) else {
        return true;
    };
    newest_source(&c.source_root).is_some_and(|s| s > built)
}

/// Build the crate's component if it is missing or stale; returns the `.wasm` path.
pub fn ensure_built(name: &str, c: &GuestCrate) -> Result<PathBuf, PluginError> {
    if is_stale(c) {
        build(name, c)?;
    }
    Ok(c.wasm_path())
}

/// Run `cargo build --release --target wasm32-wasip2` for the crate.
pub fn build(name: &str, c: &GuestCrate) -> Result<PathBuf, PluginError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(&c.manifest)
    .arg("--target-dir")
    .arg(&c.target_dir);
    if c.member {
        cmd.args(["-p", &c.package]);
    }
    // A build started from inside `cargo test`/`cargo run` must not inherit its target settings.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    tracing::info!(plugin = name, manifest = %c.manifest.display(), "building plugin");
    let fail = |message: String| PluginError::Build {
        name: name.into(),
        manifest: c.manifest.clone(),
        message,
    };
    let out = cmd
        .output()
        .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let missing_target = stderr.contains("target may not be installed")
            || (stderr.contains("can't find crate for `core`")
                || stderr.contains("can't find crate for `std`"))
                && stderr.contains("wasm32-wasip2");
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let mut message = tail.join("\n");
        if missing_target {
            message = format!("the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`\n{message}");
        }
        return Err(fail(message));
    }
    let wasm = c.wasm_path();
    if !wasm.is_file() {
        return Err(fail(format!(
            "cargo succeeded but {} is missing (is the crate a cdylib?)",
            wasm.display()
        )));
    }
    Ok(wasm)
}

/// Resolve a source to a `.wasm` path, building it when needed.
pub fn component_path(name: &str, source: &Source) -> Result<PathBuf, PluginError> {
    match source {
        Source::Wasm(p) => Ok(p.clone()),
        Source::Crate(c) => ensure_built(name, c),
    }
}
