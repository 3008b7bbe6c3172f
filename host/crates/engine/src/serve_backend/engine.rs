//! The engine thread's state and what every batching mode shares: the jobs and events on its
//! channel, its counters, the seeds and sampling settings of a request, and the chain endpoint.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use malt_eval::{ChainError, ChainRequest, ChainRunner, Outcome};
use malt_model::{Finish, LoraAdapter, Model};
use malt_serve::{
    BackendError, ChainAttempt, ChainQuery, ChainResponse, ChainTurn, ChoiceOutput, FinishReason,
    GenerationJob, Seeds,
};
use malt_tree::{ChainSpec, Example, Scorer};

use crate::chain_runner::{Adapters, SystemSetup, TurnPlan, Weights};
use crate::prefix_pool::PrefixPool;
use crate::{ModelChainRunner, PluginScorer};

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
    Generate(Submitted),
    Chain {
        query: ChainQuery,
        reply: mpsc::Sender<Result<ChainResponse, BackendError>>,
    },
}

/// A generation request with the adapter it was accepted under (resolved when it arrived, so
/// an adapter unloaded or replaced later does not change what it samples with).
pub(super) struct Submitted {
    pub job: GenerationJob,
    pub adapter: Option<LoraAdapter>,
    pub events: mpsc::Sender<Event>,
}

impl Submitted {
    /// The cache identity of its adapter: requests decode together only under the same one.
    pub fn adapter_uid(&self) -> Option<u64> {
        self.adapter.as_ref().map(LoraAdapter::uid)
    }
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

pub(super) struct Engine {
    pub counters: Arc<Counters>,
    pub model: Arc<Model>,
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

/// A finished choice as the API returns it; its log-probs only when the request asked for them
/// and there is one per sampled id (greedy sampling records none).
pub(super) fn choice_output(
    want_logprobs: bool,
    seed: u64,
    text: String,
    token_ids: Vec<u32>,
    completion_tokens: usize,
    finish: Finish,
    logprobs: Vec<f32>,
) -> ChoiceOutput {
    let logprobs = (want_logprobs && logprobs.len() == token_ids.len()).then_some(logprobs);
    ChoiceOutput {
        text,
        completion_tokens,
        finish: finish_reason(finish),
        token_ids,
        seed,
        logprobs,
    }
}

/// The model's finish reason as the API names it.
pub(super) fn finish_reason(f: Finish) -> FinishReason {
    match f {
        Finish::Eos(_) => FinishReason::EndOfTurn,
        Finish::StopString => FinishReason::StopString,
        Finish::Length | Finish::Cancelled => FinishReason::Length,
    }
}

pub(super) fn timeout_error(timeout_s: f64) -> BackendError {
    BackendError::Timeout(format!(
        "the request did not finish within {timeout_s} s ([serve] request_timeout_s); \
         lower max_tokens or n, or retry when the server is less busy"
    ))
}

impl Engine {
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
        // An agent that trained nothing (no positive, no pair) serves on the base model.
        let trained: Vec<String> = adapters.iter().map(|(n, _)| n.clone()).collect();
        let turns = setup
            .chain
            .agents
            .iter()
            .map(|a| match trained.contains(&a.name) {
                true => TurnPlan::Run(Weights::Malt),
                false => TurnPlan::Run(Weights::Base),
            })
            .collect();
        let system = SystemSetup {
            id: "chain".into(),
            turns,
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
                                adapter: trained.contains(&t.agent),
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
            system: if trained.is_empty() {
                "untrained-chain"
            } else {
                "trained-chain"
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
