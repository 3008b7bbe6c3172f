//! What a person reads while online training runs: TensorBoard scalars and `rewards.svg`.

use std::path::Path;

use super::StepMetrics;

pub(super) fn write_rewards(dir: &Path, history: &[StepMetrics]) {
    let svg = rewards_svg(history);
    if let Err(e) = malt_base::atomic::write_atomic(&dir.join("rewards.svg"), svg.as_bytes()) {
        tracing::warn!("{}/rewards.svg: {e}", dir.display());
    }
}

/// Each agent's curve ([`super::curve::agent_curves`]) per step, with its running mean:
/// `online/rewards.svg`.
fn rewards_svg(history: &[StepMetrics]) -> String {
    use malt_base::svg::{line_chart, LineChart, Series};
    use malt_eval::training::{running_mean, SMOOTHING_STEPS};
    let mut series = Vec::new();
    for (i, a) in super::curve::agent_curves(history).into_iter().enumerate() {
        let points: Vec<(f64, f64)> = a.points.iter().map(|p| (p.step as f64, p.value)).collect();
        let smooth = running_mean(&points, SMOOTHING_STEPS);
        series.push(Series {
            name: format!("{} ({})", a.agent, a.measure),
            points,
            dashed: true,
            colour: Some(i),
        });
        series.push(Series {
            name: format!("{}, mean of {SMOOTHING_STEPS} steps", a.agent),
            points: smooth,
            dashed: false,
            colour: Some(i),
        });
    }
    line_chart(&LineChart {
        title: "Online training: mean reward per agent".into(),
        x_label: "step".into(),
        y_label: "mean reward of the step's trees".into(),
        series,
        x_ticks: None,
        y_range: Some((0.0, 1.0)),
    })
}

/// Every agent's metrics of step `m` as TensorBoard scalars (`<agent>/<metric>`), flushed.
pub(super) fn tensorboard(ev: &mut malt_base::tfevents::EventFile, m: &StepMetrics) {
    let step = m.step as i64;
    let mut put = |tag: String, v: f64| {
        if let Err(e) = ev.scalar(&tag, step, v) {
            tracing::warn!("{}: {e}", ev.path().display());
        }
    };
    for a in &m.agents {
        put(format!("{}/mean_value", a.agent), a.mean_value);
        if let Some(r) = a.mean_reward {
            put(format!("{}/mean_reward", a.agent), r);
        }
        put(format!("{}/advantage_std", a.agent), a.advantage_std);
        put(
            format!("{}/tokens_sampled", a.agent),
            a.tokens_sampled as f64,
        );
        if a.trained {
            put(format!("{}/loss", a.agent), a.loss);
            put(format!("{}/kl", a.agent), a.kl);
            put(format!("{}/clip_fraction", a.agent), a.clip_fraction);
            put(format!("{}/entropy", a.agent), a.entropy);
            put(format!("{}/grad_norm", a.agent), a.grad_norm);
        }
    }
    put("time/sample_s".into(), m.sample_s);
    put("time/update_s".into(), m.update_s);
    if let Err(e) = ev.flush() {
        tracing::warn!("{}: {e}", ev.path().display());
    }
}
