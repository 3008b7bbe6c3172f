//! [`malt_eval::ChainRunner`] over the model and the plugins: one sequential pass of a system
//! (the single base agent, the untrained chain, or the trained chain) per attempt.
//!
//! The k attempts of one (system, question, seed) are sampled together, as one decode batch per
//! agent turn, and cached; the evaluation driver asks for them one after the other. Computing
//! all k even when a resumed run only needs the last ones keeps the results independent of
//! where the run was interrupted.

use std::collections::BTreeMap;

use malt_eval::{ChainError, ChainRequest, ChainRunner, ChainTrace, Outcome, Turn, Variant};
use malt_model::{LoraAdapter, Model};
use malt_tree::{
    AgentSpec, ChainSpec, Example, ExtractRequest, GradeRequest, RenderRequest, SampleRequest,
    Sampler, Scorer,
};

use super::{ModelSampler, PluginScorer};

pub struct ModelChainRunner<'m, 's> {
    chain: ChainSpec,
    pool: Vec<Example>,
    k: u32,
    scorer: &'s mut PluginScorer,
    base: ModelSampler<'m>,
    trained: ModelSampler<'m>,
    cache: BTreeMap<(Variant, usize, u64), Vec<Result<ChainTrace, String>>>,
}

impl<'m, 's> ModelChainRunner<'m, 's> {
    /// `pool` is the held-out split; `adapters` the trained adapter of each agent that has one
    /// (an agent without one runs on the base model in the trained chain too).
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
            cache: BTreeMap::new(),
        }
    }

    /// Runs the k attempts of one system on one question, turn by turn.
    fn run_attempts(
        &mut self,
        variant: Variant,
        example_idx: usize,
        eval_seed: u64,
    ) -> Result<Vec<Result<ChainTrace, String>>, ChainError> {
        let example = self
            .pool
            .get(example_idx)
            .ok_or_else(|| ChainError::Fatal(format!("no held-out question {example_idx}")))?
            .clone();
        let agents: Vec<AgentSpec> = match variant {
            // The single agent is the chain's first agent (the generator) on the base model.
            Variant::Single => self.chain.agents[..1].to_vec(),
            _ => self.chain.agents.clone(),
        };
        let chain_length = agents.len() as u32;
        let k = self.k as usize;
        let seeds: Vec<u64> = (0..self.k)
            .map(|a| malt_eval::derive_sample_seed(eval_seed, example_idx, a))
            .collect();
        let mut traces: Vec<Result<ChainTrace, String>> = vec![Ok(ChainTrace::default()); k];
        for (pos, agent) in agents.iter().enumerate() {
            let live: Vec<usize> = (0..k).filter(|&a| traces[a].is_ok()).collect();
            if live.is_empty() {
                break;
            }
            let histories: Vec<Vec<malt_tree::Turn>> = live
                .iter()
                .map(|&a| {
                    let turns = &traces[a]
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
            let requests: Vec<RenderRequest> = histories
                .iter()
                .map(|h| RenderRequest {
                    agent: &agent.name,
                    role: &agent.role,
                    position: pos as u32,
                    chain_length,
                    example: &example,
                    history: h.clone(),
                })
                .collect();
            let prompts = self
                .scorer
                .render(&agent.plugin, &requests)
                .map_err(|e| ChainError::Item(format!("render: {e}")))?;
            let turn_seeds: Vec<[u64; 1]> = live
                .iter()
                .map(|&a| [seeds[a] ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)])
                .collect();
            let mut sample_reqs = Vec::new();
            let mut sampled = Vec::new();
            for (j, &a) in live.iter().enumerate() {
                match &prompts[j] {
                    Ok(messages) => {
                        sample_reqs.push(SampleRequest {
                            agent: &agent.name,
                            messages,
                            params: &agent.sampling,
                            seeds: &turn_seeds[j],
                        });
                        sampled.push(a);
                    }
                    Err(e) => traces[a] = Err(format!("{}: render: {e}", agent.name)),
                }
            }
            let sampler = match variant {
                Variant::TrainedChain => &mut self.trained,
                _ => &mut self.base,
            };
            let outputs = sampler
                .sample(&sample_reqs)
                .map_err(|e| ChainError::Fatal(e.to_string()))?;
            let mut texts = Vec::new();
            let mut answered = Vec::new();
            for (out, &a) in outputs.into_iter().zip(&sampled) {
                match out.map(|mut v| v.pop().unwrap_or_default()) {
                    Ok(text) => {
                        texts.push(text);
                        answered.push(a);
                    }
                    Err(e) => traces[a] = Err(format!("{}: generation: {e}", agent.name)),
                }
            }
            let outcomes = if agent.produces_answer() {
                self.grade(agent, &example, &texts)?
            } else {
                texts.iter().map(|_| Ok(Outcome::NoAnswer)).collect()
            };
            for ((text, outcome), &a) in texts.into_iter().zip(outcomes).zip(&answered) {
                match outcome {
                    Ok(outcome) => {
                        if let Ok(t) = &mut traces[a] {
                            t.turns.push(Turn {
                                agent: agent.name.clone(),
                                output: text,
                                outcome,
                            });
                        }
                    }
                    Err(e) => traces[a] = Err(format!("{}: {e}", agent.name)),
                }
            }
        }
        Ok(traces)
    }

    fn grade(
        &mut self,
        agent: &AgentSpec,
        example: &Example,
        texts: &[String],
    ) -> Result<Vec<Result<Outcome, String>>, ChainError> {
        let reqs: Vec<ExtractRequest> = texts
            .iter()
            .map(|t| ExtractRequest {
                output: t,
                choices: &example.choices,
            })
            .collect();
        let answers = self
            .scorer
            .extract(&agent.plugin, &reqs)
            .map_err(|e| ChainError::Item(format!("extract: {e}")))?;
        let mut out = Vec::with_capacity(texts.len());
        for a in answers {
            out.push(match a {
                Err(e) => Err(format!("extract: {e}")),
                Ok(None) => Ok(Outcome::Unparseable),
                Ok(Some(answer)) => {
                    let g = self
                        .scorer
                        .grade(
                            &agent.plugin,
                            &[GradeRequest {
                                answer: Some(&answer),
                                gold: &example.gold,
                            }],
                        )
                        .map_err(|e| ChainError::Item(format!("grade: {e}")))?;
                    match g.into_iter().next() {
                        Some(Ok(g)) => Ok(Outcome::Answer {
                            answer,
                            key: None,
                            // Evaluation is exact-match accuracy: a partial reward is not correct.
                            correct: g.reward >= 1.0,
                        }),
                        Some(Err(e)) => Err(format!("grade: {e}")),
                        None => Err("grade: plugin returned no result".into()),
                    }
                }
            });
        }
        Ok(out)
    }
}

impl ChainRunner for ModelChainRunner<'_, '_> {
    fn run_chain(&mut self, req: &ChainRequest) -> Result<ChainTrace, ChainError> {
        let key = (req.variant, req.example_idx, req.eval_seed);
        if !self.cache.contains_key(&key) {
            // Only one question's attempts are needed at a time (the driver's loop order).
            self.cache.clear();
            let traces = self.run_attempts(req.variant, req.example_idx, req.eval_seed)?;
            self.cache.insert(key, traces);
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
