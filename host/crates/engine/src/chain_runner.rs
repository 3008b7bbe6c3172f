//! [`malt_eval::ChainRunner`] over the model and the plugins: one sequential pass of a system
//! per attempt. A system is a plan per chain position: run the agent on the base model, on its
//! MALT adapter or on the STaR adapter, or skip it ([`TurnPlan`]); the single agent and STaR
//! are one-turn plans.
//!
//! Attempts are computed in batches and cached; the evaluation driver then asks for them one
//! after the other. A batch is a fixed group of consecutive questions of one seed's subset
//! ([`ModelChainRunner::with_batches`]), all k attempts of each: every agent turn of the batch
//! is one decode batch, which keeps the matrix products wide. Batches are fixed by the plan, not
//! by what a resumed run still needs, so results do not depend on where a run was interrupted.
//!
//! Common random numbers: a turn's sampling seed depends on the evaluation seed, the question,
//! the attempt and the chain position, never on the system. Two systems whose plans agree on
//! their first t turns therefore produce the same first t turns, and those turns are computed
//! once and shared (the single agent is the untrained chain's first turn; "only the generator
//! trained" shares MALT's first turn). Systems whose plans are equal give equal results.

use std::collections::BTreeMap;

use malt_eval::{ChainError, ChainRequest, ChainRunner, ChainTrace, Outcome, Turn};
use malt_model::{LoraAdapter, Model};
use malt_tree::{
    take_turn, AgentSpec, ChainSpec, Example, ScoreItem, TurnAt, TurnInput, TurnOutput,
};

use super::{ModelSampler, PluginScorer};

type Traces = Vec<Result<ChainTrace, String>>;

/// Which weights an agent turn runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weights {
    Base,
    /// The agent's MALT adapter.
    Malt,
    /// The STaR adapter (the first agent only).
    Star,
    /// The agent's adapter after SFT on its positives, before DPO (multi-agent STaR).
    Sft,
    /// The agent's adapter from online training (`malt online`).
    Online,
}

impl Weights {
    fn key(self) -> &'static str {
        match self {
            Weights::Base => "base",
            Weights::Malt => "malt",
            Weights::Star => "star",
            Weights::Sft => "sft",
            Weights::Online => "online",
        }
    }
}

/// What a system does at one chain position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TurnPlan {
    Run(Weights),
    /// Not run: an empty output that answers nothing (the paper's G+R skips the verifier).
    Skip,
}

/// One system: its id (as in the evaluation plan) and a plan per chain position, from the
/// first; a plan shorter than the chain stops early (the single agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemSetup {
    pub id: String,
    pub turns: Vec<TurnPlan>,
}

/// The trained adapters a runner can use.
#[derive(Default)]
pub struct Adapters {
    /// Per agent name, its MALT adapter.
    pub malt: Vec<(String, LoraAdapter)>,
    /// The STaR adapter of the first agent.
    pub star: Option<LoraAdapter>,
    /// Per agent name, its adapter after SFT and before DPO (agents trained by SFT only need
    /// none: their MALT adapter is it).
    pub sft: Vec<(String, LoraAdapter)>,
    /// Per agent name, its adapter from online training.
    pub online: Vec<(String, LoraAdapter)>,
}

impl Adapters {
    /// Only MALT adapters (serving, one-round runs without STaR).
    pub fn malt(malt: Vec<(String, LoraAdapter)>) -> Self {
        Adapters {
            malt,
            ..Default::default()
        }
    }
}

/// The sampler key of an agent turn on some weights: the sampler keeps one adapter per key.
fn sampler_key(weights: Weights, agent: &str) -> String {
    format!("{}:{agent}", weights.key())
}

pub struct ModelChainRunner<'m, 's> {
    chain: ChainSpec,
    pool: Vec<Example>,
    k: u32,
    scorer: &'s mut PluginScorer,
    sampler: ModelSampler<'m>,
    systems: BTreeMap<String, Vec<TurnPlan>>,
    /// Per evaluation seed, the question batches in subset order.
    batches: BTreeMap<u64, Vec<Vec<usize>>>,
    /// The batch whose traces are cached: (eval seed, its questions).
    batch: Option<(u64, Vec<usize>)>,
    /// The batch's traces after each computed plan prefix, one per lane (question x attempt).
    prefixes: BTreeMap<Vec<TurnPlan>, Traces>,
    /// The sampler keys that have an adapter.
    loaded: Vec<String>,
}

/// One pass to compute: question `example_idx`, attempt `attempt`.
#[derive(Debug, Clone, Copy)]
struct Lane {
    example_idx: usize,
    attempt: u32,
}

impl<'m, 's> ModelChainRunner<'m, 's> {
    /// `pool` is the held-out split; `adapters` the trained adapters; `systems` what each
    /// system id runs. A system that asks for an adapter the runner lacks fails when it is run
    /// (it never runs on the base model under a trained label). Without
    /// [`Self::with_batches`], each question is its own batch.
    pub fn new(
        model: &'m Model,
        chain: ChainSpec,
        pool: Vec<Example>,
        majority_k: u32,
        scorer: &'s mut PluginScorer,
        adapters: Adapters,
        systems: Vec<SystemSetup>,
    ) -> Self {
        let mut sampler = ModelSampler::new(model);
        let mut loaded = Vec::new();
        let first = chain.agents.first().map(|a| a.name.clone());
        let star = adapters
            .star
            .and_then(|a| Some((first.clone()?, a)))
            .map(|(agent, a)| (Weights::Star, agent, a));
        let all = (adapters
            .malt
            .into_iter()
            .map(|(n, a)| (Weights::Malt, n, a)))
        .chain(adapters.sft.into_iter().map(|(n, a)| (Weights::Sft, n, a)))
        .chain(
            adapters
                .online
                .into_iter()
                .map(|(n, a)| (Weights::Online, n, a)),
        )
        .chain(star);
        for (w, agent, a) in all {
            let key = sampler_key(w, &agent);
            sampler = sampler.with_adapter(&key, a);
            loaded.push(key);
        }
        let systems = systems.into_iter().map(|s| (s.id, s.turns)).collect();
        ModelChainRunner {
            chain,
            pool,
            k: majority_k.max(1),
            scorer,
            sampler,
            systems,
            batches: BTreeMap::new(),
            batch: None,
            prefixes: BTreeMap::new(),
            loaded,
        }
    }

    /// Why `plan` cannot run here: a turn on an adapter the runner was not given.
    fn missing_adapter(&self, system: &str, plan: &[TurnPlan]) -> Option<String> {
        plan.iter()
            .zip(&self.chain.agents)
            .find_map(|(t, agent)| match t {
                TurnPlan::Run(w) if *w != Weights::Base => {
                    let key = sampler_key(*w, &agent.name);
                    (!self.loaded.contains(&key)).then(|| {
                        format!(
                        "system `{system}` runs {} on its {} adapter, which this round does not \
                         have",
                        agent.name,
                        w.key()
                    )
                    })
                }
                _ => None,
            })
    }

    /// Group each seed's subset (as `EvalPlan::subsets` returns it) into batches of
    /// `questions_per_batch` consecutive questions whose attempts decode together.
    pub fn with_batches(
        mut self,
        subsets: &[(u64, Vec<usize>)],
        questions_per_batch: usize,
    ) -> Self {
        self.batches = subsets
            .iter()
            .map(|(seed, questions)| {
                let batches = questions
                    .chunks(questions_per_batch.max(1))
                    .map(<[usize]>::to_vec)
                    .collect();
                (*seed, batches)
            })
            .collect();
        self
    }

    /// The batch of `eval_seed` that holds `example_idx` (itself alone when it has none).
    fn batch_of(&self, eval_seed: u64, example_idx: usize) -> Vec<usize> {
        self.batches
            .get(&eval_seed)
            .and_then(|bs| bs.iter().find(|b| b.contains(&example_idx)))
            .cloned()
            .unwrap_or_else(|| vec![example_idx])
    }

    /// The lanes of a batch: every attempt of every question, question-major.
    fn lanes(&self, questions: &[usize]) -> Vec<Lane> {
        questions
            .iter()
            .flat_map(|&q| {
                (0..self.k).map(move |attempt| Lane {
                    example_idx: q,
                    attempt,
                })
            })
            .collect()
    }

    /// The traces of the current batch after `plan`, computing the missing prefixes.
    fn traces(&mut self, plan: &[TurnPlan]) -> Result<&Traces, ChainError> {
        let Some((eval_seed, questions)) = self.batch.clone() else {
            return Err(ChainError::Fatal("no batch selected".into()));
        };
        let lanes = self.lanes(&questions);
        for len in 0..=plan.len() {
            if self.prefixes.contains_key(&plan[..len]) {
                continue;
            }
            let traces = if len == 0 {
                vec![Ok(ChainTrace::default()); lanes.len()]
            } else {
                let mut traces = self.prefixes[&plan[..len - 1]].clone();
                self.turn(plan[len - 1], len - 1, eval_seed, &lanes, &mut traces)?;
                traces
            };
            self.prefixes.insert(plan[..len].to_vec(), traces);
        }
        Ok(&self.prefixes[plan])
    }

    /// One agent turn at chain position `pos` for the live lanes: render, sample as one batch,
    /// extract and grade; or the empty turn of a skipped agent.
    fn turn(
        &mut self,
        plan: TurnPlan,
        pos: usize,
        eval_seed: u64,
        lanes: &[Lane],
        traces: &mut Traces,
    ) -> Result<(), ChainError> {
        let agents = self.chain.agents.clone();
        let Some(agent) = agents.get(pos) else {
            return Err(ChainError::Fatal(format!(
                "a system plans turn {} of a chain of {}",
                pos + 1,
                agents.len()
            )));
        };
        let live: Vec<usize> = (0..lanes.len()).filter(|&i| traces[i].is_ok()).collect();
        let weights = match plan {
            TurnPlan::Skip => {
                for &i in &live {
                    if let Ok(t) = &mut traces[i] {
                        t.turns.push(Turn {
                            agent: agent.name.clone(),
                            output: String::new(),
                            outcome: Outcome::NoAnswer,
                            skipped: true,
                            truncated: false,
                        });
                    }
                }
                return Ok(());
            }
            TurnPlan::Run(w) => w,
        };
        if live.is_empty() {
            return Ok(());
        }
        let examples: Vec<Example> = live
            .iter()
            .map(|&i| {
                self.pool.get(lanes[i].example_idx).cloned().ok_or_else(|| {
                    ChainError::Fatal(format!("no held-out question {}", lanes[i].example_idx))
                })
            })
            .collect::<Result<_, _>>()?;
        let histories: Vec<Vec<malt_tree::Turn>> = live
            .iter()
            .map(|&i| {
                let turns = traces[i]
                    .as_ref()
                    .map(|t| t.turns.as_slice())
                    .unwrap_or(&[]);
                turns
                    .iter()
                    .zip(&agents)
                    .map(|(t, spec)| malt_tree::Turn {
                        agent: t.agent.clone(),
                        role: spec.role.clone(),
                        output: t.output.clone(),
                    })
                    .collect()
            })
            .collect();
        let inputs: Vec<TurnInput> = live
            .iter()
            .zip(&examples)
            .zip(histories)
            .map(|((&i, example), history)| {
                let l = lanes[i];
                let seed = malt_eval::derive_sample_seed(eval_seed, l.example_idx, l.attempt);
                TurnInput {
                    example,
                    history,
                    seeds: vec![seed ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)],
                }
            })
            .collect();
        let key = sampler_key(weights, &agent.name);
        let at = TurnAt {
            agent,
            position: pos as u32,
            chain_length: agents.len() as u32,
            sampler_key: &key,
        };
        let outputs = take_turn(self.scorer, &mut self.sampler, at, inputs)
            .map_err(|e| ChainError::Fatal(e.to_string()))?;
        let mut texts = Vec::new();
        let mut answered = Vec::new();
        for (j, (out, &i)) in outputs.into_iter().zip(&live).enumerate() {
            match out {
                TurnOutput::RenderFailed(e) => {
                    traces[i] = Err(format!("{}: render: {e}", agent.name))
                }
                TurnOutput::Rendered {
                    completions: Err(e),
                    ..
                } => traces[i] = Err(format!("{}: generation: {e}", agent.name)),
                TurnOutput::Rendered {
                    completions: Ok(mut c),
                    ..
                } => {
                    let c = c.pop();
                    let cut = c
                        .as_ref()
                        .is_some_and(|c| c.finish == Some(malt_tree::FinishReason::Length));
                    texts.push((c.map(|c| c.text).unwrap_or_default(), cut));
                    answered.push((i, j));
                }
            }
        }
        let outcomes = if agent.produces_answer() {
            let answered_examples: Vec<&Example> =
                answered.iter().map(|&(_, j)| &examples[j]).collect();
            self.grade(agent, &answered_examples, &texts)
        } else {
            texts.iter().map(|_| Ok(Outcome::NoAnswer)).collect()
        };
        for (((text, cut), outcome), &(i, _)) in texts.into_iter().zip(outcomes).zip(&answered) {
            match outcome {
                Ok(outcome) => {
                    if let Ok(t) = &mut traces[i] {
                        t.turns.push(Turn {
                            agent: agent.name.clone(),
                            output: text,
                            outcome,
                            skipped: false,
                            truncated: cut,
                        });
                    }
                }
                Err(e) => traces[i] = Err(format!("{}: {e}", agent.name)),
            }
        }
        Ok(())
    }

    /// A chain cut short after an agent that does not answer (Table 5's G + V: the refiner
    /// removed, the verifier last) ends on that agent's answer when it states one, and on the
    /// earlier answer otherwise (a critique that finds no error keeps the generator's answer).
    /// Without this rule the verifier's turn could never change the result, and G + V would
    /// only repeat "G only".
    fn closing_answer(
        &mut self,
        plan: &[TurnPlan],
        example_idx: usize,
        mut trace: ChainTrace,
    ) -> Result<ChainTrace, ChainError> {
        let Some(last) = plan.iter().rposition(|t| matches!(t, TurnPlan::Run(_))) else {
            return Ok(trace);
        };
        let cut_short = last + 1 < self.chain.agents.len();
        let agent = self.chain.agents[last].clone();
        let Some(turn) = trace.turns.get_mut(last) else {
            return Ok(trace);
        };
        if !cut_short || agent.produces_answer() || turn.skipped {
            return Ok(trace);
        }
        let example = self
            .pool
            .get(example_idx)
            .cloned()
            .ok_or_else(|| ChainError::Fatal(format!("no held-out question {example_idx}")))?;
        let text = (turn.output.clone(), turn.truncated);
        match self
            .grade(&agent, &[&example], std::slice::from_ref(&text))
            .pop()
        {
            Some(Ok(outcome @ Outcome::Answer { .. })) => turn.outcome = outcome,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ChainError::Item(format!("{}: {e}", agent.name))),
            None => {}
        }
        Ok(trace)
    }

    /// Extracts and grades each (text, cut at the length limit) of `texts` against
    /// `examples[i]` (malt-tree's [`malt_tree::extract_and_grade`], as tree scoring does, cut
    /// outputs included); an answer is correct only with the full reward, since evaluation is
    /// exact-match accuracy.
    fn grade(
        &mut self,
        agent: &AgentSpec,
        examples: &[&Example],
        texts: &[(String, bool)],
    ) -> Vec<Result<Outcome, String>> {
        let items: Vec<ScoreItem> = texts
            .iter()
            .zip(examples.iter().copied())
            .map(|((output, cut), example)| ScoreItem {
                output,
                example,
                cut: *cut,
            })
            .collect();
        malt_tree::extract_and_grade(self.scorer, &agent.plugin, &items)
            .into_iter()
            .map(|scored| match scored.answer {
                Err(e) => Err(e),
                // No answer in the output: nothing to be right about, whatever its grade.
                Ok(None) => Ok(Outcome::Unparseable),
                Ok(Some(extracted)) => match scored.grade {
                    Some(Ok(grade)) => Ok(Outcome::Answer {
                        answer: extracted.answer,
                        // The plugin's canonical key (API 0.2.0), so `\frac12` and `0.5` vote
                        // together; a 0.1.0 plugin gives none and its answer votes trimmed.
                        key: extracted.key,
                        correct: grade.reward >= 1.0,
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err("grade: plugin returned no result".into()),
                },
            })
            .collect()
    }
}

impl ChainRunner for ModelChainRunner<'_, '_> {
    fn run_chain(&mut self, req: &ChainRequest) -> Result<ChainTrace, ChainError> {
        let plan = self
            .systems
            .get(&req.system)
            .cloned()
            .ok_or_else(|| ChainError::Fatal(format!("no system `{}` to run", req.system)))?;
        if let Some(why) = self.missing_adapter(&req.system, &plan) {
            return Err(ChainError::Fatal(why));
        }
        let questions = self.batch_of(req.eval_seed, req.example_idx);
        let batch = Some((req.eval_seed, questions));
        if self.batch != batch {
            // Only one batch is needed at a time (the driver's loop order).
            self.batch = batch;
            self.prefixes.clear();
        }
        let k = self.k;
        let lane = self
            .batch
            .as_ref()
            .and_then(|(_, qs)| qs.iter().position(|&q| q == req.example_idx))
            .map(|q| q * k as usize + req.attempt as usize)
            .filter(|_| req.attempt < k)
            .ok_or_else(|| {
                ChainError::Fatal(format!(
                    "attempt {} is beyond majority_k = {k}",
                    req.attempt
                ))
            })?;
        let trace = self.traces(&plan)?[lane].clone();
        let trace = trace.map_err(ChainError::Item)?;
        self.closing_answer(&plan, req.example_idx, trace)
    }
}
