//! malt's pipeline: a config resolved once into a [`session::Session`], the stages that read
//! it ([`stage`]: generate, credit, train, STaR, eval, each with its declared inputs), the loop
//! that runs them ([`pipeline`]), hot reload ([`live_reload`]), export and the memory plan.
//! The models and plugins it drives are malt-engine's; the `malt` command line is a thin
//! layer over this crate.

pub mod budget;
pub mod engine_config;
pub mod evaluate;
pub mod export;
pub mod generate;
pub mod live_reload;
pub mod memory_plan;
pub mod online;
pub mod pipeline;
pub mod session;
pub mod stage;
pub mod star;
pub mod tracking;
pub mod train;
