//! The plugin API's plain records (plugins/api/v0.*/plugin.wit), from malt-records: the tree
//! engine and its tests use them without the WASM runtime; malt-plugins converts them to and
//! from the WIT bindings.

pub use malt_records::{AnswerSource, Choice, Example, Extracted, Grade, Message, Turn};
