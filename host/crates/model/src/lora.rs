//! LoRA adapters over a frozen base: one adapter per agent role, chosen per request, saved and
//! loaded in PEFT's on-disk format so PEFT and vLLM read what we train (and the reverse).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The seven projections LoRA may target, in PEFT's module naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }
    pub fn module(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            _ => "mlp",
        }
    }
    pub fn from_name(s: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.hf_name() == s)
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
    /// (out, in) of the base weight.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        match self {
            Proj::Q => (q, c.hidden_size),
            Proj::K | Proj::V => (kv, c.hidden_size),
            Proj::O => (c.hidden_size, q),
            Proj::Gate | Proj::Up => (c.intermediate_size, c.hidden_size),
            Proj::Down => (c.hidden_size, c.intermediate_size),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Proj>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: Proj::ALL.to_vec(),
        }
    }
}

/// `A` is (r, in), `B` is (out, r): PEFT's `lora_A.weight` / `lora_B.weight` layouts.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct LoraAdapter {
    /// Identifies the adapter in KV caches: keys/values computed under one adapter are reused only
    /// under the same adapter. Caches must not outlive an optimizer step on this adapter.
    uid: u64,
    pub name: String,
    pub config: LoraConfig,
    layers: Vec<[Option<LoraPair>; 7]>,
}

fn peft_name(layer: usize, p: Proj, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{ab}.weight",
        p.module(),
        p.hf_name()
    )
}

impl LoraAdapter {
    /// A fresh adapter: A kaiming-uniform (PEFT's `a = sqrt(5)`, i.e. U(-1/sqrt(in), 1/sqrt(in))),
    /// B zero, so the adapted model starts equal to the base.
    pub fn new(
        name: &str,
        config: LoraConfig,
        mc: &ModelConfig,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let mut config = config;
        config.targets.sort_by_key(|p| p.index());
        config.targets.dedup();
        if config.r == 0 {
            return Err(ModelError::Invalid("LoRA rank must be > 0".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(mc.num_hidden_layers);
        for _ in 0..mc.num_hidden_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &p in &config.targets {
                let (out, inp) = p.dims(mc);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.r * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), device)?)?;
                let b = Var::zeros((out, config.r), DType::F32, device)?;
                slots[p.index()] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        Ok(LoraAdapter {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            config,
            layers,
        })
    }

    pub fn uid(&self) -> u64 {
        self.uid
    }

    pub fn scale(&self) -> f64 {
        self.config.alpha / self.config.r as f64
    }

    /// A second handle on the same variables under a new cache identity: what an inference
    /// engine samples with between two optimiser steps of online training. The variables are
    /// shared, so the handle follows every update; the new uid keeps keys and values computed
    /// before an update (under the old identity) from being reused after it.
    pub fn handle(&self) -> LoraAdapter {
        LoraAdapter {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            name: self.name.clone(),
            config: self.config.clone(),
            layers: self.layers.clone(),
        }
    }

    /// The same adapter under a cache identity derived from its contents (shape, scale and
    /// every weight), not from when it was loaded: an inference server keys its prompt caches
    /// on it, so an adapter reloaded under the same name with other weights never reuses the
    /// old keys and values, and the same weights under a new name (the next version of a
    /// frozen role) reuse them. Content identities have the top bit set; load-order ones never
    /// reach it. Call it on an adapter nothing will train: an optimiser step changes the
    /// contents, not the identity.
    pub fn content_keyed(mut self) -> Result<LoraAdapter> {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same contents give the same identity in every process.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.config.r.hash(&mut h);
        self.config.alpha.to_bits().hash(&mut h);
        for (name, var) in self.named_vars() {
            name.hash(&mut h);
            let t = var.as_tensor();
            t.dims().hash(&mut h);
            for x in t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
                x.to_bits().hash(&mut h);
            }
        }
        self.uid = h.finish() | 1 << 63;
        Ok(self)
    }

    /// A second handle on the same variables (same uid: it is the same adapter): what a
    /// checkpointed layer's backward owns to recompute with, and what an inference server's
    /// running batch holds while the adapter is unloaded under it.
    pub fn share(&self) -> LoraAdapter {
        LoraAdapter {
            uid: self.uid,
            name: self.name.clone(),
            config: self.config.clone(),
            layers: self.layers.clone(),
        }
    }

    pub fn get(&self, layer: usize, p: Proj) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[p.index()].as_ref())
    }

    /// Every trainable variable, for the optimizer.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// (PEFT tensor name, variable), in a stable order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![];
        for (i, l) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = &l[p.index()] {
                    out.push((peft_name(i, p, "A"), pair.a.clone()));
                    out.push((peft_name(i, p, "B"), pair.b.clone()));
                }
            }
        }
        out
    }

    /// Writes `adapter_config.json` + `adapter_model.safetensors` (PEFT layout).
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut targets: Vec<&str> = self.config.targets.iter().map(|p| p.hf_name()).collect();
        targets.sort();
        let cfg = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": false,
            "use_dora": false,
            "revision": null,
        });
        let path = dir.join("adapter_config.json");
        let text =
            serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::Invalid(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let path = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        Ok(())
    }

    /// Reads a PEFT LoRA adapter directory for a base with config `mc`.
    pub fn load_peft(dir: &Path, name: &str, mc: &ModelConfig, device: &Device) -> Result<Self> {
        let cpath = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cpath).map_err(|e| ModelError::io(&cpath, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: cpath.clone(),
            msg: e.to_string(),
        })?;
        let bad = |msg: String| ModelError::Config {
            file: cpath.clone(),
            msg,
        };
        if v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA") != "LORA" {
            return Err(bad("peft_type is not LORA".into()));
        }
        if v.get("use_dora").and_then(Value::as_bool).unwrap_or(false)
            || v.get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        {
            return Err(bad("DoRA / rsLoRA adapters are not supported".into()));
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("missing `r`".into()))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .unwrap_or(r as f64);
        let dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
        let targets = match v.get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(|s| {
                    Proj::from_name(s)
                        .ok_or_else(|| bad(format!("unsupported target module `{s}`")))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::String(s)) if s == "all-linear" => Proj::ALL.to_vec(),
            _ => return Err(bad("missing or unsupported `target_modules`".into())),
        };
        let mut targets = targets;
        targets.sort_by_key(|p| p.index());
        targets.dedup();
        let wpath = dir.join("adapter_model.safetensors");
        if !wpath.exists() {
            return Err(ModelError::MissingFile { path: wpath });
        }
        let mut tensors = candle_core::safetensors::load(&wpath, device)?;
        let mut layers = Vec::with_capacity(mc.num_hidden_layers);
        for i in 0..mc.num_hidden_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &p in &targets {
                let (out, inp) = p.dims(mc);
                let mut take = |ab: &str, shape: (usize, usize)| -> Result<Var> {
                    let n = peft_name(i, p, ab);
                    // PEFT sometimes saves with the adapter name in the key (`lora_A.default.weight`).
                    let t = tensors
                        .remove(&n)
                        .or_else(|| tensors.remove(&n.replace(".weight", ".default.weight")))
                        .ok_or_else(|| ModelError::MissingTensor {
                            tensor: n.clone(),
                            file: wpath.clone(),
                        })?;
                    if t.dims() != [shape.0, shape.1] {
                        return Err(ModelError::ShapeMismatch {
                            tensor: n,
                            file: wpath.clone(),
                            expected: vec![shape.0, shape.1],
                            found: t.dims().to_vec(),
                        });
                    }
                    Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
                };
                let a = take("A", (r, inp))?;
                let b = take("B", (out, r))?;
                slots[p.index()] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        Ok(LoraAdapter {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            config: LoraConfig {
                r,
                alpha,
                dropout,
                targets,
            },
            layers,
        })
    }

    /// The weight delta `scale * B @ A` for one projection, shaped like the base weight.
    pub fn delta(&self, layer: usize, p: Proj) -> Result<Option<Tensor>> {
        match self.get(layer, p) {
            None => Ok(None),
            Some(pair) => Ok(Some(
                (pair.b.as_tensor().matmul(pair.a.as_tensor())? * self.scale())?,
            )),
        }
    }
}
