//! Seeded random checkpoints: the same weights from the same seed, generated either on the CPU
//! (then identical on every device they are copied to: what a device-vs-CPU comparison needs) or
//! on the device itself (what a speed check of an 8B shape needs: nothing that large is built on
//! the host or copied over).

use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::lora::Proj;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::ChatTemplate;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// Standard deviation of the random weight matrices (HF's `initializer_range`).
const WEIGHT_STD: f64 = 0.02;
/// Norm weights are `1 + N(0, NORM_STD)`, not all ones, so a kernel that ignores them shows.
const NORM_STD: f64 = 0.1;

/// A word-level tokenizer over `t0 .. t{vocab-1}` (whitespace-separated), for random models.
pub fn word_tokenizer(vocab: usize) -> Result<Tokenizer> {
    let vocab: HashMap<String, u32> = (0..vocab as u32).map(|i| (format!("t{i}"), i)).collect();
    let wl = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("t0".into())
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(wl);
    tk.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    Ok(Tokenizer::new(tk))
}

/// Where the random values are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrawOn {
    /// A seeded generator on the host: the same values whatever device the model then lives on.
    Host,
    /// The device's own generator (curand on CUDA), seeded; each tensor is drawn in f32 and
    /// converted to the weights' dtype before the next is drawn, so the peak is the model in its
    /// dtype plus one f32 tensor. On the CPU this is the same as `Host`.
    Device,
}

/// Every tensor of a checkpoint of shape `cfg`, named as in HF checkpoints, matrices in `dtype`
/// (norms and biases in f32; the decoder converts them to its activation dtype).
pub fn random_tensors(
    cfg: &ModelConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
    draw_on: DrawOn,
) -> Result<HashMap<String, Tensor>> {
    let mut draw = Drawer::new(device, seed, draw_on)?;
    let h = cfg.hidden_size;
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        draw.normal(&[cfg.vocab_size, h], 0.0, WEIGHT_STD, dtype)?,
    );
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for proj in Proj::ALL {
            let (out, inp) = proj.dims(cfg);
            let base = format!("{p}.{}.{}", proj.module(), proj.hf_name());
            t.insert(
                format!("{base}.weight"),
                draw.normal(&[out, inp], 0.0, WEIGHT_STD, dtype)?,
            );
            let bias = match proj {
                Proj::Q | Proj::K | Proj::V => cfg.qkv_bias,
                Proj::O => cfg.o_bias,
                _ => false,
            };
            if bias {
                t.insert(
                    format!("{base}.bias"),
                    draw.normal(&[out], 0.0, WEIGHT_STD, DType::F32)?,
                );
            }
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(
                format!("{p}.{norm}.weight"),
                draw.normal(&[h], 1.0, NORM_STD, DType::F32)?,
            );
        }
        if cfg.qk_norm {
            for norm in ["q_norm", "k_norm"] {
                t.insert(
                    format!("{p}.self_attn.{norm}.weight"),
                    draw.normal(&[cfg.head_dim], 1.0, NORM_STD, DType::F32)?,
                );
            }
        }
    }
    t.insert(
        "model.norm.weight".to_string(),
        draw.normal(&[h], 1.0, NORM_STD, DType::F32)?,
    );
    if !cfg.tie_word_embeddings {
        t.insert(
            "lm_head.weight".to_string(),
            draw.normal(&[cfg.vocab_size, h], 0.0, WEIGHT_STD, dtype)?,
        );
    }
    Ok(t)
}

struct Drawer<'d> {
    device: &'d Device,
    host: Option<rand::rngs::StdRng>,
}

impl<'d> Drawer<'d> {
    fn new(device: &'d Device, seed: u64, draw_on: DrawOn) -> Result<Self> {
        let host = draw_on == DrawOn::Host || device.is_cpu();
        if !host {
            device.set_seed(seed)?;
        }
        Ok(Drawer {
            device,
            host: host.then(|| rand::rngs::StdRng::seed_from_u64(seed)),
        })
    }

    fn normal(&mut self, shape: &[usize], mean: f64, std: f64, dtype: DType) -> Result<Tensor> {
        let t = match &mut self.host {
            Some(rng) => {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|_| (mean + std * standard_normal(rng)) as f32)
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(self.device)?
            }
            None => Tensor::randn(mean as f32, std as f32, shape, self.device)?,
        };
        Ok(t.to_dtype(dtype)?)
    }
}

/// Box-Muller: one N(0, 1) draw from two uniform ones.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Model {
    /// A model with random weights (N(0, 0.02), unit norms) for config `cfg`, a synthetic
    /// word-level tokenizer (`t0`, `t1`, ...) and ChatML; it never emits a stop token. For
    /// benchmarks of a shape without its checkpoint, and for tests.
    pub fn random(cfg: ModelConfig, device: &Device) -> Result<Self> {
        Self::random_as(cfg, device, DType::F32)
    }

    /// [`Model::random`] with the weight matrices held in `dtype`.
    pub fn random_as(cfg: ModelConfig, device: &Device, dtype: DType) -> Result<Self> {
        use crate::decoder::{Layer, Linear};
        let h = cfg.hidden_size;
        let rnd =
            |shape: &[usize]| -> Result<Tensor> { Ok(Tensor::randn(0f32, 0.02, shape, device)?) };
        let ones =
            |n: usize| -> Result<Tensor> { Ok(Tensor::ones(n, candle_core::DType::F32, device)?) };
        let embed = rnd(&[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let lin = |p: Proj| -> Result<Linear> {
                let (o, i) = p.dims(&cfg);
                let bias = matches!(p, Proj::Q | Proj::K | Proj::V) && cfg.qkv_bias;
                Ok(Linear {
                    w: rnd(&[o, i])?,
                    b: if bias { Some(rnd(&[o])?) } else { None },
                })
            };
            layers.push(Layer {
                input_norm: ones(h)?,
                post_norm: ones(h)?,
                q_norm: if cfg.qk_norm {
                    Some(ones(cfg.head_dim)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(ones(cfg.head_dim)?)
                } else {
                    None
                },
                proj: [
                    lin(Proj::Q)?,
                    lin(Proj::K)?,
                    lin(Proj::V)?,
                    lin(Proj::O)?,
                    lin(Proj::Gate)?,
                    lin(Proj::Up)?,
                    lin(Proj::Down)?,
                ],
                qkv: None,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            rnd(&[cfg.vocab_size, h])?
        };
        let norm = ones(h)?;
        let tokenizer = word_tokenizer(cfg.vocab_size)?;
        let decoder = Decoder::assemble(cfg, embed, layers, norm, lm_head, device, dtype)?;
        Ok(Model {
            decoder,
            tokenizer,
            chat: ChatTemplate::chatml(),
            stop_ids: vec![],
            source: "random".into(),
        })
    }
}

impl Model {
    /// A random model of shape `cfg` on `device` with matrices in `dtype`, drawn from `seed`
    /// where `draw_on` says, with the word-level tokenizer of [`word_tokenizer`] and ChatML; it
    /// never emits a stop token.
    pub fn random_seeded(
        cfg: ModelConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
        draw_on: DrawOn,
    ) -> Result<Self> {
        let tensors = random_tensors(&cfg, device, dtype, seed, draw_on)?;
        let tokenizer = word_tokenizer(cfg.vocab_size)?;
        let decoder = Decoder::from_tensors(cfg, tensors, Path::new("random"), device, dtype)?;
        Ok(Model {
            decoder,
            tokenizer,
            chat: ChatTemplate::chatml(),
            stop_ids: vec![],
            source: format!("random (seed {seed})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            tie_word_embeddings: false,
            ..ModelConfig::llama(40, 16, 24, 2, 4, 2)
        }
    }

    #[test]
    fn one_seed_gives_the_same_weights_and_another_seed_different_ones() {
        let dev = Device::Cpu;
        let a = random_tensors(&cfg(), &dev, DType::F32, 7, DrawOn::Host).unwrap();
        let b = random_tensors(&cfg(), &dev, DType::F32, 7, DrawOn::Device).unwrap();
        let c = random_tensors(&cfg(), &dev, DType::F32, 8, DrawOn::Host).unwrap();
        assert_eq!(a.len(), b.len());
        let name = "model.layers.1.mlp.down_proj.weight";
        let v = |t: &HashMap<String, Tensor>| t[name].flatten_all().unwrap().to_vec1::<f32>();
        assert_eq!(v(&a).unwrap(), v(&b).unwrap());
        assert_ne!(v(&a).unwrap(), v(&c).unwrap());
        assert!(a.contains_key("lm_head.weight"));
    }

    #[test]
    fn weights_have_the_stated_spread_and_norms_are_not_all_ones() {
        let t = random_tensors(&cfg(), &Device::Cpu, DType::F32, 1, DrawOn::Host).unwrap();
        let w: Vec<f32> = t["model.embed_tokens.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((std - WEIGHT_STD).abs() < 0.005, "std {std}");
        let norm: Vec<f32> = t["model.norm.weight"].to_vec1().unwrap();
        assert!(norm.iter().any(|&x| (x - 1.0).abs() > 1e-3));
    }

    #[test]
    fn a_seeded_model_runs_a_forward_pass() {
        let m = Model::random_seeded(cfg(), &Device::Cpu, DType::BF16, 3, DrawOn::Host).unwrap();
        assert_eq!(m.decoder.dtype(), DType::BF16);
        let ids = Tensor::new(&[[1u32, 5, 9]], &Device::Cpu).unwrap();
        let logits = m
            .decoder
            .forward(&ids, None, crate::Mode::Infer)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(logits.dims(), &[1, 3, 40]);
        let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
