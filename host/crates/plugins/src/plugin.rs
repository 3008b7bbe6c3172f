//! One loaded plugin: an `InstancePre`, a pool of worker stores and the sandboxed call path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::api::{self, ApiVersion, Bindings, Detected};
use crate::engine::{Runtime, TICK};
use crate::error::panic_message;
use crate::types::*;
use crate::{CallError, CallErrorKind, ItemError, PluginError, Sandbox};

/// After this many items of a trapped batch time out on their own, the rest of the batch is
/// failed with the batch's error instead of being retried (a batch of infinite loops would
/// otherwise cost one full deadline per item).
const MAX_ISOLATION_TIMEOUTS: usize = 4;

pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Worker {
    store: Store<State>,
    api: Bindings,
    stderr: MemoryOutputPipe,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    items: AtomicU64,
    item_errors: AtomicU64,
    rejections: AtomicU64,
    timeouts: AtomicU64,
    memory: AtomicU64,
    traps: AtomicU64,
    output_too_large: AtomicU64,
    bad_responses: AtomicU64,
    rebuilds: AtomicU64,
}

/// Per-plugin counters since load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PluginStats {
    /// Guest calls made (a batch retried item by item counts each retry).
    pub calls: u64,
    /// Items passed to batch functions.
    pub items: u64,
    /// Items that ended in an error of any kind (including rejections).
    pub item_errors: u64,
    /// Items the plugin itself rejected (e.g. unparseable records).
    pub rejections: u64,
    pub timeouts: u64,
    pub memory: u64,
    pub traps: u64,
    pub output_too_large: u64,
    pub bad_responses: u64,
    /// Worker instances rebuilt after a failure.
    pub rebuilds: u64,
}

/// A loaded plugin. Thread-safe: calls check a worker store out of a pool (creating one when
/// the pool is empty), so several threads can call at once.
pub struct Plugin {
    name: String,
    path: PathBuf,
    hash: String,
    info: PluginInfo,
    api_version: ApiVersion,
    /// The exported interface's full name, e.g. `malt:plugin/benchmark@0.1.0`.
    export: String,
    options: Vec<(String, String)>,
    limits: Sandbox,
    pre: InstancePre<State>,
    runtime: Arc<Runtime>,
    pool: Mutex<Vec<Worker>>,
    counters: Counters,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.info.version)
            .field("path", &self.path)
            .field("api", &self.api_version)
            .finish()
    }
}

impl Plugin {
    /// Load the component at `path` (a `.wasm` file) as plugin `name`, configure it with
    /// `options` and read its `info`.
    pub fn load(
        runtime: &Arc<Runtime>,
        name: &str,
        path: &Path,
        options: &BTreeMap<String, String>,
        limits: &Sandbox,
    ) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Io {
            name: name.into(),
            path: path.into(),
            source,
        })?;
        let component = runtime.load_component(name, path, &bytes)?;
        let (guest_version, api_version) = match api::detect(runtime.engine(), &component) {
            Detected::Supported { guest, host } => {
                tracing::debug!(plugin = name, %guest, %host, "API version accepted");
                (guest, host)
            }
            Detected::Unsupported { guest } => {
                return Err(PluginError::UnsupportedApi {
                    name: name.into(),
                    path: path.into(),
                    guest: format!("{}@{guest}", api::PACKAGE),
                    supported: api::supported_list(),
                })
            }
            Detected::NotAPlugin { exports } => {
                return Err(PluginError::NotAPlugin {
                    name: name.into(),
                    path: path.into(),
                    exports,
                })
            }
        };
        let link_err = |e: wasmtime::Error| PluginError::Link {
            name: name.into(),
            path: path.into(),
            message: format!("{e:#}"),
        };
        let mut linker: Linker<State> = Linker::new(runtime.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_err)?;
        api::add_to_linker(&mut linker).map_err(link_err)?;
        let pre = linker.instantiate_pre(&component).map_err(link_err)?;
        let export = format!("{}/{}@{guest_version}", api::PACKAGE, api::INTERFACE);
        let mut plugin = Plugin {
            name: name.into(),
            path: path.into(),
            hash: runtime.cache_key(&bytes),
            info: PluginInfo {
                name: name.into(),
                version: "?".into(),
                description: String::new(),
                roles: vec![],
                options: vec![],
                can_generate: false,
            },
            api_version,
            export,
            options: options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            limits: limits.clone(),
            pre,
            runtime: runtime.clone(),
            pool: Mutex::new(Vec::new()),
            counters: Counters::default(),
        };
        let mut worker = plugin.new_worker().map_err(|e| match e.kind {
            CallErrorKind::Rejected(message) => PluginError::Configure {
                name: name.into(),
                message,
            },
            _ => PluginError::Call(e),
        })?;
        let info = plugin.call_on(&mut worker, "info", 0, |api, store| api.info(store))?;
        if info.name.trim().is_empty() || info.version.trim().is_empty() {
            return Err(PluginError::BadInfo {
                name: name.into(),
                message: format!(
                    "name {:?} and version {:?} must be non-empty",
                    info.name, info.version
                ),
            });
        }
        if info.name != name {
            tracing::debug!(plugin = name, info_name = %info.name, "plugin calls itself by another name");
        }
        plugin.info = info;
        plugin
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(worker);
        tracing::info!(plugin = name, version = %plugin.info.version, path = %path.display(), "plugin loaded");
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Cache key of the component (sha256 of bytes + engine); changes when the .wasm changes.
    pub fn hash(&self) -> &str {
        &self.hash
    }
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
    pub fn version(&self) -> &str {
        &self.info.version
    }
    pub fn api_version(&self) -> ApiVersion {
        self.api_version
    }
    pub fn limits(&self) -> &Sandbox {
        &self.limits
    }
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    pub fn stats(&self) -> PluginStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PluginStats {
            calls: g(&c.calls),
            items: g(&c.items),
            item_errors: g(&c.item_errors),
            rejections: g(&c.rejections),
            timeouts: g(&c.timeouts),
            memory: g(&c.memory),
            traps: g(&c.traps),
            output_too_large: g(&c.output_too_large),
            bad_responses: g(&c.bad_responses),
            rebuilds: g(&c.rebuilds),
        }
    }

    /// Drop every pooled instance: the next calls run on fresh instances.
    pub fn reset(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Configure a fresh instance with other options (to test them) without keeping it.
    pub fn try_configure(
        &self,
        options: &[(String, String)],
    ) -> Result<Result<(), String>, CallError> {
        let mut w = self.instantiate()?;
        self.call_on(&mut w, "configure", 0, |api, store| {
            api.configure(store, options)
        })
    }

    /// Parse raw dataset records (JSON object text, one per item).
    pub fn parse_records(&self, lines: &[String]) -> Vec<Result<Example, ItemError>> {
        self.batch("parse-records", lines, |api, store, items| {
            api.parse_records(store, items)
        })
        .into_iter()
        .map(|r| self.flatten(r, "parse-records"))
        .collect()
    }

    /// Generate `count` examples from `seed`. The deadline scales with `count`.
    pub fn generate(&self, seed: u64, count: u32) -> Result<Vec<Example>, CallError> {
        let out = self.run("generate", count as usize, |api, store| {
            api.generate(store, seed, count)
        })?;
        match out {
            Ok(v) => {
                let max = self.max_output();
                if let Some(e) = v.iter().find(|e| e.output_size() > max) {
                    return Err(self.err(
                        "generate",
                        CallErrorKind::OutputTooLarge {
                            bytes: e.output_size(),
                            max,
                        },
                        "",
                    ));
                }
                if v.len() != count as usize {
                    return Err(self.err(
                        "generate",
                        CallErrorKind::BadResponse(format!(
                            "asked for {count} examples, got {}",
                            v.len()
                        )),
                        "",
                    ));
                }
                Ok(v)
            }
            Err(msg) => Err(self.err("generate", CallErrorKind::Rejected(msg), "")),
        }
    }

    /// Render the chat messages of each request.
    pub fn render(&self, requests: &[RenderRequest]) -> Vec<Result<Vec<Message>, ItemError>> {
        self.batch("render", requests, |api, store, items| {
            api.render(store, items)
        })
        .into_iter()
        .map(|r| self.flatten(r, "render"))
        .collect()
    }

    /// Extract the final answer of each output, with its voting key and how it was found
    /// (`None`: no answer found). A 0.1.0 plugin's answers have no key and an unknown source.
    pub fn extract(
        &self,
        requests: &[ExtractRequest],
    ) -> Vec<Result<Option<Extracted>, ItemError>> {
        self.batch("extract", requests, |api, store, items| {
            api.extract(store, items)
        })
    }

    /// Grade each answer; rewards outside [0, 1] (or NaN) become item errors.
    pub fn grade(&self, requests: &[GradeRequest]) -> Vec<Result<Grade, ItemError>> {
        self.batch("grade", requests, |api, store, items| {
            api.grade(store, items)
        })
        .into_iter()
        .map(|r| match r {
            Ok(g) if !(g.reward.is_finite() && (0.0..=1.0).contains(&g.reward)) => {
                self.counters.bad_responses.fetch_add(1, Ordering::Relaxed);
                self.counters.item_errors.fetch_add(1, Ordering::Relaxed);
                Err(self.err(
                    "grade",
                    CallErrorKind::BadResponse(format!("reward {} is outside [0, 1]", g.reward)),
                    "",
                ))
            }
            other => other,
        })
        .collect()
    }

    // ---- internals -------------------------------------------------------------------------

    fn max_output(&self) -> usize {
        (self.limits.max_output_kib as usize).saturating_mul(1024)
    }

    fn flatten<T>(
        &self,
        r: Result<Result<T, String>, ItemError>,
        function: &'static str,
    ) -> Result<T, ItemError> {
        match r {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(msg)) => {
                self.counters.rejections.fetch_add(1, Ordering::Relaxed);
                self.counters.item_errors.fetch_add(1, Ordering::Relaxed);
                Err(self.err(function, CallErrorKind::Rejected(msg), ""))
            }
            Err(e) => Err(e),
        }
    }

    fn err(&self, function: &'static str, kind: CallErrorKind, stderr: &str) -> CallError {
        CallError {
            plugin: self.name.as_str().into(),
            version: self.info.version.as_str().into(),
            function,
            kind,
            panic: panic_message(stderr).map(Into::into),
            stderr: stderr.into(),
        }
    }

    /// A fresh instance (store + WASI context + limits), configured with the plugin's options.
    /// A `configure` error comes back as `CallErrorKind::Rejected`.
    fn new_worker(&self) -> Result<Worker, CallError> {
        let mut w = self.instantiate()?;
        match self.call_on(&mut w, "configure", 0, |api, store| {
            api.configure(store, &self.options)
        })? {
            Ok(()) => Ok(w),
            Err(msg) => Err(self.err("configure", CallErrorKind::Rejected(msg), "")),
        }
    }

    fn instantiate(&self) -> Result<Worker, CallError> {
        let stderr = MemoryOutputPipe::new((self.limits.stderr_kib as usize).max(1) * 1024);
        // No preopened directories, no environment, no arguments, no network, no stdin/stdout:
        // only a captured stderr.
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.limits.memory_mib as usize).saturating_mul(1 << 20))
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            self.runtime.engine(),
            State {
                wasi,
                table: ResourceTable::new(),
                limits,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks(0));
        match Bindings::instantiate(self.api_version, &self.pre, &mut store, &self.export) {
            Ok(api) => Ok(Worker { store, api, stderr }),
            Err(e) => {
                let text = String::from_utf8_lossy(&stderr.contents()).into_owned();
                Err(self.err("instantiate", self.classify(&e), &text))
            }
        }
    }

    fn deadline_ticks(&self, items: usize) -> u64 {
        let us = self
            .limits
            .timeout_ms
            .saturating_mul(1000)
            .saturating_add(self.limits.per_item_us.saturating_mul(items as u64));
        us / (TICK.as_micros() as u64).max(1) + 1
    }

    fn deadline_ms(&self, items: usize) -> u64 {
        self.limits.timeout_ms + self.limits.per_item_us.saturating_mul(items as u64) / 1000
    }

    fn classify(&self, e: &wasmtime::Error) -> CallErrorKind {
        let text = format!("{e:#}");
        if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
            return CallErrorKind::Timeout {
                ms: self.limits.timeout_ms,
            };
        }
        if text.contains("forcing trap when growing memory")
            || text.contains("exceeds memory limits")
        {
            return CallErrorKind::MemoryLimit {
                mib: self.limits.memory_mib,
            };
        }
        CallErrorKind::Trap(text.lines().next().unwrap_or("trap").to_string())
    }

    /// One guest call on a given worker, with a deadline scaled by `items`.
    fn call_on<R>(
        &self,
        w: &mut Worker,
        function: &'static str,
        items: usize,
        f: impl FnOnce(&Bindings, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let before = w.stderr.contents().len();
        w.store.set_epoch_deadline(self.deadline_ticks(items));
        let result = f(&w.api, &mut w.store);
        result.map_err(|e| {
            let all = w.stderr.contents();
            let text = String::from_utf8_lossy(all.get(before..).unwrap_or(&all)).into_owned();
            let mut kind = self.classify(&e);
            if let CallErrorKind::Timeout { ms } = &mut kind {
                *ms = self.deadline_ms(items);
            }
            match kind {
                CallErrorKind::Timeout { .. } => &self.counters.timeouts,
                CallErrorKind::MemoryLimit { .. } => &self.counters.memory,
                _ => &self.counters.traps,
            }
            .fetch_add(1, Ordering::Relaxed);
            self.err(function, kind, &text)
        })
    }

    /// Check out a worker, make one call, and return the worker to the pool unless the call
    /// failed (a trapped instance refuses later calls) or its stderr buffer is half full.
    fn run<R>(
        &self,
        function: &'static str,
        items: usize,
        f: impl FnOnce(&Bindings, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut w = match pooled {
            Some(w) => w,
            None => self.new_worker()?,
        };
        let r = self.call_on(&mut w, function, items, f);
        match &r {
            Ok(_) if w.stderr.contents().len() < (self.limits.stderr_kib as usize * 1024) / 2 => {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < self.limits.workers.max(1) * 2 {
                    pool.push(w);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("{e}; dropping the instance");
                self.counters.rebuilds.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    /// A batch call with per-item results. A failed batch is retried item by item, so one
    /// poisonous item does not fail its batch-mates.
    fn batch<Req, Resp: OutputSize>(
        &self,
        function: &'static str,
        items: &[Req],
        call: impl Fn(&Bindings, &mut Store<State>, &[Req]) -> wasmtime::Result<Vec<Resp>>,
    ) -> Vec<Result<Resp, ItemError>> {
        if items.is_empty() {
            return Vec::new();
        }
        self.counters
            .items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let out = match self.run(function, items.len(), |api, store| call(api, store, items)) {
            Ok(v) => self.check_batch(function, items.len(), v),
            Err(e) if items.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!("{e}; retrying the {} items one by one", items.len());
                let mut timeouts = 0;
                let mut out = Vec::with_capacity(items.len());
                for i in 0..items.len() {
                    if timeouts >= MAX_ISOLATION_TIMEOUTS {
                        out.push(Err(e.clone()));
                        continue;
                    }
                    let one =
                        self.run(function, 1, |api, store| call(api, store, &items[i..i + 1]));
                    match one {
                        Ok(v) => out.extend(self.check_batch(function, 1, v)),
                        Err(e1) => {
                            if matches!(e1.kind, CallErrorKind::Timeout { .. }) {
                                timeouts += 1;
                            }
                            out.push(Err(e1));
                        }
                    }
                }
                out
            }
        };
        let errors = out.iter().filter(|r| r.is_err()).count() as u64;
        self.counters
            .item_errors
            .fetch_add(errors, Ordering::Relaxed);
        out
    }

    fn check_batch<Resp: OutputSize>(
        &self,
        function: &'static str,
        n: usize,
        v: Vec<Resp>,
    ) -> Vec<Result<Resp, ItemError>> {
        if v.len() != n {
            self.counters
                .bad_responses
                .fetch_add(n as u64, Ordering::Relaxed);
            let e = self.err(
                function,
                CallErrorKind::BadResponse(format!("{} results for {n} inputs", v.len())),
                "",
            );
            return (0..n).map(|_| Err(e.clone())).collect();
        }
        let max = self.max_output();
        v.into_iter()
            .map(|r| {
                let bytes = r.output_size();
                if bytes > max {
                    self.counters
                        .output_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    Err(self.err(function, CallErrorKind::OutputTooLarge { bytes, max }, ""))
                } else {
                    Ok(r)
                }
            })
            .collect()
    }
}
