//! [`malt_serve::ServeBackend`] over the embedded candle model: the engine behind `malt serve`.
//!
//! candle already uses every core for one forward pass, so the model runs on a single engine
//! thread fed by a channel; handler threads only validate, tokenize and wait. How the engine
//! batches is [`Batching`]: with `Continuous` (the default) a request joins the decode batch
//! that is already running between two steps ([`continuous`]); with `Waiting` the engine,
//! when free, takes every waiting request and decodes those with the same adapter and sampling
//! settings as one batch to the end; with `Off` it serves one request at a time. Each request's
//! `n` choices fork from one prefill. Prompt caches are pooled across requests, so a prompt
//! sharing a prefix with a recent one (the system prompt, the question of a tree level) only
//! prefills the rest.
//!
//! Choice j of a request is what [`super::ModelSampler`] produces for the seed `malt_seeds[j]`
//! with the same messages and parameters: the same template, prefill, fork and decode loop.
//! Without `malt_seeds`, choice j uses `branch_seed(seed, [j])`, the seed `malt generate
//! --seed` gives its single completion for j = 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use malt_model::{LoraAdapter, Model};
use malt_serve::{
    AdapterLoad, BackendError, ChainQuery, ChainResponse, ChoiceOutput, GenerationJob, Message,
    ServeBackend, ServedModels, StepSink,
};

use crate::prefix_pool::PrefixPool;
use engine::{timeout_error, Counters, Engine, EngineJob, Event, Submitted};

mod continuous;
mod engine;
mod waiting;

pub use engine::{Batching, ChainSetup, EngineSettings};

pub struct ModelServeBackend {
    counters: Arc<Counters>,
    model: Arc<Model>,
    base_id: String,
    chain: bool,
    /// Served adapters by name, each keyed on its contents ([`LoraAdapter::content_keyed`]):
    /// the prefix pool never reuses keys and values across different weights under one name.
    /// Loaded and unloaded at run time (`/v1/load_lora_adapter`); a request takes its own
    /// handle when it arrives.
    adapters: RwLock<BTreeMap<String, LoraAdapter>>,
    jobs: Mutex<Option<mpsc::Sender<EngineJob>>>,
    engine: Option<JoinHandle<()>>,
    timeout_s: f64,
}

impl ModelServeBackend {
    /// Starts the engine thread. `adapters` are served under their agent names; `chain`
    /// enables `POST /v1/malt/chain`.
    pub fn start(
        model: Model,
        base_id: &str,
        adapters: Vec<(String, LoraAdapter)>,
        chain: Option<ChainSetup>,
        settings: EngineSettings,
    ) -> anyhow::Result<Self> {
        let timeout_s = settings.timeout_s;
        let model = Arc::new(model);
        let has_chain = chain.is_some();
        let adapters = adapters
            .into_iter()
            .map(|(n, a)| Ok((n, a.content_keyed()?)))
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let engine = Engine {
            counters: counters.clone(),
            model: model.clone(),
            pool: PrefixPool::default(),
            settings,
            chain,
            timeout_s,
        };
        let handle = std::thread::Builder::new()
            .name("serve-engine".into())
            .spawn(move || {
                let mut engine = engine;
                match engine.settings.batching {
                    Batching::Continuous => continuous::run(&mut engine, rx),
                    Batching::Off | Batching::Waiting => waiting::run(&mut engine, rx),
                }
            })?;
        Ok(ModelServeBackend {
            counters,
            model,
            base_id: base_id.to_owned(),
            chain: has_chain,
            adapters: RwLock::new(adapters),
            jobs: Mutex::new(Some(tx)),
            engine: Some(handle),
            timeout_s,
        })
    }

    fn submit(&self, job: EngineJob) -> Result<(), BackendError> {
        let guard = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard
            .as_ref()
            .ok_or_else(|| BackendError::Internal("the engine is stopped".into()))?;
        tx.send(job)
            .map_err(|_| BackendError::Internal("the model engine thread has stopped".into()))
    }

    fn timeout(&self) -> BackendError {
        timeout_error(self.timeout_s)
    }

    fn read_adapters(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, LoraAdapter>> {
        self.adapters.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_adapters(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, LoraAdapter>> {
        self.adapters.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ModelServeBackend {
    fn drop(&mut self) {
        // Closing the channel ends the engine loop once the jobs in flight are done.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.engine.take() {
            let _ = h.join();
        }
    }
}

impl ServeBackend for ModelServeBackend {
    fn models(&self) -> ServedModels {
        ServedModels {
            base: self.base_id.clone(),
            adapters: self.read_adapters().keys().cloned().collect(),
            chain: self.chain,
        }
    }

    fn context_length(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn tokenize_chat(&self, messages: &[Message]) -> Result<Vec<u32>, BackendError> {
        self.model
            .encode_chat(messages, true)
            .map_err(|e| BackendError::Invalid(format!("cannot render the messages: {e}")))
    }

    fn generate(
        &self,
        job: GenerationJob,
        on_step: &mut StepSink<'_>,
    ) -> Result<Vec<ChoiceOutput>, BackendError> {
        let deadline = job.deadline;
        let adapter = match &job.adapter {
            None => None,
            Some(name) => Some(
                self.read_adapters()
                    .get(name)
                    .map(LoraAdapter::share)
                    .ok_or_else(|| {
                        BackendError::NotAvailable(format!(
                            "the adapter `{name}` was unloaded before the request started; \
                             GET /v1/models lists what is served"
                        ))
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel();
        self.submit(EngineJob::Generate(Submitted {
            job,
            adapter,
            events: tx,
        }))?;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Event::Step(i, text)) => {
                    if !on_step(i, &text) {
                        // Dropping the receiver makes the engine cancel the rest.
                        return Err(BackendError::Internal("the client went away".into()));
                    }
                }
                Ok(Event::Done(result)) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(self.timeout()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(BackendError::Internal(
                        "the model engine dropped the request".into(),
                    ))
                }
            }
        }
    }

    fn load_adapter(&self, load: &AdapterLoad) -> Result<(), BackendError> {
        let path = Path::new(&load.path);
        if !path.is_dir() {
            return Err(BackendError::Invalid(format!(
                "lora_path {}: no such directory on this server (the path is read on the \
                 server's own disk: give a PEFT LoRA directory the server can read)",
                load.path
            )));
        }
        if !load.replace && self.read_adapters().contains_key(&load.name) {
            return Err(BackendError::Invalid(format!(
                "an adapter is already loaded as `{}`: unload it first, or set \
                 `load_inplace: true` to replace it",
                load.name
            )));
        }
        // Read outside the lock: requests keep being served while the weights load.
        let adapter = self
            .model
            .load_adapter(path, &load.name)
            .and_then(LoraAdapter::content_keyed)
            .map_err(|e| {
                BackendError::Invalid(format!(
                    "cannot load the adapter `{}` from {}: {e}",
                    load.name, load.path
                ))
            })?;
        let mut adapters = self.write_adapters();
        if !load.replace && adapters.contains_key(&load.name) {
            return Err(BackendError::Invalid(format!(
                "an adapter was loaded as `{}` meanwhile: unload it first, or set \
                 `load_inplace: true` to replace it",
                load.name
            )));
        }
        adapters.insert(load.name.clone(), adapter);
        Ok(())
    }

    fn unload_adapter(&self, name: &str) -> Result<(), BackendError> {
        match self.write_adapters().remove(name) {
            Some(_) => Ok(()),
            None => Err(BackendError::NotAvailable(format!(
                "no adapter is loaded as `{name}`; GET /v1/models lists what is served"
            ))),
        }
    }

    fn stats(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "requests": c.requests.load(Ordering::Relaxed),
            "decode_batches": c.batches.load(Ordering::Relaxed),
            "largest_batch": c.largest_batch.load(Ordering::Relaxed),
            "generated_tokens": c.generated_tokens.load(Ordering::Relaxed),
            "joined_running": c.joined_running.load(Ordering::Relaxed),
        })
    }

    fn chain(&self, query: ChainQuery) -> Result<ChainResponse, BackendError> {
        let deadline = query.deadline;
        let (tx, rx) = mpsc::channel();
        self.submit(EngineJob::Chain { query, reply: tx })?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.timeout()),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(BackendError::Internal(
                "the model engine dropped the request".into(),
            )),
        }
    }
}
