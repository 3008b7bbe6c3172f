//! The concrete backends behind the tree engine's traits: the WASM plugins as its
//! [`malt_tree::Scorer`] and the candle model as its [`malt_tree::Sampler`].

pub mod chain_runner;
pub mod model_sampler;
pub mod plugin_scorer;
mod prefix_pool;
pub mod remote;
pub mod serve_backend;
pub mod token_ids;

pub use chain_runner::ModelChainRunner;
pub use model_sampler::ModelSampler;
pub use plugin_scorer::{PluginScorer, PluginUpdates};
pub use token_ids::WithTokenIds;
