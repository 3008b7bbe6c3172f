//! Hot reload: watch a config file and its plugins; swap a valid new set in atomically, keep
//! the old one on any error, and tell subscribers.
//!
//! Parent directories are watched (editors save by rename, which kills a watch on the file),
//! events are debounced with notify-debouncer-full, and the new set is built and validated on
//! the watcher thread, off the callers' hot path. Readers call [`Reloader::current`] and get an
//! `Arc<Loaded>` that stays valid while they use it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use malt_config::Config;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use crate::build::Source;
use crate::{PluginSet, Runtime};

/// A config and its plugins, as one unit swapped in by a reload.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub plugins: PluginSet,
    /// 0 for the initial load, then +1 per successful reload.
    pub generation: u64,
}

/// The outcome of one reload attempt.
#[derive(Debug, Clone)]
pub struct ReloadEvent {
    /// The generation in force after the attempt (unchanged on error).
    pub generation: u64,
    /// `Err` carries the (multi-line) reason the new files were refused.
    pub result: Result<(), String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] malt_config::ConfigError),
    #[error(transparent)]
    Plugin(#[from] crate::PluginError),
    #[error("cannot watch files: {0}")]
    Watch(#[from] notify::Error),
}

struct Inner {
    runtime: Arc<Runtime>,
    config_path: PathBuf,
    current: ArcSwap<Loaded>,
    generation: AtomicU64,
    subscribers: Mutex<Vec<Sender<ReloadEvent>>>,
    lock: Mutex<()>,
}

/// Watches a config and its plugins and keeps the latest valid [`Loaded`].
pub struct Reloader {
    inner: Arc<Inner>,
    debouncer: Arc<Mutex<Debouncer<notify::RecommendedWatcher, RecommendedCache>>>,
    watched: Arc<Mutex<BTreeSet<PathBuf>>>,
}

fn load(runtime: &Arc<Runtime>, path: &Path, generation: u64) -> Result<Loaded, ReloadError> {
    let config = Config::load(path)?;
    let plugins = PluginSet::load(runtime, &config)?;
    Ok(Loaded {
        config,
        plugins,
        generation,
    })
}

/// Directories to watch for a loaded set, and the paths whose changes matter.
fn interest(config_path: &Path, loaded: &Loaded) -> (BTreeSet<PathBuf>, Vec<PathBuf>) {
    let mut dirs = BTreeSet::new();
    let mut paths = vec![config_path.to_path_buf()];
    if let Some(d) = config_path.parent() {
        dirs.insert(d.to_path_buf());
    }
    for src in loaded.plugins.sources().values() {
        match src {
            Source::Wasm(p) => {
                if let Some(d) = p.parent() {
                    dirs.insert(d.to_path_buf());
                }
                paths.push(p.clone());
            }
            Source::Crate(c) => {
                dirs.insert(c.dir.clone());
                paths.push(c.dir.clone());
            }
        }
    }
    (dirs, paths)
}

fn relevant(event_path: &Path, paths: &[PathBuf]) -> bool {
    if event_path.components().any(|c| c.as_os_str() == "target") {
        return false;
    }
    paths
        .iter()
        .any(|p| event_path == p || event_path.starts_with(p) && p.is_dir())
}

impl Reloader {
    /// Load `config_path` (must succeed) and start watching it and its plugins.
    pub fn start(runtime: Arc<Runtime>, config_path: &Path) -> Result<Reloader, ReloadError> {
        let config_path = std::path::absolute(config_path).unwrap_or(config_path.to_path_buf());
        let first = load(&runtime, &config_path, 0)?;
        Reloader::start_from(runtime, &config_path, first.config, first.plugins)
    }

    /// Start watching `config_path` from a config and plugin set the caller already loaded from
    /// it (generation 0), so a run loads them once, not once for itself and once for the watch.
    pub fn start_from(
        runtime: Arc<Runtime>,
        config_path: &Path,
        config: Config,
        plugins: PluginSet,
    ) -> Result<Reloader, ReloadError> {
        let config_path = std::path::absolute(config_path).unwrap_or(config_path.to_path_buf());
        let first = Loaded {
            config,
            plugins,
            generation: 0,
        };
        let inner = Arc::new(Inner {
            runtime,
            config_path: config_path.clone(),
            current: ArcSwap::from_pointee(first),
            generation: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            lock: Mutex::new(()),
        });
        let watched: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let cb_inner = inner.clone();
        let handler = move |res: DebounceEventResult| {
            let events = match res {
                Ok(ev) => ev,
                Err(errs) => {
                    for e in errs {
                        tracing::warn!("file watch error: {e}");
                    }
                    return;
                }
            };
            let (_, paths) = interest(&cb_inner.config_path, &cb_inner.current.load());
            let hit = events
                .iter()
                .filter(|e| !e.kind.is_access())
                .flat_map(|e| e.paths.iter())
                .find(|p| relevant(p, &paths));
            if let Some(p) = hit {
                tracing::info!(path = %p.display(), "change detected; reloading");
                Inner::reload(&cb_inner);
            }
        };
        let debouncer = new_debouncer(Duration::from_millis(200), None, handler)?;
        let r = Reloader {
            inner,
            debouncer: Arc::new(Mutex::new(debouncer)),
            watched,
        };
        r.rewatch()?;
        // Watch directories of a newly loaded set too.
        let (tx, rx) = channel::<ReloadEvent>();
        r.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        let deb = Arc::downgrade(&r.debouncer);
        let watched = r.watched.clone();
        let inner = Arc::downgrade(&r.inner);
        std::thread::Builder::new()
            .name("malt-rewatch".into())
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    if ev.result.is_err() {
                        continue;
                    }
                    let (Some(deb), Some(inner)) = (deb.upgrade(), inner.upgrade()) else {
                        break;
                    };
                    let (dirs, _) = interest(&inner.config_path, &inner.current.load());
                    let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
                    let mut d = deb.lock().unwrap_or_else(|p| p.into_inner());
                    for dir in dirs.difference(&w.clone()) {
                        if d.watch(dir, RecursiveMode::Recursive).is_ok() {
                            w.insert(dir.clone());
                        }
                    }
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(r)
    }

    fn rewatch(&self) -> Result<(), notify::Error> {
        let (dirs, _) = interest(&self.inner.config_path, &self.inner.current.load());
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let mut d = self.debouncer.lock().unwrap_or_else(|p| p.into_inner());
        for dir in dirs {
            if !w.contains(&dir) {
                d.watch(&dir, RecursiveMode::Recursive)?;
                w.insert(dir);
            }
        }
        Ok(())
    }

    /// The config and plugins in force.
    pub fn current(&self) -> Arc<Loaded> {
        self.inner.current.load_full()
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// A channel receiving one event per reload attempt from now on.
    pub fn subscribe(&self) -> Receiver<ReloadEvent> {
        let (tx, rx) = channel();
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Reload now (without waiting for a file event).
    pub fn reload_now(&self) -> ReloadEvent {
        Inner::reload(&self.inner)
    }
}

impl Inner {
    fn reload(this: &Arc<Inner>) -> ReloadEvent {
        let _guard = this.lock.lock().unwrap_or_else(|p| p.into_inner());
        let next = this.generation.load(Ordering::SeqCst) + 1;
        let event = match load(&this.runtime, &this.config_path, next) {
            Ok(loaded) => {
                this.current.store(Arc::new(loaded));
                this.generation.store(next, Ordering::SeqCst);
                tracing::info!(generation = next, config = %this.config_path.display(), "reloaded");
                ReloadEvent {
                    generation: next,
                    result: Ok(()),
                }
            }
            Err(e) => {
                let generation = next - 1;
                tracing::error!(
                    generation,
                    "reload refused, keeping generation {generation}: {e}"
                );
                ReloadEvent {
                    generation,
                    result: Err(e.to_string()),
                }
            }
        };
        this.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.send(event.clone()).is_ok());
        event
    }
}
