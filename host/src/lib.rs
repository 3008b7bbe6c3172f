//! malt: the library behind the `malt` command. See the workspace crates for the parts.

pub mod backend;
pub mod evaluate;
pub mod export;
pub mod generate;
pub mod live_reload;
pub mod memory_plan;
pub mod pipeline;
pub mod session;
pub mod stage;
pub mod star;
pub mod tracking;
pub mod train;
