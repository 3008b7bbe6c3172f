//! Primitives every malt crate shares, written once so that they cannot drift apart: a report,
//! a split or a seed computed by one crate must be reproduced bit for bit by another.
//!
//! - [`atomic`]: replacing a file so that readers and crashes see the old or the new contents;
//! - [`mix`]: splitmix64, the seeded mixer behind sampling seeds, question splits and subsets;
//! - [`hash`]: lowercase hex sha256 of bytes and of files;
//! - [`message`]: the chat message `{role, content}` ([`Message`]) of prompts, trees, datasets,
//!   chat templates, training records and the OpenAI wire format;
//! - [`sampling`]: the sampling parameters ([`SamplingParams`]) of every layer that samples;
//! - [`spread`]: the std convention of every "mean ± std" over seeds ([`StdConvention`]);
//! - [`svg`]: the SVG charts of reports and loss curves;
//! - [`tfevents`]: TensorBoard event files of training metrics and evaluation reports.
//!
//! Errors are plain [`std::io::Error`]s: each caller maps them into its own error type with the
//! path it was writing or reading.

pub mod atomic;
pub mod hash;
pub mod message;
pub mod mix;
pub mod sampling;
pub mod spread;
pub mod svg;
pub mod tfevents;

pub use message::Message;
pub use sampling::SamplingParams;
pub use spread::StdConvention;
