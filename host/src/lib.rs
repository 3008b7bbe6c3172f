//! malt: the library behind the `malt` command. See the workspace crates for the parts.

pub mod backend;
pub mod evaluate;
pub mod generate;
pub mod session;
pub mod train;
