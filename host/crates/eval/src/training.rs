//! How each online-trained system's training went: per agent, the mean reward of every step's
//! trees against the tokens sampled so far. The budget table ([`crate::budget`]) says what
//! training cost; these curves say what it bought on the way, so that runs stopped at the same
//! sampled tokens (another advantage estimator, another training seed, another chain) read side
//! by side in one combined report (`malt compare`).
//!
//! The caller reads the figures from the training's metrics; this module holds and renders them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The plot of every curve of a report, beside `report.md`.
pub const TRAINING_SVG: &str = "training.svg";

/// Steps of the running mean the plot draws (a step's mean reward is over a few questions).
pub const SMOOTHING_STEPS: usize = 4;

/// One system's training, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingCurve {
    /// The system's id.
    pub system: String,
    /// The settings that shaped the run, in words (estimator, training seed, steps...).
    pub settings: String,
    /// Per agent, in chain order.
    pub agents: Vec<AgentCurve>,
}

/// One agent's figure at every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCurve {
    pub agent: String,
    /// Whether its adapter trained (a frozen agent samples from the base model).
    pub trained: bool,
    /// `reward`: the mean grade of the agent's own answers; `value`: its nodes' mean value (an
    /// agent that gives no answer, such as a verifier).
    pub measure: String,
    pub points: Vec<CurvePoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u32,
    /// Tokens every agent of the system sampled up to and including this step.
    pub sampled_tokens: u64,
    pub value: f64,
}

/// The mean of each point's `window` last values (fewer at the start), at the point's x.
pub fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    (0..points.len())
        .map(|k| {
            let w = &points[(k + 1).saturating_sub(window)..=k];
            (
                points[k].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

/// The mean of the first and of the last quarter of the points (at least one step each).
fn quarters(points: &[CurvePoint]) -> Option<(f64, f64)> {
    if points.is_empty() {
        return None;
    }
    let k = (points.len() / 4).max(1);
    let mean = |p: &[CurvePoint]| p.iter().map(|p| p.value).sum::<f64>() / p.len() as f64;
    Some((mean(&points[..k]), mean(&points[points.len() - k..])))
}

/// The report section: per system and agent, the first and last quarter's mean, then each
/// system's settings.
pub fn render(curves: &[TrainingCurve], label_of: impl Fn(&str) -> String) -> String {
    let mut s = String::new();
    if curves.is_empty() {
        return s;
    }
    let _ = writeln!(s, "## Online training\n");
    let _ = writeln!(
        s,
        "Each agent's mean reward per step (the mean grade of its own answers in the step's \
         trees; for an agent that gives no answer, its nodes' mean value), averaged over the \
         first and the last quarter of the steps: on training questions, so a run that \
         passes once over them meets other questions in its last quarter than in its first. \
         `{TRAINING_SVG}` plots every step against the tokens sampled so far \
         ({SMOOTHING_STEPS}-step running mean).\n"
    );
    let _ = writeln!(
        s,
        "| system | agent | steps | sampled tokens | first quarter | last quarter | change |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for c in curves {
        let label = label_of(&c.system);
        for a in &c.agents {
            let Some((first, last)) = quarters(&a.points) else {
                continue;
            };
            let sampled = a.points.last().map_or(0, |p| p.sampled_tokens);
            let frozen = if a.trained { "" } else { ", frozen" };
            let _ = writeln!(
                s,
                "| {label} | {} ({}{frozen}) | {} | {sampled} | {first:.3} | {last:.3} | {:+.3} |",
                a.agent,
                a.measure,
                a.points.len(),
                last - first
            );
        }
    }
    s.push('\n');
    for c in curves {
        let _ = writeln!(s, "- {}: {}", label_of(&c.system), c.settings);
    }
    let _ = writeln!(s, "\n![Online training]({TRAINING_SVG})");
    s.push('\n');
    s
}

/// Every agent of every curve, smoothed, against the tokens sampled so far (thousands): one
/// colour per system, the last agent of each solid and the others dashed.
pub fn svg(curves: &[TrainingCurve], label_of: impl Fn(&str) -> String) -> String {
    use malt_base::svg::{line_chart, LineChart, Series};
    let mut series = Vec::new();
    let mut in_unit = true;
    for (i, c) in curves.iter().enumerate() {
        let label = label_of(&c.system);
        for (j, a) in c.agents.iter().enumerate() {
            let points: Vec<(f64, f64)> = a
                .points
                .iter()
                .map(|p| (p.sampled_tokens as f64 / 1000.0, p.value))
                .collect();
            in_unit &= points.iter().all(|p| (0.0..=1.0).contains(&p.1));
            let name = if c.agents.len() == 1 {
                label.clone()
            } else {
                format!("{label}: {} ({})", a.agent, a.measure)
            };
            series.push(Series {
                name,
                points: running_mean(&points, SMOOTHING_STEPS),
                dashed: j + 1 != c.agents.len(),
                colour: Some(i),
            });
        }
    }
    line_chart(&LineChart {
        title: format!("Online training: mean reward per step ({SMOOTHING_STEPS}-step mean)"),
        x_label: "tokens sampled so far (thousands)".into(),
        y_label: "mean reward of the step's trees".into(),
        series,
        x_ticks: None,
        y_range: in_unit.then_some((0.0, 1.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(system: &str, values: &[f64]) -> TrainingCurve {
        TrainingCurve {
            system: system.into(),
            settings: "advantage leave-one-out, seed 0".into(),
            agents: vec![AgentCurve {
                agent: "generator".into(),
                trained: true,
                measure: "reward".into(),
                points: values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| CurvePoint {
                        step: i as u32 + 1,
                        sampled_tokens: 100 * (i as u64 + 1),
                        value: v,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn running_mean_covers_the_last_window_points() {
        let p = [(1.0, 1.0), (2.0, 3.0), (3.0, 5.0), (4.0, 7.0)];
        assert_eq!(
            running_mean(&p, 2),
            vec![(1.0, 1.0), (2.0, 2.0), (3.0, 4.0), (4.0, 6.0)]
        );
        assert_eq!(running_mean(&p, 0), p.to_vec());
        assert!(running_mean(&[], 4).is_empty());
    }

    #[test]
    fn renders_the_first_and_last_quarter_per_agent() {
        // 8 steps: quarters of 2 steps, (0.1 + 0.3) / 2 and (0.7 + 0.9) / 2.
        let c = curve("online", &[0.1, 0.3, 0.5, 0.5, 0.5, 0.5, 0.7, 0.9]);
        let md = render(std::slice::from_ref(&c), |id| format!("<{id}>"));
        assert!(
            md.contains("| <online> | generator (reward) | 8 | 800 | 0.200 | 0.800 | +0.600 |"),
            "{md}"
        );
        assert!(
            md.contains("- <online>: advantage leave-one-out, seed 0"),
            "{md}"
        );
        // Fewer than 4 steps: one step each.
        let short = curve("s", &[0.5, 0.25]);
        assert!(render(&[short], |id| id.to_owned()).contains("| 0.500 | 0.250 | -0.250 |"));
        assert_eq!(render(&[], |id| id.to_owned()), "");
        let svg = svg(&[c], |id| id.to_owned());
        assert!(svg.contains("<svg") && svg.contains("online"), "{svg}");
    }
}
