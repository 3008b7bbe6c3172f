//! A tiny differentiable LM and a char tokenizer, to test the loop without malt-model.
//!
//! Model: `h_t = tanh(E[x_t] + P[x_{t-1}])`, `logits = h W^T + s (h A^T) B^T` with frozen random
//! E, P, W and a trainable LoRA-like pair (A random, B zero). Token `POISON` turns its row's
//! logits into NaN (the "NaN in the data" test).

#![allow(dead_code)]

pub mod hf;

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use malt_base::Message;
use malt_train::{ChatTokenizer, Mode, PolicyModel, Result, TokenBatch, TrainError};
use rand::{Rng, SeedableRng};

pub const VOCAB: usize = 12;
pub const HIDDEN: usize = 16;
pub const RANK: usize = 4;
pub const EOS: u32 = 0;
pub const ROLE: u32 = 1;
pub const GEN: u32 = 11;
pub const POISON: u32 = 10;

fn randn(rng: &mut rand::rngs::StdRng, shape: (usize, usize), scale: f32) -> Tensor {
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub struct TinyLm {
    /// Forwards in `Mode::Eval` (reference log-probs, eval), to check the reference cache.
    pub eval_calls: std::cell::Cell<usize>,
    e: Tensor,
    p: Tensor,
    w: Tensor,
}

pub struct TinyAdapter {
    pub a: Var,
    pub b: Var,
}

impl TinyLm {
    pub fn new(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        TinyLm {
            eval_calls: std::cell::Cell::new(0),
            e: randn(&mut rng, (VOCAB, HIDDEN), 1.0),
            p: randn(&mut rng, (VOCAB, HIDDEN), 1.0),
            w: randn(&mut rng, (VOCAB, HIDDEN), 0.3),
        }
    }
}

fn err(e: candle_core::Error) -> TrainError {
    TrainError::Candle(e)
}

impl PolicyModel for TinyLm {
    type Adapter = TinyAdapter;

    fn new_adapter(&self, _name: &str, seed: u64) -> Result<TinyAdapter> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Ok(TinyAdapter {
            a: Var::from_tensor(&randn(&mut rng, (RANK, HIDDEN), 0.5))?,
            b: Var::zeros((VOCAB, RANK), DType::F32, &Device::Cpu)?,
        })
    }

    fn load_adapter(&self, dir: &Path, _name: &str) -> Result<TinyAdapter> {
        let mut m =
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)?;
        let mut take = |k: &str| {
            m.remove(k)
                .ok_or_else(|| TrainError::Settings(format!("missing {k}")))
        };
        Ok(TinyAdapter {
            a: Var::from_tensor(&take("a")?)?,
            b: Var::from_tensor(&take("b")?)?,
        })
    }

    fn save_adapter(&self, a: &TinyAdapter, dir: &Path, base: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Settings(e.to_string()))?;
        let m = std::collections::HashMap::from([
            ("a".to_string(), a.a.as_tensor().clone()),
            ("b".to_string(), a.b.as_tensor().clone()),
        ]);
        candle_core::safetensors::save(&m, dir.join("adapter_model.safetensors")).map_err(err)?;
        std::fs::write(
            dir.join("adapter_config.json"),
            format!("{{\"base\":\"{base}\"}}"),
        )
        .map_err(|e| TrainError::Settings(e.to_string()))
    }

    fn trainable_vars(&self, a: &TinyAdapter) -> Vec<(String, Var)> {
        vec![("a".into(), a.a.clone()), ("b".into(), a.b.clone())]
    }

    fn target_logits(
        &self,
        batch: &TokenBatch,
        adapter: Option<&TinyAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        if mode == Mode::Eval {
            self.eval_calls.set(self.eval_calls.get() + 1);
        }
        let dev = Device::Cpu;
        let (b, t) = (batch.batch, batch.seq_len);
        let ids = Tensor::from_vec(batch.ids.clone(), b * t, &dev)?;
        let mut prev = vec![EOS; b * t];
        for r in 0..b {
            for i in 1..t {
                prev[r * t + i] = batch.ids[r * t + i - 1];
            }
        }
        let prev = Tensor::from_vec(prev, b * t, &dev)?;
        let h = (self.e.index_select(&ids, 0)? + self.p.index_select(&prev, 0)?)?.tanh()?;
        let h = h.index_select(&batch.positions_tensor(&dev)?, 0)?;
        let mut logits = h.matmul(&self.w.t()?)?;
        if let Some(a) = adapter {
            let (at, bt) = match mode {
                Mode::Eval => (a.a.as_tensor().detach(), a.b.as_tensor().detach()),
                Mode::Train { .. } => (a.a.as_tensor().clone(), a.b.as_tensor().clone()),
            };
            logits = (logits + (h.matmul(&at.t()?)?.matmul(&bt.t()?)? * 2.0)?)?;
        }
        // NaN rows for sequences that contain POISON.
        let bad: Vec<f32> = batch
            .target_rows
            .iter()
            .map(|&r| {
                let row = &batch.ids[r as usize * t..(r as usize + 1) * t];
                if row.contains(&POISON) {
                    f32::NAN
                } else {
                    0.0
                }
            })
            .collect();
        let n = bad.len();
        Ok(logits.broadcast_add(&Tensor::from_vec(bad, (n, 1), &dev)?)?)
    }
}

/// Chars 'a'..='h' -> 2..=9, '!' -> POISON; prompt = per message [ROLE, chars..], then GEN.
pub struct CharTok;

fn enc(s: &str) -> Result<Vec<u32>> {
    s.chars()
        .map(|c| match c {
            'a'..='h' => Ok(c as u32 - 'a' as u32 + 2),
            '!' => Ok(POISON),
            _ => Err(TrainError::Tokenizer(format!("char {c:?}"))),
        })
        .collect()
}

impl ChatTokenizer for CharTok {
    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let mut out = vec![];
        for m in messages {
            out.push(ROLE);
            out.extend(enc(&m.content)?);
        }
        out.push(GEN);
        Ok(out)
    }
    fn completion_ids(&self, text: &str) -> Result<Vec<u32>> {
        enc(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .filter_map(|&t| match t {
                2..=9 => char::from_u32('a' as u32 + t - 2),
                POISON => Some('!'),
                _ => None,
            })
            .collect())
    }
    fn is_stop(&self, id: u32) -> bool {
        id == EOS
    }
    fn eos_id(&self) -> u32 {
        EOS
    }
    fn fingerprint(&self) -> String {
        "tiny-char-v1".into()
    }
}

const LETTERS: [char; 8] = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];

/// The rule the good completion follows: a function of the prompt's last letter.
pub fn good(last: char) -> String {
    let i = (last as u8 - b'a') as usize;
    format!("{}{}", LETTERS[(i * 3 + 1) % 8], LETTERS[(i + 5) % 8])
}

pub fn bad(last: char) -> String {
    let i = (last as u8 - b'a') as usize;
    format!("{}{}", LETTERS[(i * 5 + 2) % 8], LETTERS[(i + 2) % 8])
}

pub fn prompts(n: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..3).map(|_| LETTERS[rng.random_range(0..8)]).collect())
        .collect()
}

fn msg(role: &str, c: &str) -> serde_json::Value {
    serde_json::json!([{"role": role, "content": c}])
}

pub fn write_sft(path: &Path, n: usize, seed: u64, poison_at: Option<usize>) {
    let mut s = String::new();
    for (i, p) in prompts(n, seed).iter().enumerate() {
        let last = p.chars().last().unwrap();
        let c = if poison_at == Some(i) {
            "a!".to_string()
        } else {
            good(last)
        };
        let rec = serde_json::json!({"prompt": msg("user", p), "completion": msg("assistant", &c), "meta": {"id": format!("ex{i}")}});
        s += &format!("{rec}\n");
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, s).unwrap();
}

pub fn write_dpo(path: &Path, n: usize, seed: u64) {
    let mut s = String::new();
    for (i, p) in prompts(n, seed).iter().enumerate() {
        let last = p.chars().last().unwrap();
        let rec = serde_json::json!({"prompt": msg("user", p), "chosen": msg("assistant", &good(last)),
            "rejected": msg("assistant", &bad(last)), "meta": {"id": format!("pair{i}")}});
        s += &format!("{rec}\n");
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, s).unwrap();
}
