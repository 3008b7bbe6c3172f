//! One agent turn over a batch of contexts: the step tree sampling, evaluation and `malt serve`'s
//! chain endpoint share. Each context's prompt is rendered by the agent's plugin from the
//! question and the chain's outputs so far, then every rendered prompt's completions are sampled
//! in one sampler call (one decode batch). What the turn's outputs are then worth differs: a
//! tree grades its nodes after the whole tree ([`crate::score`]), evaluation grades each turn
//! against the gold answer.

use crate::chain::AgentSpec;
use crate::sampler::{Completion, SampleRequest, Sampler, SamplerError};
use crate::scorer::{RenderRequest, Scorer};
use crate::types::{Example, Message, Turn};

/// Where the turn is in its chain.
#[derive(Debug, Clone, Copy)]
pub struct TurnAt<'a> {
    pub agent: &'a AgentSpec,
    /// 0-based chain position.
    pub position: u32,
    pub chain_length: u32,
    /// The sampler's key for this turn's weights (its agent's name, or a key of a particular
    /// adapter of it).
    pub sampler_key: &'a str,
}

/// One context of the turn.
pub struct TurnInput<'a> {
    pub example: &'a Example,
    /// The outputs of the chain's earlier turns, in chain order.
    pub history: Vec<Turn>,
    /// One seed per completion to sample.
    pub seeds: Vec<u64>,
}

/// What the turn gave one context.
#[derive(Debug)]
pub enum TurnOutput {
    /// The plugin did not render the prompt (its message).
    RenderFailed(String),
    /// The rendered prompt and its completions, one per seed, or why sampling them failed.
    Rendered {
        prompt: Vec<Message>,
        completions: Result<Vec<Completion>, String>,
    },
}

/// Renders and samples `inputs` (one output each, in order). A plugin's failure, whole or per
/// item, stays with the contexts it concerns; only a failure of the sampler as a whole (or an
/// answer of the wrong length) is returned as `Err`.
pub fn take_turn(
    scorer: &mut dyn Scorer,
    sampler: &mut dyn Sampler,
    at: TurnAt<'_>,
    inputs: Vec<TurnInput<'_>>,
) -> Result<Vec<TurnOutput>, SamplerError> {
    let n = inputs.len();
    let mut seeds = Vec::with_capacity(n);
    let requests: Vec<RenderRequest> = inputs
        .into_iter()
        .map(|input| {
            seeds.push(input.seeds);
            RenderRequest {
                agent: &at.agent.name,
                role: &at.agent.role,
                position: at.position,
                chain_length: at.chain_length,
                example: input.example,
                history: input.history,
            }
        })
        .collect();
    let prompts = match scorer.render(&at.agent.plugin, &requests) {
        Ok(r) if r.len() == n => r,
        Ok(r) => vec![Err(format!("plugin returned {} results for {n}", r.len())); n],
        Err(e) => vec![Err(e.to_string()); n],
    };
    drop(requests);
    // Only the rendered prompts are sampled, all in one call.
    let requests: Vec<SampleRequest> = prompts
        .iter()
        .zip(&seeds)
        .filter_map(|(prompt, seeds)| {
            Some(SampleRequest {
                agent: at.sampler_key,
                messages: prompt.as_ref().ok()?,
                params: &at.agent.sampling,
                seeds,
            })
        })
        .collect();
    let results = match requests.is_empty() {
        true => Vec::new(),
        false => sampler.sample(&requests)?,
    };
    if results.len() != requests.len() {
        return Err(SamplerError(format!(
            "sampler returned {} results for {} requests",
            results.len(),
            requests.len()
        )));
    }
    drop(requests);
    let mut results = results.into_iter();
    Ok(prompts
        .into_iter()
        .zip(&seeds)
        .map(|(prompt, seeds)| match prompt {
            Err(msg) => TurnOutput::RenderFailed(msg),
            Ok(prompt) => {
                let n = seeds.len();
                let completions = match results.next() {
                    Some(Ok(c)) if c.len() == n => Ok(c),
                    Some(Ok(c)) => Err(format!("{} completions for {n} seeds", c.len())),
                    Some(Err(msg)) => Err(msg),
                    None => Err("the sampler returned no result".into()),
                };
                TurnOutput::Rendered {
                    prompt,
                    completions,
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_examples, FakeSampler, FakeScorer};

    fn inputs(examples: &[Example], seeds: usize) -> Vec<TurnInput<'_>> {
        examples
            .iter()
            .enumerate()
            .map(|(i, example)| TurnInput {
                example,
                history: Vec::new(),
                seeds: (0..seeds as u64).map(|s| 100 * i as u64 + s).collect(),
            })
            .collect()
    }

    #[test]
    fn a_turn_renders_and_samples_each_context_with_its_seeds() {
        let examples = fake_examples(3);
        let agent = AgentSpec::new("generator", "generator", "fake", 2);
        let at = TurnAt {
            agent: &agent,
            position: 0,
            chain_length: 1,
            sampler_key: "generator",
        };
        let mut sampler = FakeSampler::default();
        let out = take_turn(
            &mut FakeScorer::default(),
            &mut sampler,
            at,
            inputs(&examples, 2),
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        for (o, ex) in out.iter().zip(&examples) {
            let TurnOutput::Rendered {
                prompt,
                completions: Ok(c),
            } = o
            else {
                panic!("{o:?}");
            };
            assert!(prompt.iter().any(|m| m.content.contains(&ex.question)));
            assert_eq!(c.len(), 2);
        }
    }

    #[test]
    fn a_failed_render_stays_with_its_contexts() {
        let examples = fake_examples(2);
        let agent = AgentSpec::new("verifier", "verifier", "fake", 1);
        let at = TurnAt {
            agent: &agent,
            position: 1,
            chain_length: 2,
            sampler_key: "verifier",
        };
        let per_item = FakeScorer {
            fail_role: Some("verifier".into()),
            ..Default::default()
        };
        // A trap of the whole render call fails every context, the turn itself goes on.
        let whole_call = FakeScorer {
            trap_render_on: Some("What is 1".into()),
            ..Default::default()
        };
        for (mut scorer, said) in [(per_item, "no template"), (whole_call, "wasm trap")] {
            let out = take_turn(
                &mut scorer,
                &mut FakeSampler::default(),
                at,
                inputs(&examples, 1),
            )
            .unwrap();
            assert!(out
                .iter()
                .all(|o| matches!(o, TurnOutput::RenderFailed(m) if m.contains(said))));
        }
    }
}
