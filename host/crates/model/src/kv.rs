//! A forkable KV cache for one sequence. Keys/values are immutable tensors replaced (never written
//! in place) when tokens are appended, so `clone` is an O(1) Arc-sharing fork and siblings can
//! never corrupt each other (unlike candle_nn's in-place `KvCache`, notes/candle.md).

use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Cache {
    /// Per layer (k, v), each (1, kv_heads, len, head_dim); empty when `tokens` is empty.
    pub(crate) kv: Vec<(Tensor, Tensor)>,
    /// The tokens whose keys/values are stored, in order.
    pub(crate) tokens: Vec<u32>,
    /// `LoraAdapter::uid` the keys/values were computed under (None = base model).
    pub(crate) adapter: Option<u64>,
    /// Logits (vocab,) predicting the token after `tokens`.
    pub(crate) last_logits: Option<Tensor>,
}

impl Cache {
    pub fn empty() -> Self {
        Cache {
            kv: vec![],
            tokens: vec![],
            adapter: None,
            last_logits: None,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn adapter_uid(&self) -> Option<u64> {
        self.adapter
    }

    pub fn last_logits(&self) -> Option<&Tensor> {
        self.last_logits.as_ref()
    }

    /// Whether a stored tensor records ops for backprop, which would keep the whole forward
    /// graph of the prompt alive as long as the cache. Inference caches never should.
    pub fn holds_graph(&self) -> bool {
        self.kv.iter().any(|(k, v)| k.track_op() || v.track_op())
            || self.last_logits.as_ref().is_some_and(|l| l.track_op())
    }

    /// `n` branches sharing this cache's storage.
    pub fn fork(&self, n: usize) -> Vec<Cache> {
        vec![self.clone(); n]
    }

    /// The first `len` tokens' cache (shares storage). Drops `last_logits` unless nothing is cut.
    pub fn truncate(&self, len: usize) -> Result<Cache> {
        if len >= self.tokens.len() {
            return Ok(self.clone());
        }
        if len == 0 {
            return Ok(Cache {
                adapter: self.adapter,
                ..Cache::empty()
            });
        }
        let kv = self
            .kv
            .iter()
            .map(|(k, v)| Ok((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Cache {
            kv,
            tokens: self.tokens[..len].to_vec(),
            adapter: self.adapter,
            last_logits: None,
        })
    }
}
