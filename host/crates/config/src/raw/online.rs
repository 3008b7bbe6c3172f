//! Resolution of `[online]`: on-policy training of the chain on freshly sampled trees.

use serde::Deserialize;

use super::Checker;
use crate::locate::Seg;
use crate::types::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOnline {
    steps: Option<u32>,
    questions_per_step: Option<u32>,
    advantage: Option<Advantage>,
    lr: Option<f64>,
    epochs: Option<u32>,
    micro_batch: Option<u32>,
    max_grad_norm: Option<f64>,
    clip_low: Option<f64>,
    clip_high: Option<f64>,
    kl_beta: Option<f64>,
    loss_norm: Option<LossNorm>,
    importance_cap: Option<f64>,
    train: Option<Vec<String>>,
    seed: Option<u64>,
}

pub(super) fn resolve_online(
    raw: Option<RawOnline>,
    agents: &[Agent],
    generation: &Generation,
    rounds: u32,
    c: &mut Checker<'_, '_>,
) -> Option<Online> {
    use Seg::Key as K;
    let raw = raw?;
    let d = Online::default();
    let o = Online {
        steps: raw.steps.unwrap_or(d.steps),
        questions_per_step: raw.questions_per_step.unwrap_or(d.questions_per_step),
        advantage: raw.advantage.unwrap_or(d.advantage),
        lr: raw.lr.unwrap_or(d.lr),
        epochs: raw.epochs.unwrap_or(d.epochs),
        micro_batch: raw.micro_batch.unwrap_or(d.micro_batch),
        max_grad_norm: raw.max_grad_norm.unwrap_or(d.max_grad_norm),
        clip_low: raw.clip_low.unwrap_or(d.clip_low),
        clip_high: raw.clip_high.unwrap_or(d.clip_high),
        kl_beta: raw.kl_beta.unwrap_or(d.kl_beta),
        loss_norm: raw.loss_norm.unwrap_or(d.loss_norm),
        importance_cap: raw.importance_cap,
        train: raw
            .train
            .unwrap_or_else(|| agents.iter().map(|a| a.name.clone()).collect()),
        seed: raw.seed,
    };
    let at = |key| [K("online"), K(key)];
    c.positive(&at("steps"), "online.steps", o.steps);
    c.positive(
        &at("questions_per_step"),
        "online.questions_per_step",
        o.questions_per_step,
    );
    c.positive(&at("epochs"), "online.epochs", o.epochs);
    c.positive(&at("micro_batch"), "online.micro_batch", o.micro_batch);
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        c.err(&at("lr"), format!("online.lr = {} must be positive", o.lr));
    }
    c.range(&at("clip_low"), "online.clip_low", o.clip_low, 1e-6, 0.999);
    c.range(
        &at("clip_high"),
        "online.clip_high",
        o.clip_high,
        1e-6,
        10.0,
    );
    c.range(&at("kl_beta"), "online.kl_beta", o.kl_beta, 0.0, 1e3);
    c.range(
        &at("max_grad_norm"),
        "online.max_grad_norm",
        o.max_grad_norm,
        0.0,
        1e9,
    );
    if let Some(cap) = o.importance_cap {
        c.range(
            &at("importance_cap"),
            "online.importance_cap",
            cap,
            1.0,
            1e6,
        );
    }
    if o.train.is_empty() {
        c.err(
            &at("train"),
            "online.train is empty: name the agents whose adapters train (all of them by default)",
        );
    }
    for name in &o.train {
        let Some((i, a)) = agents.iter().enumerate().find(|(_, a)| &a.name == name) else {
            let known: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
            c.err(
                &at("train"),
                format!(
                    "online.train: no agent named `{name}` (agents: {})",
                    known.join(", ")
                ),
            );
            continue;
        };
        // The loss needs each sampled token's log-prob under the distribution it was drawn
        // from, which the trainer recomputes as softmax(logits / temperature): truncating it
        // (top-p, top-k) or sampling greedily would train on other probabilities.
        let agent_at = |key| [K("agents"), Seg::Index(i), K(key)];
        if a.temperature <= 0.0 {
            c.err(
                &agent_at("temperature"),
                format!(
                    "agent `{name}` trains online (online.train) but samples greedily \
                     (temperature = {}): on-policy training needs sampling at a temperature > 0",
                    a.temperature
                ),
            );
        }
        if a.top_p < 1.0 || a.top_k > 0 {
            c.err(
                &agent_at("top_p"),
                format!(
                    "agent `{name}` trains online (online.train) with top_p = {} / top_k = {}: \
                     the loss takes each token's probability under softmax(logits / temperature), \
                     which truncated sampling does not draw from; set top_p = 1.0 and top_k = 0 \
                     for online training",
                    a.top_p, a.top_k
                ),
            );
        }
    }
    if rounds > 1 {
        c.err(
            &at("steps"),
            "[online] with [rounds] count > 1: online training runs once, beside round 1 (its \
             steps are its rounds); remove one of the two",
        );
    }
    super::scale_out::check_adapter_loading(generation, "[online]", c);
    Some(o)
}
