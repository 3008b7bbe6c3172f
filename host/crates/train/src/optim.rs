//! AdamW with decoupled weight decay, learning-rate schedules, global-norm clipping.
//!
//! Our own AdamW because candle-nn's keeps its moments private: checkpoints must save and restore
//! `m`, `v` and the step to resume bit-exactly. The update follows PyTorch's `torch.optim.AdamW`:
//! `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};
use crate::settings::ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub params: AdamWParams,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Completed optimiser steps.
    step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
            params,
            vars,
            m,
            v,
            step: 0,
        })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with `grads[i]` for `vars[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for (i, ((_, var), g)) in self.vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let p = var.as_tensor();
            let p = if weight_decay > 0.0 {
                (p * (1.0 - lr * weight_decay))?
            } else {
                p.clone()
            };
            let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
            let upd = ((&m / denom)? * (lr / bc1))?;
            var.set(&(p - upd)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// `m.<name>` / `v.<name>` tensors; the step lives in the trainer state JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            map.insert(format!("m.{name}"), self.m[i].clone());
            map.insert(format!("v.{name}"), self.v[i].clone());
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let device = self
            .vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let mut map = candle_core::safetensors::load(path, &device)?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = map.remove(&key).ok_or_else(|| TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("optimizer state lacks `{key}`"),
                })?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Checkpoint {
                        path: path.to_path_buf(),
                        msg: format!(
                            "`{key}` has shape {:?}, expected {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    });
                }
                *slot = t;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Warmup steps for `total` steps: `ceil(warmup_ratio * total)` (as HF `get_warmup_steps`).
pub fn warmup_steps(total: u64, warmup_ratio: f64) -> u64 {
    (warmup_ratio * total as f64).ceil() as u64
}

/// Learning rate of 0-based optimiser step `step` (HF semantics: linear warmup from 0, i.e. the
/// first step of a warmed-up run has lr 0, then linear/cosine decay to 0 at `total`).
pub fn lr_at(kind: ScheduleKind, base_lr: f64, step: u64, total: u64, warmup: u64) -> f64 {
    if step < warmup {
        return base_lr * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let f = match kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Linear => (1.0 - progress).max(0.0),
        ScheduleKind::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    base_lr * f
}

/// Global L2 norm of all gradients (f64 accumulation of per-tensor sums of squares).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0f64;
    for g in grads {
        s += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

/// Clips to `max_norm` by global norm like `torch.nn.utils.clip_grad_norm_`
/// (`coef = max_norm / (norm + 1e-6)`, applied only when < 1). Returns the pre-clip norm.
/// `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}
