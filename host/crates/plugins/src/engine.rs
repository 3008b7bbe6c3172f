//! The shared wasmtime engine, its epoch ticker and the precompiled-artifact cache.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::PluginError;

/// One epoch tick; deadlines are counted in ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// The engine every plugin is compiled for, its epoch ticker thread, and the on-disk cache of
/// precompiled components. Share one per process ([`Runtime::shared`]).
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl Runtime {
    /// A runtime caching precompiled components in `cache_dir` (`None`: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("cannot create the wasm engine: {e:#}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("malt-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(Arc::new(Runtime {
            engine,
            cache_dir,
            stop,
            ticker: Some(ticker),
        }))
    }

    /// The process-wide runtime with the default cache directory.
    pub fn shared() -> anyhow::Result<Arc<Runtime>> {
        static SHARED: OnceLock<Arc<Runtime>> = OnceLock::new();
        if let Some(rt) = SHARED.get() {
            return Ok(rt.clone());
        }
        let rt = Runtime::new(default_cache_dir())?;
        Ok(SHARED.get_or_init(|| rt).clone())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// The cache key of a component: sha256 of its bytes, the wasmtime version and the engine's
    /// compatibility hash (so another engine config never reads a stale artifact).
    pub fn cache_key(&self, bytes: &[u8]) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let mut d = Sha256::new();
        d.update(bytes);
        d.update(b"\0wasmtime-48.0.8\0");
        d.update(h.finish().to_le_bytes());
        hex::encode(d.finalize())
    }

    /// Compile a component, or load its precompiled artifact from the cache (written atomically
    /// by `malt_base::atomic`).
    pub fn load_component(
        &self,
        name: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Component, PluginError> {
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            name: name.to_string(),
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Component::from_binary(&self.engine, bytes).map_err(invalid);
        };
        let file = dir.join(format!("{}.cwasm", self.cache_key(bytes)));
        if file.exists() {
            // SAFETY: the file was written by `precompile_component` of this same wasmtime build
            // (the key includes the version and engine hash); a corrupt or foreign file is
            // rejected by `deserialize_file`'s header checks, and then recompiled below.
            match unsafe { Component::deserialize_file(&self.engine, &file) } {
                Ok(c) => {
                    tracing::debug!(plugin = name, cache = %file.display(), "loaded precompiled component");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(cache = %file.display(), "ignoring unusable cache entry: {e:#}")
                }
            }
        }
        let artifact = self.engine.precompile_component(bytes).map_err(invalid)?;
        let cache_err = |source| PluginError::Cache {
            path: file.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(cache_err)?;
        // Concurrent loads of one component each write their own temporary file; when ours fails
        // but another load's artifact is in place, the cache is complete all the same.
        if let Err(e) = malt_base::atomic::write_atomic(&file, &artifact) {
            if !file.exists() {
                return Err(cache_err(e));
            }
        }
        // SAFETY: as above; we just wrote this artifact with this engine.
        unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(invalid)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// `$MALT_CACHE/wasm`, else `$XDG_CACHE_HOME/malt/wasm`, else `~/.cache/malt/wasm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MALT_CACHE") {
        return Some(PathBuf::from(d).join("wasm"));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("malt").join("wasm"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("malt").join("wasm"))
}
