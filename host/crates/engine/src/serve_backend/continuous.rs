//! Continuous batching for `malt serve`: the engine loop that lets requests join the decode
//! batch between two steps instead of waiting for it to finish, and leave it as soon as their
//! choices are done ([`malt_model::DecodeBatch`]).
//!
//! Requests are admitted in arrival order. One batch decodes under one adapter: a request for
//! another adapter waits until the batch drains (and holds back the requests behind it, so it
//! is not starved). A request whose `n` choices would take the batch past `max_batch` waits
//! for rows to free up. Chain requests run between two steps (the batch waits for them). Each
//! choice uses the same prefill, seed and sampler as served alone; its tokens can still differ
//! from a lone decode where the batch's row count changes the kernels' rounding.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use malt_model::{DecodeBatch, Joiner, LoraAdapter, Model};
use malt_serve::{BackendError, ChoiceOutput, GenerationJob};

use super::engine::{
    choice_output, choice_seeds, timeout_error, Counters, Engine, EngineJob, Event, Submitted,
};
use crate::prefix_pool::PrefixPool;

/// A request in the batch.
struct Live {
    /// The request asked for log-probs.
    logprobs: bool,
    events: mpsc::Sender<Event>,
    deadline: Instant,
    seeds: Vec<u64>,
    outs: Vec<Option<ChoiceOutput>>,
    left: usize,
    /// The client went away: its rows are cancelled, nothing more is sent.
    gone: bool,
    timed_out: bool,
}

/// The engine loop until the job channel closes.
pub(super) fn run(engine: &mut Engine, rx: mpsc::Receiver<EngineJob>) {
    let model = engine.model.clone();
    let mut waiting: VecDeque<Submitted> = VecDeque::new();
    // The running batch and the adapter its rows decode with (their own handle: an adapter
    // unloaded meanwhile stays alive until the batch drains).
    let mut batch: Option<(DecodeBatch<'_>, Option<LoraAdapter>)> = None;
    let mut live: HashMap<usize, Live> = HashMap::new();
    // Row id -> (request id, choice).
    let mut rows: HashMap<usize, (usize, usize)> = HashMap::new();
    let mut next_request = 0usize;
    let mut next_row = 0usize;
    loop {
        // Block only when there is nothing to decode.
        let idle = batch.as_ref().is_none_or(|(b, _)| b.is_empty());
        if idle && waiting.is_empty() {
            match rx.recv() {
                Ok(job) => take(engine, job, &mut waiting),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            take(engine, job, &mut waiting);
        }

        // Admit waiting requests, in order, while they fit.
        while let Some(next) = waiting.front() {
            if Instant::now() >= next.job.deadline {
                let next = waiting.pop_front().expect("front exists");
                let _ = next
                    .events
                    .send(Event::Done(Err(timeout_error(engine.timeout_s))));
                continue;
            }
            let running = batch.as_ref().map_or(0, |(b, _)| b.len());
            if running > 0 {
                let (_, adapter) = batch.as_ref().expect("running");
                let n = next.job.n;
                if adapter.as_ref().map(LoraAdapter::uid) != next.adapter_uid()
                    || running + n > engine.settings.max_batch.max(n)
                {
                    break;
                }
            }
            let Submitted {
                job,
                adapter: job_adapter,
                events,
            } = waiting.pop_front().expect("front exists");
            if running == 0 {
                batch = Some((DecodeBatch::new(&model, job_adapter.as_ref()), job_adapter));
                engine.counters.batches.fetch_add(1, Ordering::Relaxed);
            } else {
                engine
                    .counters
                    .joined_running
                    .fetch_add(1, Ordering::Relaxed);
            }
            let (b, adapter) = batch.as_mut().expect("just set");
            let adapter = adapter.as_ref();
            let id = next_request;
            next_request += 1;
            let joined = join(
                &model,
                &mut engine.pool,
                &engine.counters,
                b,
                adapter,
                job,
                events,
                id,
                &mut next_row,
                &mut live,
                &mut rows,
            );
            if let Err(e) = joined {
                fail_all(b, &mut live, &mut rows, e);
                batch = None;
            }
        }

        // One decode step.
        let Some((b, adapter)) = batch.as_mut() else {
            continue;
        };
        if b.is_empty() {
            continue;
        }
        engine
            .counters
            .largest_batch
            .fetch_max(b.len() as u64, Ordering::Relaxed);
        let adapter = adapter.as_ref();
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            b.step(adapter, &mut |step| {
                let Some(&(req, choice)) = rows.get(&step.branch) else {
                    return false;
                };
                let Some(l) = live.get_mut(&req) else {
                    return false;
                };
                if l.gone || l.timed_out {
                    return false;
                }
                if Instant::now() >= l.deadline {
                    l.timed_out = true;
                    return false;
                }
                if l.events
                    .send(Event::Step(choice, step.text.to_owned()))
                    .is_err()
                {
                    l.gone = true;
                    return false;
                }
                true
            })
        }));
        let finished = match stepped {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                let e = BackendError::Internal(format!("generation failed: {e}"));
                fail_all(b, &mut live, &mut rows, e);
                batch = None;
                continue;
            }
            Err(_) => {
                let e = BackendError::Internal("generation panicked".into());
                fail_all(b, &mut live, &mut rows, e);
                batch = None;
                continue;
            }
        };
        for f in finished {
            settle(&engine.counters, f, &mut live, &mut rows);
        }
    }
}

/// Files an incoming job: generations queue, chain requests run now.
fn take(engine: &mut Engine, job: EngineJob, waiting: &mut VecDeque<Submitted>) {
    match job {
        EngineJob::Generate(submitted) => waiting.push_back(submitted),
        EngineJob::Chain { query, reply } => engine.answer_chain(query, reply),
    }
}

/// Prefills `job`'s prompt (from the prefix pool) and adds its `n` choices to the batch. A
/// prompt that cannot be prefilled fails that request only; an error from the batch itself is
/// returned (it fails every request in it).
#[allow(clippy::too_many_arguments)]
fn join(
    model: &Model,
    pool: &mut PrefixPool,
    counters: &Counters,
    batch: &mut DecodeBatch<'_>,
    adapter: Option<&LoraAdapter>,
    job: GenerationJob,
    events: mpsc::Sender<Event>,
    id: usize,
    next_row: &mut usize,
    live: &mut HashMap<usize, Live>,
    rows: &mut HashMap<usize, (usize, usize)>,
) -> Result<(), BackendError> {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let cache = match pool.prompt_cache(model, &job.prompt, adapter) {
        Ok(c) => c,
        Err(e) => {
            let _ = events.send(Event::Done(Err(BackendError::Invalid(format!(
                "cannot prefill the prompt: {e}"
            )))));
            return Ok(());
        }
    };
    let seeds = choice_seeds(&job);
    let mut joiners = Vec::with_capacity(seeds.len());
    for (choice, &seed) in seeds.iter().enumerate() {
        rows.insert(*next_row, (id, choice));
        joiners.push(Joiner {
            id: *next_row,
            cache: cache.clone(),
            seed,
            params: job.sampling.clone(),
        });
        *next_row += 1;
    }
    live.insert(
        id,
        Live {
            logprobs: job.logprobs,
            events,
            deadline: job.deadline,
            outs: vec![None; seeds.len()],
            left: seeds.len(),
            seeds,
            gone: false,
            timed_out: false,
        },
    );
    let done = batch
        .add(joiners)
        .map_err(|e| BackendError::Internal(format!("cannot add to the decode batch: {e}")))?;
    for f in done {
        settle(counters, f, live, rows);
    }
    Ok(())
}

/// Records a finished row; the request answers once all its choices are done.
fn settle(
    counters: &Counters,
    f: malt_model::Finished,
    live: &mut HashMap<usize, Live>,
    rows: &mut HashMap<usize, (usize, usize)>,
) {
    let Some((req, choice)) = rows.remove(&f.id) else {
        return;
    };
    let Some(l) = live.get_mut(&req) else {
        return;
    };
    counters
        .generated_tokens
        .fetch_add(f.tokens.len() as u64, Ordering::Relaxed);
    let token_ids = f.sampled_ids();
    l.outs[choice] = Some(choice_output(
        l.logprobs,
        l.seeds[choice],
        f.text,
        token_ids,
        f.tokens.len(),
        f.finish,
        f.logprobs,
    ));
    l.left -= 1;
    if l.left > 0 {
        return;
    }
    let l = live.remove(&req).expect("present");
    if l.gone {
        return;
    }
    let result = if l.timed_out {
        Err(BackendError::Timeout(
            "the request's deadline passed during generation ([serve] request_timeout_s)".into(),
        ))
    } else {
        Ok(l.outs.into_iter().flatten().collect())
    };
    let _ = l.events.send(Event::Done(result));
}

/// Answers every request of a failed batch with `e`.
fn fail_all(
    _batch: &mut DecodeBatch<'_>,
    live: &mut HashMap<usize, Live>,
    rows: &mut HashMap<usize, (usize, usize)>,
    e: BackendError,
) {
    tracing::error!("the decode batch failed: {e}");
    rows.clear();
    for (_, l) in live.drain() {
        let _ = l.events.send(Event::Done(Err(e.clone())));
    }
}
