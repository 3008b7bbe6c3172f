//! [`malt_serve::ServeBackend`] over the embedded candle model: the engine behind `malt serve`.
//!
//! candle already uses every core for one forward pass, so the model runs on a single engine
//! thread fed by a channel; handler threads only validate, tokenize and wait. How the engine
//! batches is [`Batching`]: with `Continuous` (the default) a request joins the decode batch
//! that is already running between two steps (`serve_continuous`); with `Waiting` the engine,
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
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use malt_eval::{ChainError, ChainRequest, ChainRunner, Outcome};
use malt_model::{Branch, Finish, LoraAdapter, Model};
use malt_serve::{
    BackendError, ChainAttempt, ChainQuery, ChainResponse, ChainTurn, ChoiceOutput, FinishReason,
    GenerationJob, Message, SamplingSettings, Seeds, ServeBackend, ServedModels, StepSink,
};
use malt_tree::{ChainSpec, Example, Scorer};

use super::chain_runner::{Adapters, SystemSetup, TurnPlan, Weights};
use super::prefix_pool::PrefixPool;
use super::{ModelChainRunner, PluginScorer};

/// How the engine batches concurrent requests (`[serve] batch` and `continuous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// One request at a time.
    Off,
    /// Requests waiting when the engine is free decode together until the last one finishes.
    Waiting,
    /// Requests join the running decode batch between steps and leave when done.
    Continuous,
}

/// The engine's settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub batching: Batching,
    /// Choices decoded together at most (continuous batching).
    pub max_batch: usize,
    /// `[serve] request_timeout_s`, for messages.
    pub timeout_s: f64,
}

/// What the chain endpoint needs besides the model: the config's plugins and chain.
pub struct ChainSetup {
    pub scorer: PluginScorer,
    pub chain: ChainSpec,
    /// Where the trained adapters are (`adapters/<agent>/{sft,dpo}`).
    pub run_dir: PathBuf,
    pub majority_k: u32,
    /// The plugin that parses dataset records.
    pub dataset_plugin: String,
}

pub(super) enum EngineJob {
    Generate {
        job: GenerationJob,
        events: mpsc::Sender<Event>,
    },
    Chain {
        query: ChainQuery,
        reply: mpsc::Sender<Result<ChainResponse, BackendError>>,
    },
}

pub(super) enum Event {
    Step(usize, String),
    Done(Result<Vec<ChoiceOutput>, BackendError>),
}

/// Engine counters, for `/health` and the benchmark.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub requests: AtomicU64,
    /// Decode batches started (continuous batching: from an idle engine).
    pub batches: AtomicU64,
    /// Most choices decoded together.
    pub largest_batch: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Requests that joined a batch already decoding (continuous batching).
    pub joined_running: AtomicU64,
}

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
            .spawn(move || engine.run(rx))?;
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

pub(super) fn timeout_error(timeout_s: f64) -> BackendError {
    BackendError::Timeout(format!(
        "the request did not finish within {timeout_s} s ([serve] request_timeout_s); \
         lower max_tokens or n, or retry when the server is less busy"
    ))
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

pub(super) struct Engine {
    pub counters: Arc<Counters>,
    pub model: Arc<Model>,
    pub adapters: BTreeMap<String, LoraAdapter>,
    pub pool: PrefixPool,
    pub settings: EngineSettings,
    pub chain: Option<ChainSetup>,
    pub timeout_s: f64,
}

/// The seeds of a job's choices: `malt_seeds` as given, else derived from `seed` as
/// `malt generate --seed` does.
pub(super) fn choice_seeds(job: &GenerationJob) -> Vec<u64> {
    match &job.seeds {
        Seeds::Explicit(s) => s.clone(),
        Seeds::Derived(s) => (0..job.n)
            .map(|j| malt_model::branch_seed(*s, &[j]))
            .collect(),
    }
}

/// The model's finish reason as the API names it.
/// A request's sampling settings for the model's sampler. The seed is left 0: every choice
/// decodes with its own seed (`choice_seeds`).
pub(super) fn sampling_params(s: &SamplingSettings) -> malt_model::SamplingParams {
    malt_model::SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        max_new_tokens: s.max_tokens,
        stop: s.stop.clone(),
        seed: 0,
    }
}

pub(super) fn finish_reason(f: Finish) -> FinishReason {
    match f {
        Finish::Eos(_) => FinishReason::EndOfTurn,
        Finish::StopString => FinishReason::StopString,
        Finish::Length | Finish::Cancelled => FinishReason::Length,
    }
}

/// A request of a decode batch and its bookkeeping.
struct Pending {
    job: GenerationJob,
    events: mpsc::Sender<Event>,
    seeds: Vec<u64>,
    /// The client went away or the deadline passed: stop its branches.
    cancelled: bool,
    timed_out: bool,
}

impl Engine {
    fn run(mut self, rx: mpsc::Receiver<EngineJob>) {
        if self.settings.batching == Batching::Continuous {
            return super::serve_continuous::run(&mut self, rx);
        }
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            if self.settings.batching == Batching::Waiting {
                jobs.extend(rx.try_iter());
            }
            let mut generations = Vec::new();
            for job in jobs {
                match job {
                    EngineJob::Chain { query, reply } => self.answer_chain(query, reply),
                    EngineJob::Generate { job, events } => generations.push((job, events)),
                }
            }
            for group in group_compatible(generations) {
                self.run_group(group);
            }
        }
    }

    /// Decodes requests sharing adapter and sampling settings as one batch.
    fn run_group(&mut self, group: Vec<(GenerationJob, mpsc::Sender<Event>)>) {
        let now = Instant::now();
        let mut pending: Vec<Pending> = Vec::new();
        for (job, events) in group {
            if now >= job.deadline {
                let _ = events.send(Event::Done(Err(timeout_error(self.timeout_s))));
                continue;
            }
            let seeds = choice_seeds(&job);
            pending.push(Pending {
                job,
                events,
                seeds,
                cancelled: false,
                timed_out: false,
            });
        }
        let Some(first) = pending.first() else {
            return;
        };
        let adapter_name = first.job.adapter.clone();
        let params = sampling_params(&first.job.sampling);
        let c = &self.counters;
        c.requests
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.largest_batch
            .fetch_max(pending.len() as u64, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let adapter = adapter_name.as_ref().and_then(|a| self.adapters.get(a));
            decode(
                c,
                &self.model,
                &mut self.pool,
                adapter,
                &params,
                &mut pending,
            )
        }));
        let failure = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => BackendError::Internal("generation panicked".into()),
        };
        tracing::error!("generation failed: {failure}");
        for p in pending {
            let _ = p.events.send(Event::Done(Err(failure.clone())));
        }
    }

    /// Runs a chain request (the decode batch, if any, waits) and sends its result.
    pub(super) fn answer_chain(
        &mut self,
        query: ChainQuery,
        reply: mpsc::Sender<Result<ChainResponse, BackendError>>,
    ) {
        let result = catch_unwind(AssertUnwindSafe(|| self.run_chain(query)))
            .unwrap_or_else(|_| Err(BackendError::Internal("the chain run panicked".into())));
        let _ = reply.send(result);
    }

    fn run_chain(&mut self, query: ChainQuery) -> Result<ChainResponse, BackendError> {
        if Instant::now() >= query.deadline {
            return Err(timeout_error(self.timeout_s));
        }
        let setup = self.chain.as_mut().ok_or_else(|| {
            BackendError::NotAvailable("the chain endpoint needs `malt serve CONFIG`".into())
        })?;
        let example = match (query.question, query.record) {
            (Some(question), _) => Example {
                id: "request".into(),
                question,
                gold: String::new(),
                choices: vec![],
                metadata: "{}".into(),
            },
            (None, Some(record)) => {
                let line = record.to_string();
                let plugin = setup.dataset_plugin.clone();
                let parsed = setup
                    .scorer
                    .parse_records(&plugin, &[line.as_str()])
                    .map_err(|e| BackendError::Internal(format!("plugin `{plugin}`: {e}")))?;
                match parsed.into_iter().next() {
                    Some(Ok(ex)) => ex,
                    Some(Err(msg)) => {
                        return Err(BackendError::Invalid(format!(
                            "`record` is not a valid record for plugin `{plugin}`: {msg}"
                        )))
                    }
                    None => {
                        return Err(BackendError::Internal(format!(
                            "plugin `{plugin}` returned no result for the record"
                        )))
                    }
                }
            }
            (None, None) => return Err(BackendError::Invalid("no question".into())),
        };
        let k = query.k.unwrap_or(setup.majority_k).max(1);
        // The runner owns its adapters; loading them per request also picks up an adapter
        // trained while the server runs.
        // With `[rounds]`, the last trained round's.
        let round = malt_layout::RunLayout::new(&setup.run_dir).latest_trained_round();
        let agents = setup.chain.agents.iter().map(|a| a.name.as_str());
        let adapters = malt_train::load_final_adapters(&self.model, round.dir(), agents)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let trained: Vec<String> = adapters.iter().map(|(n, _)| n.clone()).collect();
        let weights = if trained.is_empty() {
            Weights::Base
        } else {
            Weights::Malt
        };
        let system = SystemSetup {
            id: "chain".into(),
            turns: vec![TurnPlan::Run(weights); setup.chain.len()],
        };
        let gold = (!example.gold.is_empty()).then(|| example.gold.clone());
        let question = example.question.clone();
        let mut runner = ModelChainRunner::new(
            &self.model,
            setup.chain.clone(),
            vec![example],
            k,
            &mut setup.scorer,
            Adapters::malt(adapters),
            vec![system],
        );
        let mut attempts = Vec::new();
        let mut votes: Vec<Option<String>> = Vec::new();
        let mut correct = Vec::new();
        for attempt in 0..k {
            let req = ChainRequest {
                system: "chain".into(),
                example_idx: 0,
                attempt,
                eval_seed: query.seed,
                sample_seed: malt_eval::derive_sample_seed(query.seed, 0, attempt),
            };
            match runner.run_chain(&req) {
                Ok(trace) => {
                    let outcome = trace.final_outcome().clone();
                    votes.push(outcome.vote_key().map(str::to_owned));
                    correct.push(outcome.is_correct());
                    attempts.push(ChainAttempt {
                        attempt,
                        answer: answer_of(&outcome),
                        error: None,
                        turns: trace
                            .turns
                            .iter()
                            .map(|t| ChainTurn {
                                agent: t.agent.clone(),
                                adapter: weights == Weights::Malt && trained.contains(&t.agent),
                                output: t.output.clone(),
                                answer: answer_of(&t.outcome),
                            })
                            .collect(),
                    });
                }
                Err(ChainError::Item(msg)) => {
                    votes.push(None);
                    correct.push(false);
                    attempts.push(ChainAttempt {
                        attempt,
                        turns: vec![],
                        answer: None,
                        error: Some(msg),
                    });
                }
                Err(ChainError::Fatal(msg)) => return Err(BackendError::Internal(msg)),
            }
        }
        let winner = malt_eval::majority_vote(&votes);
        Ok(ChainResponse {
            object: "malt.chain".into(),
            system: match weights {
                Weights::Base => "untrained-chain",
                _ => "trained-chain",
            }
            .into(),
            question,
            correct: gold.as_ref().map(|_| winner.is_some_and(|w| correct[w])),
            gold,
            k,
            seed: query.seed,
            answer: winner.and_then(|w| attempts[w].answer.clone()),
            answer_attempt: winner,
            attempts,
        })
    }
}

fn answer_of(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Answer { answer, .. } => Some(answer.clone()),
        _ => None,
    }
}

/// Groups requests that can decode together (same adapter and sampling settings), in arrival
/// order of each group's first request.
fn group_compatible(
    jobs: Vec<(GenerationJob, mpsc::Sender<Event>)>,
) -> Vec<Vec<(GenerationJob, mpsc::Sender<Event>)>> {
    let mut groups: Vec<Vec<(GenerationJob, mpsc::Sender<Event>)>> = Vec::new();
    for (job, tx) in jobs {
        let same = groups.iter_mut().find(|g| {
            let head = &g[0].0;
            head.adapter == job.adapter && head.sampling == job.sampling
        });
        match same {
            Some(g) => g.push((job, tx)),
            None => groups.push(vec![(job, tx)]),
        }
    }
    groups
}

/// Prefills each request once, forks it into its choices and decodes every branch together,
/// streaming steps to each request's handler.
fn decode(
    counters: &Counters,
    model: &Model,
    pool: &mut PrefixPool,
    adapter: Option<&LoraAdapter>,
    params: &malt_model::SamplingParams,
    pending: &mut [Pending],
) -> Result<(), BackendError> {
    let mut branches = Vec::new();
    let mut owners: Vec<(usize, usize)> = Vec::new();
    for (pi, p) in pending.iter_mut().enumerate() {
        match pool.prompt_cache(model, &p.job.prompt, adapter) {
            Ok(cache) => {
                for (c, &seed) in p.seeds.iter().enumerate() {
                    branches.push(Branch {
                        cache: cache.clone(),
                        seed,
                    });
                    owners.push((pi, c));
                }
            }
            Err(e) => {
                p.cancelled = true;
                let _ = p.events.send(Event::Done(Err(BackendError::Invalid(format!(
                    "cannot prefill the prompt: {e}"
                )))));
            }
        }
    }
    if branches.is_empty() {
        return Ok(());
    }
    let mut observe = |step: &malt_model::Step<'_>| -> bool {
        let (pi, c) = owners[step.branch];
        let p = &mut pending[pi];
        if p.cancelled {
            return false;
        }
        if Instant::now() >= p.job.deadline {
            p.cancelled = true;
            p.timed_out = true;
            return false;
        }
        if p.events.send(Event::Step(c, step.text.to_owned())).is_err() {
            p.cancelled = true;
            return false;
        }
        true
    };
    let done = model
        .generate_observed(branches, params, adapter, &mut observe)
        .map_err(|e| BackendError::Internal(format!("generation failed: {e}")))?;
    let mut outs: Vec<Vec<ChoiceOutput>> = pending.iter().map(|_| Vec::new()).collect();
    let generated: usize = done.iter().map(|c| c.tokens.len()).sum();
    counters
        .generated_tokens
        .fetch_add(generated as u64, Ordering::Relaxed);
    for (completion, &(pi, c)) in done.into_iter().zip(&owners) {
        outs[pi].push(ChoiceOutput {
            completion_tokens: completion.tokens.len(),
            finish: finish_reason(completion.finish),
            token_ids: completion.sampled_ids(),
            text: completion.text,
            seed: pending[pi].seeds[c],
        });
    }
    for (p, out) in pending.iter().zip(outs) {
        if p.timed_out {
            let _ = p.events.send(Event::Done(Err(BackendError::Timeout(
                "the request's deadline passed during generation ([serve] request_timeout_s)"
                    .into(),
            ))));
        } else if !p.cancelled {
            let _ = p.events.send(Event::Done(Ok(out)));
        }
    }
    Ok(())
}
