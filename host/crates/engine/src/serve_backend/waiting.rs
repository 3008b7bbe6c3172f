//! `Off` and `Waiting` batching: the engine, when free, takes the next request (or every
//! waiting one) and decodes those with the same adapter and sampling settings as one batch to
//! the end.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use malt_model::{Branch, LoraAdapter, Model};
use malt_serve::{BackendError, ChoiceOutput, GenerationJob};

use super::engine::{
    choice_output, choice_seeds, timeout_error, Batching, Counters, Engine, EngineJob, Event,
    Submitted,
};
use crate::prefix_pool::PrefixPool;

/// A request of a decode batch and its bookkeeping.
struct Pending {
    job: GenerationJob,
    events: mpsc::Sender<Event>,
    seeds: Vec<u64>,
    /// The client went away or the deadline passed: stop its branches.
    cancelled: bool,
    timed_out: bool,
}

/// The engine loop of `Off` and `Waiting` until the job channel closes.
pub(super) fn run(engine: &mut Engine, rx: mpsc::Receiver<EngineJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        if engine.settings.batching == Batching::Waiting {
            jobs.extend(rx.try_iter());
        }
        let mut generations = Vec::new();
        for job in jobs {
            match job {
                EngineJob::Chain { query, reply } => engine.answer_chain(query, reply),
                EngineJob::Generate(submitted) => generations.push(submitted),
            }
        }
        for group in group_compatible(generations) {
            engine.run_group(group);
        }
    }
}

impl Engine {
    /// Decodes requests sharing adapter and sampling settings as one batch.
    fn run_group(&mut self, group: Vec<Submitted>) {
        let now = Instant::now();
        let mut pending: Vec<Pending> = Vec::new();
        let adapter = group
            .first()
            .and_then(|s| s.adapter.as_ref().map(LoraAdapter::share));
        for Submitted { job, events, .. } in group {
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
        let params = first.job.sampling.clone();
        let c = &self.counters;
        c.requests
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.largest_batch
            .fetch_max(pending.len() as u64, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| {
            decode(
                c,
                &self.model,
                &mut self.pool,
                adapter.as_ref(),
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
}

/// Groups requests that can decode together (same adapter and sampling settings), in arrival
/// order of each group's first request.
fn group_compatible(jobs: Vec<Submitted>) -> Vec<Vec<Submitted>> {
    let mut groups: Vec<Vec<Submitted>> = Vec::new();
    for s in jobs {
        let same = groups.iter_mut().find(|g| {
            let head = &g[0];
            head.adapter_uid() == s.adapter_uid() && head.job.sampling == s.job.sampling
        });
        match same {
            Some(g) => g.push(s),
            None => groups.push(vec![s]),
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
        let token_ids = completion.sampled_ids();
        let p = &pending[pi];
        outs[pi].push(choice_output(
            p.job.logprobs,
            p.seeds[c],
            completion.text,
            token_ids,
            completion.tokens.len(),
            completion.finish,
            completion.logprobs,
        ));
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
