//! [`malt_eval::ChainRunner`] over the model and the plugins: one sequential pass of a system
//! (the single base agent, the untrained chain, or the trained chain) per attempt.
//!
//! Attempts are computed in batches and cached; the evaluation driver then asks for them one
//! after the other. A batch is a fixed group of consecutive questions of one seed's subset
//! ([`ModelChainRunner::with_batches`]), all k attempts of each: every agent turn of the batch
//! is one decode batch, which keeps the matrix products wide. Batches are fixed by the plan, not
//! by what a resumed run still needs, so results do not depend on where a run was interrupted.
//!
//! The single agent is the chain's first agent on the base model with the same prompt and seed
//! as the untrained chain's first turn, so its attempts are exactly those first turns: they are
//! sampled once and shared.

use std::collections::BTreeMap;

use malt_eval::{ChainError, ChainRequest, ChainRunner, ChainTrace, Outcome, Turn, Variant};
use malt_model::{LoraAdapter, Model};
use malt_tree::{
    AgentSpec, ChainSpec, Example, ExtractRequest, GradeRequest, RenderRequest, SampleRequest,
    Sampler, Scorer,
};

use super::{ModelSampler, PluginScorer};

type Traces = Vec<Result<ChainTrace, String>>;

pub struct ModelChainRunner<'m, 's> {
    chain: ChainSpec,
    pool: Vec<Example>,
    k: u32,
    scorer: &'s mut PluginScorer,
    base: ModelSampler<'m>,
    trained: ModelSampler<'m>,
    /// Per evaluation seed, the question batches in subset order.
    batches: BTreeMap<u64, Vec<Vec<usize>>>,
    cache: BTreeMap<(Variant, usize, u64), Traces>,
}

/// One pass to compute: question `example_idx`, attempt `attempt`.
#[derive(Debug, Clone, Copy)]
struct Lane {
    example_idx: usize,
    attempt: u32,
}

impl<'m, 's> ModelChainRunner<'m, 's> {
    /// `pool` is the held-out split; `adapters` the trained adapter of each agent that has one
    /// (an agent without one runs on the base model in the trained chain too). Without
    /// [`Self::with_batches`], each question is its own batch.
    pub fn new(
        model: &'m Model,
        chain: ChainSpec,
        pool: Vec<Example>,
        majority_k: u32,
        scorer: &'s mut PluginScorer,
        adapters: Vec<(String, LoraAdapter)>,
    ) -> Self {
        let mut trained = ModelSampler::new(model);
        for (agent, a) in adapters {
            trained = trained.with_adapter(&agent, a);
        }
        ModelChainRunner {
            chain,
            pool,
            k: majority_k.max(1),
            scorer,
            base: ModelSampler::new(model),
            trained,
            batches: BTreeMap::new(),
            cache: BTreeMap::new(),
        }
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

    /// Computes and caches every attempt of `variant`'s sampler family (base or trained) for
    /// the batch holding `example_idx`.
    fn fill(
        &mut self,
        variant: Variant,
        example_idx: usize,
        eval_seed: u64,
    ) -> Result<(), ChainError> {
        let questions = self.batch_of(eval_seed, example_idx);
        // Only one batch is needed at a time (the driver's loop order).
        self.cache
            .retain(|(_, q, s), _| *s == eval_seed && questions.contains(q));
        let lanes: Vec<Lane> = questions
            .iter()
            .flat_map(|&q| {
                (0..self.k).map(move |attempt| Lane {
                    example_idx: q,
                    attempt,
                })
            })
            .collect();
        let k = self.k as usize;
        let store = |cache: &mut BTreeMap<_, _>, v: Variant, traces: Traces| {
            for (q, chunk) in questions.iter().zip(traces.chunks(k)) {
                cache.insert((v, *q, eval_seed), chunk.to_vec());
            }
        };
        if variant == Variant::TrainedChain {
            let (traces, _) = self.run_lanes(true, eval_seed, &lanes)?;
            store(&mut self.cache, Variant::TrainedChain, traces);
        } else {
            let (chain, first) = self.run_lanes(false, eval_seed, &lanes)?;
            store(&mut self.cache, Variant::UntrainedChain, chain);
            store(&mut self.cache, Variant::Single, first);
        }
        Ok(())
    }

    /// Runs every lane through the chain, turn by turn, each turn one sampler call. Returns the
    /// full traces and the traces cut after the first turn (the single agent's).
    fn run_lanes(
        &mut self,
        trained: bool,
        eval_seed: u64,
        lanes: &[Lane],
    ) -> Result<(Traces, Traces), ChainError> {
        let examples: Vec<Example> = lanes
            .iter()
            .map(|l| {
                self.pool.get(l.example_idx).cloned().ok_or_else(|| {
                    ChainError::Fatal(format!("no held-out question {}", l.example_idx))
                })
            })
            .collect::<Result<_, _>>()?;
        let seeds: Vec<u64> = lanes
            .iter()
            .map(|l| malt_eval::derive_sample_seed(eval_seed, l.example_idx, l.attempt))
            .collect();
        let agents = self.chain.agents.clone();
        let chain_length = agents.len() as u32;
        let mut traces: Traces = vec![Ok(ChainTrace::default()); lanes.len()];
        let mut first = Vec::new();
        for (pos, agent) in agents.iter().enumerate() {
            let live: Vec<usize> = (0..lanes.len()).filter(|&i| traces[i].is_ok()).collect();
            if !live.is_empty() {
                self.turn(
                    trained,
                    agent,
                    pos,
                    chain_length,
                    &agents,
                    &examples,
                    &seeds,
                    &live,
                    &mut traces,
                )?;
            }
            if pos == 0 {
                first = traces.clone();
            }
        }
        Ok((traces, first))
    }

    /// One agent turn for the `live` lanes: render, sample as one batch, extract and grade.
    #[allow(clippy::too_many_arguments)]
    fn turn(
        &mut self,
        trained: bool,
        agent: &AgentSpec,
        pos: usize,
        chain_length: u32,
        agents: &[AgentSpec],
        examples: &[Example],
        seeds: &[u64],
        live: &[usize],
        traces: &mut Traces,
    ) -> Result<(), ChainError> {
        let histories: Vec<Vec<malt_tree::Turn>> = live
            .iter()
            .map(|&i| {
                let turns = traces[i]
                    .as_ref()
                    .map(|t| t.turns.as_slice())
                    .unwrap_or(&[]);
                turns
                    .iter()
                    .zip(agents)
                    .map(|(t, spec)| malt_tree::Turn {
                        agent: t.agent.clone(),
                        role: spec.role.clone(),
                        output: t.output.clone(),
                    })
                    .collect()
            })
            .collect();
        let requests: Vec<RenderRequest> = live
            .iter()
            .zip(histories)
            .map(|(&i, history)| RenderRequest {
                agent: &agent.name,
                role: &agent.role,
                position: pos as u32,
                chain_length,
                example: &examples[i],
                history,
            })
            .collect();
        let prompts = match self.scorer.render(&agent.plugin, &requests) {
            Ok(p) => p,
            Err(e) => {
                fail(traces, live, &format!("{}: render: {e}", agent.name));
                return Ok(());
            }
        };
        let turn_seeds: Vec<[u64; 1]> = live
            .iter()
            .map(|&i| [seeds[i] ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)])
            .collect();
        let mut sample_reqs = Vec::new();
        let mut sampled = Vec::new();
        for (j, &i) in live.iter().enumerate() {
            match &prompts[j] {
                Ok(messages) => {
                    sample_reqs.push(SampleRequest {
                        agent: &agent.name,
                        messages,
                        params: &agent.sampling,
                        seeds: &turn_seeds[j],
                    });
                    sampled.push(i);
                }
                Err(e) => traces[i] = Err(format!("{}: render: {e}", agent.name)),
            }
        }
        let sampler = if trained {
            &mut self.trained
        } else {
            &mut self.base
        };
        let outputs = sampler
            .sample(&sample_reqs)
            .map_err(|e| ChainError::Fatal(e.to_string()))?;
        let mut texts = Vec::new();
        let mut answered = Vec::new();
        for (out, &i) in outputs.into_iter().zip(&sampled) {
            match out.map(|mut v| v.pop().unwrap_or_default()) {
                Ok(text) => {
                    texts.push(text);
                    answered.push(i);
                }
                Err(e) => traces[i] = Err(format!("{}: generation: {e}", agent.name)),
            }
        }
        let outcomes = if agent.produces_answer() {
            let answered_examples: Vec<&Example> = answered.iter().map(|&i| &examples[i]).collect();
            self.grade(agent, &answered_examples, &texts)
        } else {
            texts.iter().map(|_| Ok(Outcome::NoAnswer)).collect()
        };
        for ((text, outcome), &i) in texts.into_iter().zip(outcomes).zip(&answered) {
            match outcome {
                Ok(outcome) => {
                    if let Ok(t) = &mut traces[i] {
                        t.turns.push(Turn {
                            agent: agent.name.clone(),
                            output: text,
                            outcome,
                        });
                    }
                }
                Err(e) => traces[i] = Err(format!("{}: {e}", agent.name)),
            }
        }
        Ok(())
    }

    /// Extracts and grades `texts[i]` against `examples[i]`, one plugin call of each kind.
    fn grade(
        &mut self,
        agent: &AgentSpec,
        examples: &[&Example],
        texts: &[String],
    ) -> Vec<Result<Outcome, String>> {
        let reqs: Vec<ExtractRequest> = texts
            .iter()
            .zip(examples)
            .map(|(t, ex)| ExtractRequest {
                output: t,
                choices: &ex.choices,
            })
            .collect();
        let answers = match self.scorer.extract(&agent.plugin, &reqs) {
            Ok(a) => a,
            Err(e) => return texts.iter().map(|_| Err(format!("extract: {e}"))).collect(),
        };
        // Grade only the parseable answers, in one call.
        let mut grade_reqs = Vec::new();
        let mut graded_at = Vec::new();
        for (i, a) in answers.iter().enumerate() {
            if let Ok(Some(answer)) = a {
                grade_reqs.push(GradeRequest {
                    answer: Some(answer),
                    gold: &examples[i].gold,
                });
                graded_at.push(i);
            }
        }
        let grades = self.scorer.grade(&agent.plugin, &grade_reqs);
        let mut grades: BTreeMap<usize, Result<bool, String>> = match grades {
            Ok(gs) => graded_at
                .iter()
                .zip(gs.into_iter().map(Some).chain(std::iter::repeat(None)))
                .map(|(&i, g)| {
                    let g = match g {
                        // Evaluation is exact-match accuracy: a partial reward is not correct.
                        Some(Ok(g)) => Ok(g.reward >= 1.0),
                        Some(Err(e)) => Err(format!("grade: {e}")),
                        None => Err("grade: plugin returned no result".into()),
                    };
                    (i, g)
                })
                .collect(),
            Err(e) => graded_at
                .iter()
                .map(|&i| (i, Err(format!("grade: {e}"))))
                .collect(),
        };
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| match a {
                Err(e) => Err(format!("extract: {e}")),
                Ok(None) => Ok(Outcome::Unparseable),
                Ok(Some(answer)) => match grades.remove(&i) {
                    Some(Ok(correct)) => Ok(Outcome::Answer {
                        answer,
                        key: None,
                        correct,
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err("grade: plugin returned no result".into()),
                },
            })
            .collect()
    }
}

fn fail(traces: &mut Traces, lanes: &[usize], msg: &str) {
    for &i in lanes {
        traces[i] = Err(msg.to_string());
    }
}

impl ChainRunner for ModelChainRunner<'_, '_> {
    fn run_chain(&mut self, req: &ChainRequest) -> Result<ChainTrace, ChainError> {
        let key = (req.variant, req.example_idx, req.eval_seed);
        if !self.cache.contains_key(&key) {
            self.fill(req.variant, req.example_idx, req.eval_seed)?;
        }
        let trace = self
            .cache
            .get(&key)
            .and_then(|v| v.get(req.attempt as usize))
            .ok_or_else(|| {
                ChainError::Fatal(format!(
                    "attempt {} is beyond majority_k = {}",
                    req.attempt, self.k
                ))
            })?;
        trace.clone().map_err(ChainError::Item)
    }
}
