//! `malt bench`: every benchmark measures its baseline in the same run and prints the ratio.
//! Kept apart from the production crates (as ripgrep keeps its `benchsuite/`): the libraries
//! carry no benchmark code, no device-specific constants and no candle-transformers.
//!
//! - [`train`]: LoRA SFT/DPO steps against plain candle autograd (`malt bench train`, `dtype`).
//! - [`torch_peer`]: the PyTorch + PEFT peer of `malt bench train --torch` (scripts/torch_peer.py).
//! - [`credit`]: credit assignment against a naive recursive baseline (`malt bench credit`).
//! - [`baseline`]: candle-transformers' Llama, the plain baseline of `malt bench generate`.
//! - [`device_check`]: a GPU machine's correctness and roofline report (`malt bench device`).
//! - The command line of each benchmark, in `cmd/`.

pub mod baseline;
mod cmd;
pub mod credit;
pub mod device_check;
pub mod torch_peer;
pub mod train;

pub use cmd::{run, Args};
