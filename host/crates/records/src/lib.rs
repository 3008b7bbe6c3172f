//! malt-records: the plain records of the plugin API (plugins/api/v0.*/plugin.wit), defined
//! once for the host, and the dataset files they are parsed from.
//!
//! - [`types`]: examples, choices, messages (malt-base's [`Message`]), turns, extracted answers
//!   and grades. malt-plugins converts them to and from each API version's WIT bindings (`From`
//!   impls beside the bindings); malt-tree and the CLI use them as they are. A record that
//!   `grade` lifts or lowers directly keeps its own component type in malt-plugins, with `From`
//!   impls to the one here.
//! - [`dataset`]: a dataset file as users download it (JSONL, a JSON array, or parquet with the
//!   `parquet` feature, on by default) read into the raw records a plugin's `parse-records`
//!   receives: one JSON object text per record, each with its position for error messages.

pub mod dataset;
#[cfg(feature = "parquet")]
mod parquet_rows;
pub mod record;
pub mod types;

pub use dataset::{read_records, Format};
pub use record::{DatasetError, Position, Record};
pub use types::{AnswerSource, Choice, Example, Extracted, Grade, Message, Turn};
