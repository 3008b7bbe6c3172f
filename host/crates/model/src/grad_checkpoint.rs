//! Gradient checkpointing for the training forward: the graph keeps only each decoder layer's
//! input, and the backward runs each layer's forward again to get its gradients. Activation
//! memory falls from every intermediate of every layer (attention probabilities, MLP
//! activations, dropout masks: the bulk of a training step's peak) to one hidden state per layer
//! plus the intermediates of the one layer being recomputed.
//!
//! How it sits in candle's autograd (candle-core 0.11 `backprop.rs`): each layer becomes one
//! graph node, a [`CustomOp2`] over `(layer input, the layer's LoRA variables packed into one
//! vector)`.
//! - Forward: the layer runs on a detached copy of its input (its intermediate graph is
//!   dropped as soon as the output is detached), and the node's value is that output (each
//!   device's forward hands back a copy of its storage, so the op works on any candle device).
//! - Backward (`CustomOp2::bwd`): the layer runs again from its input as a fresh `Var` with the
//!   adapter's own variables, `(output * grad_output).sum()` is back-propagated through that
//!   small graph, and the op returns the input's gradient and the LoRA variables' gradients,
//!   packed like the second argument. candle's `Cat` and `Reshape` backward then deliver each
//!   piece to its `Var`, so the `GradStore` of `loss.backward()` holds every LoRA gradient as
//!   without checkpointing: no side store, nothing for a trainer to merge, and any loss built on
//!   the hidden states (SFT, DPO's chosen and rejected log-probs) works unchanged.
//!
//! Why the packed second argument: a node is recorded only when an argument tracks gradients,
//! and the first layer's input (an embedding lookup of frozen weights) does not; the packed
//! variables always do, and they are the path by which the layer's gradients reach the `Var`s.
//!
//! The recomputation repeats the forward exactly: it reads the same weights and variables, and
//! LoRA dropout masks are drawn from `(seed, layer, projection)` (`crate::dropout`), not from a
//! generator's running state, so the second forward drops the same units as the first.
//! Gradients differ from the un-checkpointed graph's only by float reassociation (the input's
//! gradient is summed in another order).

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Shape, Storage, Tensor, Var,
};

use crate::decoder::{Ctx, Decoder, Mode};
use crate::error::Result;
use crate::lora::{LoraAdapter, Proj};
use crate::mode_ops::rms_norm;

impl Decoder {
    /// [`Self::forward_hidden`] in training mode keeping only each layer's input; the backward
    /// recomputes each layer (this module): same gradients, a fraction of the memory.
    pub fn forward_hidden_checkpointed(
        &self,
        ids: &Tensor,
        adapter: Option<&LoraAdapter>,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let mode = Mode::Train { dropout_seed };
        let Some(adapter) = adapter else {
            // Nothing trainable: no graph is recorded, so there is nothing to checkpoint.
            return self.forward_hidden(ids, None, mode);
        };
        let (_, s) = ids.dims2()?;
        let (cos, sin) = self.rope_range(0, s)?;
        let mask = self.causal_mask(s)?;
        let x = self.embed(ids)?;
        let x = run_checkpointed(self, adapter, x, cos, sin, mask, mode)?;
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, mode)
    }
}

/// Runs every layer of `decoder` on the embedded input `x` (b, s, h) as checkpointed graph
/// nodes; returns the residual stream after the last layer (not normed).
pub(crate) fn run_checkpointed(
    decoder: &Decoder,
    adapter: &LoraAdapter,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    mode: Mode,
) -> Result<Tensor> {
    let recompute = Arc::new(Recompute {
        decoder: decoder.share(),
        adapter: adapter.share(),
        cos,
        sin,
        mask,
        mode,
    });
    let mut x = x;
    for layer in 0..decoder.layers.len() {
        x = checkpointed_layer(&recompute, layer, x)?;
    }
    Ok(x)
}

/// What a layer's backward needs to run the layer again, owned (every tensor shares its
/// storage with the model's): a graph node outlives the borrow of the decoder that made it.
struct Recompute {
    decoder: Decoder,
    adapter: LoraAdapter,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    mode: Mode,
}

impl Recompute {
    /// The training forward of one layer (the graph it records reaches only the adapter's
    /// variables and `x`).
    fn layer(&self, layer: usize, x: Tensor) -> Result<Tensor> {
        let ctx = Ctx {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            mask: self.mask.clone(),
            past: None,
            past_len: None,
            adapter: Some(&self.adapter),
            mode: self.mode,
        };
        Ok(self.decoder.run_layers(x, &ctx, layer..layer + 1)?.0)
    }

    /// The layer's LoRA variables, A then B per projection in `Proj` order: the packing order.
    fn layer_vars(&self, layer: usize) -> Vec<&Var> {
        Proj::ALL
            .iter()
            .filter_map(|&p| self.adapter.get(layer, p))
            .flat_map(|pair| [&pair.a, &pair.b])
            .collect()
    }

    /// Gradients of the layer's input (when it takes part in the graph) and of its packed
    /// variables, given the gradient of its output.
    fn backward(
        &self,
        layer: usize,
        input: &Tensor,
        grad_output: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let wants_input_grad = input.track_op();
        let input = if wants_input_grad {
            Var::from_tensor(&input.detach())?.as_tensor().clone()
        } else {
            input.detach()
        };
        let output = self.layer(layer, input.clone())?;
        // d/d(output) of sum(output * g) is g: one backward pass seeded with the outer gradient.
        let grads = (output * grad_output)?.sum_all()?.backward()?;
        let input_grad = if wants_input_grad {
            grads.get(&input).cloned()
        } else {
            None
        };
        let pieces = self
            .layer_vars(layer)
            .into_iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => g.flatten_all(),
                None => v.as_tensor().zeros_like()?.flatten_all(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((input_grad, Some(Tensor::cat(&pieces, 0)?)))
    }
}

/// One layer as one graph node whose value is the layer's output and whose backward
/// recomputes the layer.
fn checkpointed_layer(recompute: &Arc<Recompute>, layer: usize, x: Tensor) -> Result<Tensor> {
    let vars = recompute.layer_vars(layer);
    if vars.is_empty() {
        // An adapter without targets trains nothing: the plain forward records no graph.
        return recompute.layer(layer, x);
    }
    let output = recompute.layer(layer, x.detach())?.detach();
    // The forward hands back a copy of the whole storage: it must hold exactly this tensor.
    let output = if output.is_contiguous() && output.layout().start_offset() == 0 {
        output
    } else {
        output.force_contiguous()?.detach()
    };
    let packed = vars
        .iter()
        .map(|v| v.as_tensor().flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let packed = Tensor::cat(&packed, 0)?;
    Ok(x.apply_op2(
        &packed,
        CheckpointedLayer {
            recompute: Arc::clone(recompute),
            layer,
            output: Mutex::new(Some(output)),
        },
    )?)
}

struct CheckpointedLayer {
    recompute: Arc<Recompute>,
    layer: usize,
    /// The output computed before the node was made; the forward takes it, so the graph holds
    /// no second copy of it.
    output: Mutex<Option<Tensor>>,
}

impl CheckpointedLayer {
    /// A copy of the precomputed output's storage, on its own device.
    fn take_output(&self) -> candle_core::Result<(Storage, Shape)> {
        let output = self
            .output
            .lock()
            .map_err(|_| candle_core::Error::msg("checkpointed layer: poisoned lock"))?
            .take()
            .ok_or_else(|| candle_core::Error::msg("checkpointed layer: forward ran twice"))?;
        let (storage, layout) = output.storage_and_layout();
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }

    fn wrong_device(&self) -> candle_core::Error {
        candle_core::Error::msg("checkpointed layer: output on another device than its input")
    }
}

impl CustomOp2 for CheckpointedLayer {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.take_output()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => Err(self.wrong_device()),
        }
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match self.take_output()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => Err(self.wrong_device()),
        }
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        match self.take_output()? {
            (Storage::Metal(s), shape) => Ok((s, shape)),
            _ => Err(self.wrong_device()),
        }
    }

    fn bwd(
        &self,
        input: &Tensor,
        _packed_vars: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.recompute
            .backward(self.layer, input, grad_output)
            .map_err(candle_core::Error::wrap)
    }
}
