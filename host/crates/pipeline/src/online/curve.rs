//! An online run's training curve for its report ([`malt_eval::training`]): every agent's mean
//! reward per step against the tokens sampled so far, from `online/metrics.jsonl`, and the
//! `[online]` settings that produced it, in words.

use std::path::Path;

use malt_config::{Advantage, LossNorm, Online};
use malt_eval::training::{AgentCurve, CurvePoint, TrainingCurve};

use super::StepMetrics;

/// `[online]` in words, the seed resolved (`run_seed` when it sets none).
pub fn settings_line(online: &Online, run_seed: u64) -> String {
    let advantage = match online.advantage {
        Advantage::LeaveOneOut => "leave-one-out",
        Advantage::Centered => "centered",
        Advantage::Normalized => "normalized",
    };
    let norm = match online.loss_norm {
        LossNorm::Token => "token",
        LossNorm::Sequence => "sequence",
    };
    let trains = if online.train.is_empty() {
        "every agent".to_owned()
    } else {
        online.train.join(", ")
    };
    let mut s = format!(
        "advantage {advantage}, training seed {}, {} steps x {} questions, lr {}, {} epoch(s), \
         KL {}, clip [{}, {}], {norm} loss norm, trains {trains}",
        online.seed.unwrap_or(run_seed),
        online.steps,
        online.questions_per_step,
        online.lr,
        online.epochs,
        online.kl_beta,
        1.0 - online.clip_low,
        1.0 + online.clip_high,
    );
    if let Some(cap) = online.importance_cap {
        s.push_str(&format!(", importance cap {cap}"));
    }
    s
}

/// The curve of the run whose metrics are `metrics` (`None`: no step finished yet).
pub fn training_curve(
    system: &str,
    settings: &str,
    metrics: &Path,
) -> anyhow::Result<Option<TrainingCurve>> {
    let steps = super::files::read_metrics(metrics)?;
    Ok(curve_of(system, settings, &steps))
}

fn curve_of(system: &str, settings: &str, steps: &[StepMetrics]) -> Option<TrainingCurve> {
    steps.first()?;
    Some(TrainingCurve {
        system: system.to_owned(),
        settings: settings.to_owned(),
        agents: agent_curves(steps),
    })
}

/// Every agent's figure per step, in chain order: its mean reward where it gives answers (a
/// step where none was graded has no point), else its nodes' mean value; each point at the
/// tokens every agent sampled up to that step.
pub(super) fn agent_curves(steps: &[StepMetrics]) -> Vec<AgentCurve> {
    let Some(first) = steps.first() else {
        return Vec::new();
    };
    let mut sampled = Vec::with_capacity(steps.len());
    let mut total = 0u64;
    for m in steps {
        total += m.agents.iter().map(|a| a.tokens_sampled).sum::<u64>();
        sampled.push(total);
    }
    first
        .agents
        .iter()
        .map(|a0| {
            let rewarded = steps
                .iter()
                .flat_map(|m| &m.agents)
                .any(|a| a.agent == a0.agent && a.mean_reward.is_some());
            let points = steps
                .iter()
                .zip(&sampled)
                .filter_map(|(m, &sampled_tokens)| {
                    let a = m.agents.iter().find(|a| a.agent == a0.agent)?;
                    let value = if rewarded {
                        a.mean_reward?
                    } else {
                        a.mean_value
                    };
                    Some(CurvePoint {
                        step: m.step,
                        sampled_tokens,
                        value,
                    })
                })
                .collect();
            AgentCurve {
                agent: a0.agent.clone(),
                trained: a0.trained,
                measure: if rewarded { "reward" } else { "value" }.to_owned(),
                points,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::AgentMetrics;

    fn agent(name: &str, reward: Option<f64>, value: f64, sampled: u64) -> AgentMetrics {
        AgentMetrics {
            agent: name.into(),
            trained: name != "verifier",
            mean_value: value,
            mean_reward: reward,
            tokens_sampled: sampled,
            ..AgentMetrics::default()
        }
    }

    fn step(step: u32, g: f64, v: f64) -> StepMetrics {
        StepMetrics {
            step,
            questions: Vec::new(),
            agents: vec![
                agent("generator", Some(g), 0.5, 100),
                agent("verifier", None, v, 40),
            ],
            sample_s: 0.0,
            update_s: 0.0,
            checkpoint_s: 0.0,
            sync_s: 0.0,
        }
    }

    #[test]
    fn a_curve_counts_every_agents_tokens_and_takes_values_where_no_reward() {
        let c =
            curve_of("online", "s", &[step(1, 0.25, 0.5), step(2, 0.75, 0.625)]).expect("steps");
        assert_eq!(c.agents.len(), 2);
        let g = &c.agents[0];
        assert_eq!((g.measure.as_str(), g.trained), ("reward", true));
        let pts: Vec<_> = g
            .points
            .iter()
            .map(|p| (p.step, p.sampled_tokens, p.value))
            .collect();
        assert_eq!(pts, vec![(1, 140, 0.25), (2, 280, 0.75)]);
        let v = &c.agents[1];
        assert_eq!((v.measure.as_str(), v.trained), ("value", false));
        assert_eq!(v.points[1].value, 0.625);
        assert!(curve_of("online", "s", &[]).is_none());
    }

    #[test]
    fn settings_name_the_estimator_and_the_resolved_seed() {
        let online = Online {
            advantage: Advantage::Normalized,
            train: vec!["generator".into()],
            ..Online::default()
        };
        let s = settings_line(&online, 7);
        assert!(
            s.starts_with("advantage normalized, training seed 7, 20 steps x 4 questions"),
            "{s}"
        );
        assert!(
            s.contains("clip [0.8, 1.2]") && s.ends_with("trains generator"),
            "{s}"
        );
        let seeded = Online {
            seed: Some(1),
            ..online
        };
        assert!(settings_line(&seeded, 7).contains("training seed 1"));
    }
}
