//! [`RemoteSampler`]: the tree engine's [`Sampler`] over OpenAI-compatible servers.
//!
//! A batch (one chain level of one tree) is a set of requests, one per parent node, each
//! asking for that node's n children. The requests run concurrently: every endpoint gets up to
//! `max_concurrency` worker threads that take requests from one shared queue, and an idle
//! worker leaves a request to another endpoint that is less loaded (in-flight / capacity), so
//! the work spreads to the least-loaded server and a slow or dead one takes less.
//!
//! A failed attempt is retried with backoff on any live endpoint; the endpoint that failed is
//! paused for that backoff. A request that exhausts its budget fails the whole batch with a
//! [`SamplerError`]: the tree in flight is dropped (never half stored) and a rerun resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use malt_tree::{Completion, RequestResult, SampleRequest, Sampler, SamplerError};

use crate::call::{Client, Probe};
use crate::endpoint::Endpoint;
use crate::engine::{Engine, EngineChoice};
use crate::retry::{Outcome, RetryPolicy};

/// Everything the remote backend needs, resolved (API keys read from the environment).
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub endpoints: Vec<Endpoint>,
    /// Served model name for agents without an entry in `models`.
    pub model: String,
    /// Agent name -> served model name.
    pub models: BTreeMap<String, String>,
    pub retry: RetryPolicy,
    /// Ask for each sampled token's log-prob (online training records them).
    pub logprobs: bool,
}

/// Counters, for the end-of-stage log line and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStats {
    /// HTTP attempts sent.
    pub attempts: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Requests re-sent because a server returned fewer choices than asked.
    pub follow_ups: u64,
    /// Requests the server refused (their nodes are errored).
    pub refused: u64,
    pub completions: u64,
}

/// One endpoint's engine as resolved before the first request, for the log at the start of a
/// run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineReport {
    /// The endpoint (URL without credentials).
    pub endpoint: String,
    pub engine: Engine,
    /// How it was chosen: `engine = ...` in the config, or what the server said.
    pub source: String,
    /// What the engine does not honour, one sentence each.
    pub caveats: Vec<String>,
}

impl EngineReport {
    /// Logs the engine (info) and each caveat (warn): the start-of-run notice.
    pub fn log(&self) {
        tracing::info!(
            "generation endpoint {}: {} ({})",
            self.endpoint,
            self.engine,
            self.source
        );
        for c in &self.caveats {
            tracing::warn!(
                "generation endpoint {} ({}): {c}",
                self.endpoint,
                self.engine
            );
        }
    }
}

pub struct RemoteSampler {
    pub(crate) clients: Vec<Client>,
    /// Per endpoint, once resolved (`None`: `engine = "auto"` not yet asked).
    pub(crate) engines: Vec<Option<Engine>>,
    model: String,
    pub(crate) models: BTreeMap<String, String>,
    pub(crate) retry: RetryPolicy,
    logprobs: bool,
    /// Agent -> the adapter version this sampler loaded for it ([`RemoteSampler::swap_adapters`]).
    pub(crate) loaded: BTreeMap<String, String>,
    /// Per endpoint, kept across batches: paused until, consecutive failures. A dead server
    /// is skipped by the next batches too instead of costing each of their requests a try.
    health: Vec<Health>,
    pub stats: RemoteStats,
}

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    down_until: Option<Instant>,
    failures: u32,
}

impl std::fmt::Debug for RemoteSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSampler")
            .field(
                "endpoints",
                &self.clients.iter().map(|c| &c.endpoint).collect::<Vec<_>>(),
            )
            .field("model", &self.model)
            .field("models", &self.models)
            .field("retry", &self.retry)
            .finish()
    }
}

impl RemoteSampler {
    pub fn new(settings: RemoteSettings) -> Result<RemoteSampler, SamplerError> {
        if settings.endpoints.is_empty() {
            return Err(SamplerError(
                "remote generation needs at least one endpoint".into(),
            ));
        }
        Ok(RemoteSampler {
            health: vec![Health::default(); settings.endpoints.len()],
            engines: settings
                .endpoints
                .iter()
                .map(|e| match e.engine {
                    EngineChoice::Fixed(engine) => Some(engine),
                    EngineChoice::Auto => None,
                })
                .collect(),
            clients: settings.endpoints.into_iter().map(Client::new).collect(),
            model: settings.model,
            models: settings.models,
            retry: settings.retry,
            logprobs: settings.logprobs,
            loaded: BTreeMap::new(),
            stats: RemoteStats::default(),
        })
    }

    fn model_for(&self, agent: &str) -> &str {
        self.models.get(agent).unwrap_or(&self.model)
    }

    /// Identifies every endpoint's engine (asking `GET /v1/models` of those with `engine =
    /// "auto"`, retried like a request while the server is unreachable) and reports what each
    /// does not honour. `uses_top_k`: some agent samples with top-k. Called before the first
    /// batch; [`Sampler::sample`] calls it (and logs the reports) if nobody did.
    pub fn resolve_engines(&mut self, uses_top_k: bool) -> Result<Vec<EngineReport>, SamplerError> {
        let mut reports = Vec::with_capacity(self.clients.len());
        for (i, client) in self.clients.iter().enumerate() {
            let (engine, source) = match (self.engines[i], client.endpoint.engine) {
                (Some(e), EngineChoice::Fixed(_)) => (e, "set by `engine` in the config".into()),
                (Some(e), EngineChoice::Auto) => (e, "identified earlier".into()),
                (None, _) => probe_with_retries(client, &self.retry)?,
            };
            self.engines[i] = Some(engine);
            let mut caveats = engine.caveats(uses_top_k);
            if self.logprobs {
                caveats.extend(engine.logprob_caveat().map(str::to_owned));
            }
            reports.push(EngineReport {
                endpoint: client.endpoint.to_string(),
                engine,
                source,
                caveats,
            });
        }
        Ok(reports)
    }
}

/// Asks one endpoint for its engine, retrying connection failures and 5xx within the retry
/// budget (a server may still be starting).
fn probe_with_retries(
    client: &Client,
    retry: &RetryPolicy,
) -> Result<(Engine, String), SamplerError> {
    let endpoint = &client.endpoint;
    let mut waited = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        match client.probe() {
            Ok(Probe::Known(e)) => {
                return Ok((e, format!("identified by GET {}", endpoint.models_url())))
            }
            Ok(Probe::Unknown(why)) => {
                return Ok((
                    Engine::Openai,
                    format!("{why}; treated as a generic OpenAI-compatible API"),
                ))
            }
            Err(Outcome::Retry { error, retry_after }) => {
                failures += 1;
                let wait = retry
                    .backoff(failures, 0)
                    .max(retry_after.unwrap_or_default());
                if failures > retry.retries || waited + wait > retry.max_wait {
                    return Err(SamplerError(format!(
                        "cannot identify the engine of endpoint {endpoint} after {failures} \
                         attempts ({error}); start the server, or set `engine` (\"malt\", \
                         \"vllm\", \"sglang\", \"llama.cpp\" or \"openai\") on its \
                         [[generation.endpoints]] table"
                    )));
                }
                tracing::warn!(
                    "{endpoint}: identifying the engine failed: {error}; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                waited += wait;
                std::thread::sleep(wait);
            }
            Err(Outcome::Fatal(msg) | Outcome::Refused(msg)) => {
                return Err(SamplerError(format!("endpoint {endpoint}: {msg}")))
            }
            Err(Outcome::Choices(_)) => unreachable!("a probe has no choices"),
        }
    }
}

/// One request's remaining work (all its choices, or some when split).
#[derive(Clone)]
struct Job {
    request: usize,
    /// Choice slots not yet returned.
    missing: Vec<usize>,
    failures: u32,
    waited: Duration,
    not_before: Instant,
    /// The endpoint that failed it last; others may retry it before `not_before`.
    avoid: Option<usize>,
    tried: BTreeSet<usize>,
    /// Ask one choice per request (the endpoint refused a request for several).
    single: bool,
}

struct State {
    queue: Vec<Job>,
    /// Per request, per choice.
    texts: Vec<Vec<Option<Completion>>>,
    refused: Vec<Option<String>>,
    /// Requests queued or in flight.
    outstanding: usize,
    in_flight: Vec<usize>,
    workers: Vec<usize>,
    health: Vec<Health>,
    fatal: Option<String>,
    stats: RemoteStats,
}

/// The longest a worker sleeps without re-checking (a lost wake-up costs at most this).
const POLL: Duration = Duration::from_millis(50);

enum Pick {
    Take(usize),
    Wait(Duration),
}

impl State {
    /// Which queued job worker of endpoint `e` should take now, if any.
    fn pick(&self, e: usize, now: Instant) -> Pick {
        if let Some(t) = self.health[e].down_until.filter(|&t| t > now) {
            return Pick::Wait((t - now).min(POLL));
        }
        let load = |f: usize| (self.in_flight[f] as f64) / (self.workers[f] as f64);
        let mut soonest = POLL;
        for (i, job) in self.queue.iter().enumerate() {
            let ready = job.not_before <= now || job.avoid.is_some_and(|a| a != e);
            if !ready {
                soonest = soonest.min(job.not_before - now);
                continue;
            }
            // Leave it to a less-loaded live endpoint with an idle worker (ties: lower index).
            let better = (0..self.workers.len()).any(|f| {
                f != e
                    && self.in_flight[f] < self.workers[f]
                    && self.health[f].down_until.is_none_or(|t| t <= now)
                    && (job.not_before <= now || job.avoid != Some(f))
                    && (load(f) < load(e) || (load(f) == load(e) && f < e))
            });
            if better {
                return Pick::Wait(POLL);
            }
            return Pick::Take(i);
        }
        Pick::Wait(soonest)
    }
}

impl Sampler for RemoteSampler {
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<RequestResult>, SamplerError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        if self.engines.iter().any(Option::is_none) {
            let uses_top_k = requests.iter().any(|r| r.params.top_k > 0);
            for r in self.resolve_engines(uses_top_k)? {
                r.log();
            }
        }
        let engines: Vec<Engine> = self
            .engines
            .iter()
            .map(|e| e.unwrap_or(Engine::Openai))
            .collect();
        let bodies: Vec<(&str, &SampleRequest<'_>)> = requests
            .iter()
            .map(|r| (self.model_for(r.agent), r))
            .collect();
        let now = Instant::now();
        let workers: Vec<usize> = self
            .clients
            .iter()
            .map(|c| c.endpoint.max_concurrency.clamp(1, requests.len()))
            .collect();
        let state = Mutex::new(State {
            queue: requests
                .iter()
                .enumerate()
                .map(|(i, r)| Job {
                    request: i,
                    missing: (0..r.seeds.len()).collect(),
                    failures: 0,
                    waited: Duration::ZERO,
                    not_before: now,
                    avoid: None,
                    tried: BTreeSet::new(),
                    single: false,
                })
                .collect(),
            texts: requests.iter().map(|r| vec![None; r.seeds.len()]).collect(),
            refused: vec![None; requests.len()],
            outstanding: requests.len(),
            in_flight: vec![0; self.clients.len()],
            workers: workers.clone(),
            health: self.health.clone(),
            fatal: None,
            stats: RemoteStats::default(),
        });
        let wake = Condvar::new();
        let ctx = Ctx {
            logprobs: self.logprobs,
            clients: &self.clients,
            engines: &engines,
            bodies: &bodies,
            retry: self.retry,
            state: &state,
            wake: &wake,
        };
        std::thread::scope(|s| {
            for (e, &n) in workers.iter().enumerate() {
                for _ in 0..n {
                    let ctx = &ctx;
                    s.spawn(move || ctx.work(e));
                }
            }
        });
        let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
        self.health = st.health;
        let st_stats = st.stats;
        self.stats.attempts += st_stats.attempts;
        self.stats.retries += st_stats.retries;
        self.stats.follow_ups += st_stats.follow_ups;
        self.stats.refused += st_stats.refused;
        self.stats.completions += st_stats.completions;
        if let Some(msg) = st.fatal {
            return Err(SamplerError(msg));
        }
        Ok(st
            .texts
            .into_iter()
            .zip(st.refused)
            .map(|(texts, refused)| match refused {
                Some(msg) => Err(msg),
                None => Ok(texts.into_iter().map(Option::unwrap_or_default).collect()),
            })
            .collect())
    }
}

/// What the worker threads share.
struct Ctx<'a, 'r> {
    logprobs: bool,
    clients: &'a [Client],
    engines: &'a [Engine],
    bodies: &'a [(&'a str, &'a SampleRequest<'r>)],
    retry: RetryPolicy,
    state: &'a Mutex<State>,
    wake: &'a Condvar,
}

impl Ctx<'_, '_> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Worker loop of endpoint `e`: take a job, send it, file the outcome, until the batch is
    /// done or failed.
    fn work(&self, e: usize) {
        let mut st = self.lock();
        loop {
            if st.fatal.is_some() || st.outstanding == 0 {
                self.wake.notify_all();
                return;
            }
            let now = Instant::now();
            let i = match st.pick(e, now) {
                Pick::Take(i) => i,
                Pick::Wait(d) => {
                    st = self
                        .wake
                        .wait_timeout(st, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
            };
            let engine = self.engines[e];
            let mut job = st.queue.remove(i);
            if (job.single || engine.one_choice_per_request()) && job.missing.len() > 1 {
                // One choice now; the rest stay queued for other workers.
                let rest = Job {
                    missing: job.missing.split_off(1),
                    tried: BTreeSet::new(),
                    ..job.clone()
                };
                st.queue.insert(i, rest);
                st.outstanding += 1;
            }
            st.in_flight[e] += 1;
            st.stats.attempts += 1;
            drop(st);

            let (model, req) = self.bodies[job.request];
            let seeds: Vec<u64> = job.missing.iter().map(|&j| req.seeds[j]).collect();
            let client = &self.clients[e];
            let malt_seeds = client.endpoint.malt_seeds.unwrap_or(engine == Engine::Malt);
            let mut body = engine.request_body(model, req.messages, req.params, &seeds, malt_seeds);
            if self.logprobs {
                engine.ask_logprobs(&mut body);
            }
            let outcome = client.post(&body, seeds.len());

            st = self.lock();
            st.in_flight[e] -= 1;
            self.file(&mut st, e, job, outcome);
            self.wake.notify_all();
        }
    }

    /// Records one attempt's outcome: completions in their slots, the job requeued for the rest
    /// or for a retry, or the batch failed.
    fn file(&self, st: &mut State, e: usize, mut job: Job, outcome: Outcome) {
        let endpoint = &self.clients[e].endpoint;
        job.tried.insert(e);
        let error = match outcome {
            Outcome::Choices(choices) => {
                let before = job.missing.len();
                let mut still = Vec::new();
                for (&slot, c) in job.missing.iter().zip(choices) {
                    match c {
                        Some(completion) => {
                            st.texts[job.request][slot] = Some(completion);
                            st.stats.completions += 1;
                        }
                        None => still.push(slot),
                    }
                }
                st.health[e] = Health::default();
                if still.is_empty() {
                    st.outstanding -= 1;
                    return;
                }
                if still.len() < before {
                    // Fewer choices than `n` (llama.cpp ignores `n`): ask again for the rest.
                    tracing::debug!(
                        "{endpoint}: {} of {before} choices returned; requesting the rest",
                        before - still.len()
                    );
                    st.stats.follow_ups += 1;
                    job.missing = still;
                    job.not_before = Instant::now();
                    job.avoid = None;
                    st.queue.insert(0, job);
                    return;
                }
                (
                    "the server returned none of the requested choices".to_owned(),
                    None,
                )
            }
            Outcome::Refused(msg) if job.missing.len() > 1 => {
                // Some servers refuse `n` > 1 (llama.cpp beyond its slots): ask one by one.
                tracing::warn!(
                    "{endpoint} refused a request for {} choices ({msg}); asking for one \
                     choice per request",
                    job.missing.len()
                );
                job.single = true;
                job.avoid = None;
                st.queue.insert(0, job);
                return;
            }
            Outcome::Refused(msg) => {
                st.stats.refused += 1;
                st.refused[job.request] = Some(format!("{endpoint}: {msg}"));
                st.outstanding -= 1;
                return;
            }
            Outcome::Fatal(msg) => {
                if st.fatal.is_none() {
                    st.fatal = Some(format!("endpoint {endpoint}: {msg}"));
                }
                return;
            }
            Outcome::Retry { error, retry_after } => (error, retry_after),
        };
        let (error, retry_after) = error;
        job.failures += 1;
        let seed = job
            .missing
            .first()
            .map(|&j| self.bodies[job.request].1.seeds[j])
            .unwrap_or(0);
        let wait = self
            .retry
            .backoff(job.failures, seed)
            .max(retry_after.unwrap_or_default());
        if job.failures > self.retry.retries || job.waited + wait > self.retry.max_wait {
            if st.fatal.is_none() {
                let tried: Vec<String> = job
                    .tried
                    .iter()
                    .map(|&t| self.clients[t].endpoint.to_string())
                    .collect();
                st.fatal = Some(format!(
                    "remote generation gave up on a request after {} attempts and {:.1} s of \
                     backoff (retry budget: generation.retries = {}, generation.max_wait_s = \
                     {}) on endpoint(s) {}; last error: {error}. Every finished tree is stored; \
                     rerun to resume",
                    job.failures,
                    job.waited.as_secs_f64(),
                    self.retry.retries,
                    self.retry.max_wait.as_secs_f64(),
                    tried.join(", ")
                ));
            }
            return;
        }
        tracing::warn!(
            "{endpoint}: attempt {} failed: {error}; retrying in {:.1} s",
            job.failures,
            wait.as_secs_f64()
        );
        st.stats.retries += 1;
        let now = Instant::now();
        job.waited += wait;
        job.not_before = now + wait;
        job.avoid = Some(e);
        // Pause the endpoint too, longer with each consecutive failure (a restarting server
        // is not hammered by every request of the batch).
        let h = &mut st.health[e];
        h.failures += 1;
        let pause = now + self.retry.backoff(h.failures, e as u64).max(wait);
        h.down_until = Some(h.down_until.map_or(pause, |t| t.max(pause)));
        st.queue.insert(0, job);
    }
}
