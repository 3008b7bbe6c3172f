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

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use malt_model::{LoraAdapter, Model};
use malt_serve::{
    BackendError, ChainQuery, ChainResponse, ChoiceOutput, GenerationJob, Message, ServeBackend,
    ServedModels, StepSink,
};

use crate::prefix_pool::PrefixPool;
use engine::{timeout_error, Counters, Engine, EngineJob, Event};

mod continuous;
mod engine;
mod waiting;

pub use engine::{Batching, ChainSetup, EngineSettings};

pub struct ModelServeBackend {
    counters: Arc<Counters>,
    model: Arc<Model>,
    served: ServedModels,
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
        let served = ServedModels {
            base: base_id.to_owned(),
            adapters: adapters.iter().map(|(n, _)| n.clone()).collect(),
            chain: chain.is_some(),
        };
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let engine = Engine {
            counters: counters.clone(),
            model: model.clone(),
            adapters: adapters.into_iter().collect(),
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
            served,
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
        self.served.clone()
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
        let (tx, rx) = mpsc::channel();
        self.submit(EngineJob::Generate { job, events: tx })?;
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
