//! Deterministic stand-ins for the model and the plugins, for tests, benchmarks and dry runs.
//! Their outputs are pure functions of their inputs and seeds, which is what the crash test
//! relies on: a resumed run must reproduce an uninterrupted one byte for byte.

use std::time::Duration;

use malt_base::mix::mix;

use crate::sampler::{Completion, RequestResult, SampleRequest, Sampler, SamplerError};
use crate::scorer::{ExtractRequest, GradeRequest, PluginError, RenderRequest, Scorer};
use crate::types::{AnswerSource, Example, Extracted, Grade, Message};

fn hash_str(s: &str, mut h: u64) -> u64 {
    for b in s.bytes() {
        h = mix(h ^ b as u64);
    }
    h
}

/// Completions "<agent-ish text> Final Answer: K" with K = hash(prompt, seed) % `answers`.
#[derive(Debug, Clone)]
pub struct FakeSampler {
    /// Distinct answers the fake model produces (gold of fake questions is "1").
    pub answers: u64,
    /// Padding characters per completion, to mimic realistic output sizes.
    pub pad: usize,
    /// Sleep per completion, so a test can kill the process mid-tree.
    pub delay: Duration,
}

impl Default for FakeSampler {
    fn default() -> Self {
        FakeSampler {
            answers: 2,
            pad: 0,
            delay: Duration::ZERO,
        }
    }
}

impl Sampler for FakeSampler {
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<RequestResult>, SamplerError> {
        Ok(requests
            .iter()
            .map(|r| {
                let base = r
                    .messages
                    .iter()
                    .fold(0u64, |h, m| hash_str(&m.content, hash_str(&m.role, h)));
                Ok(r.seeds
                    .iter()
                    .map(|&s| {
                        if !self.delay.is_zero() {
                            std::thread::sleep(self.delay);
                        }
                        let h = mix(base ^ s);
                        let mut t = format!(
                            "reasoning {h:016x}{} Final Answer: {}",
                            ".".repeat(self.pad),
                            h % self.answers.max(1)
                        );
                        t.shrink_to_fit();
                        Completion::text(t)
                    })
                    .collect())
            })
            .collect())
    }
}

/// A benchmark plugin in plain Rust: records `{"id": .., "question": .., "answer": ..}`,
/// prompts = system(role) + user(question and history), extraction after "Final Answer:",
/// exact-match grading. Optional failure injection mimics plugin traps.
#[derive(Debug, Clone, Default)]
pub struct FakeScorer {
    /// Render traps (whole batch) when any request's question contains this text.
    pub trap_render_on: Option<String>,
    /// Grade traps (whole batch) when any answer equals this text.
    pub trap_grade_on: Option<String>,
    /// Render returns a per-request error for this role.
    pub fail_role: Option<String>,
    /// Added to every reward, to inject out-of-range grades.
    pub reward_offset: f64,
    /// What [`Scorer::identity`] says of every plugin (`None`: unknown).
    pub identity: Option<String>,
}

impl Scorer for FakeScorer {
    fn parse_records(
        &mut self,
        _plugin: &str,
        lines: &[&str],
    ) -> Result<Vec<Result<Example, String>>, PluginError> {
        Ok(lines
            .iter()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}"))?;
                let field = |k: &str| {
                    v.get(k)
                        .and_then(|x| x.as_str())
                        .map(str::to_owned)
                        .ok_or_else(|| format!("missing field {k:?}"))
                };
                Ok(Example {
                    id: field("id")?,
                    question: field("question")?,
                    gold: field("answer")?,
                    choices: Vec::new(),
                    metadata: "{}".into(),
                })
            })
            .collect())
    }

    fn render(
        &mut self,
        _plugin: &str,
        requests: &[RenderRequest<'_>],
    ) -> Result<Vec<Result<Vec<Message>, String>>, PluginError> {
        if let Some(t) = &self.trap_render_on {
            if requests
                .iter()
                .any(|r| r.example.question.contains(t.as_str()))
            {
                return Err(PluginError("wasm trap: unreachable (render)".into()));
            }
        }
        Ok(requests
            .iter()
            .map(|r| {
                if self.fail_role.as_deref() == Some(r.role) {
                    return Err(format!("no template for role {:?}", r.role));
                }
                let mut user = format!("Question: {}", r.example.question);
                for t in &r.history {
                    user.push_str(&format!("\n\n[{} ({})]\n{}", t.agent, t.role, t.output));
                }
                Ok(vec![
                    Message::new(
                        "system",
                        format!(
                            "You are the {} ({} of {}).",
                            r.role,
                            r.position + 1,
                            r.chain_length
                        ),
                    ),
                    Message::new("user", user),
                ])
            })
            .collect())
    }

    fn extract(
        &mut self,
        _plugin: &str,
        requests: &[ExtractRequest<'_>],
    ) -> Result<Vec<Result<Option<Extracted>, String>>, PluginError> {
        Ok(requests
            .iter()
            .map(|r| {
                // "Final Answer: x" is a marker; "the answer is x" a fallback (as a plugin's
                // last-number rule would be).
                let found = |sep: &str, found_by| {
                    r.output.rsplit_once(sep).map(|(_, a)| {
                        let answer = a.trim().to_owned();
                        Extracted {
                            key: Some(answer.clone()),
                            answer,
                            found_by,
                        }
                    })
                };
                Ok(found("Final Answer:", AnswerSource::Marker)
                    .or_else(|| found("answer is", AnswerSource::Fallback)))
            })
            .collect())
    }

    fn grade(
        &mut self,
        _plugin: &str,
        requests: &[GradeRequest<'_>],
    ) -> Result<Vec<Result<Grade, String>>, PluginError> {
        if let Some(t) = &self.trap_grade_on {
            if requests.iter().any(|r| r.answer == Some(t.as_str())) {
                return Err(PluginError("wasm trap: out of fuel (grade)".into()));
            }
        }
        Ok(requests
            .iter()
            .map(|r| {
                let ok = r.answer == Some(r.gold);
                Ok(Grade {
                    reward: if ok { 1.0 } else { 0.0 } + self.reward_offset,
                    reason: if ok { "exact match" } else { "mismatch" }.into(),
                })
            })
            .collect())
    }

    fn identity(&self, _plugin: &str) -> Option<String> {
        self.identity.clone()
    }
}

/// `n` fake questions q0000.. with gold "1".
pub fn fake_examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| Example {
            id: format!("q{i:04}"),
            question: format!("What is {i} - {i} + 1?"),
            gold: "1".into(),
            choices: Vec::new(),
            metadata: "{}".into(),
        })
        .collect()
}
