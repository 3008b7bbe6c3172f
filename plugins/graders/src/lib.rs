//! Answer extraction, grading, prompt templates and problem generation shared by malt's
//! benchmark plugins. Plain Rust without any WASM binding, so the host can run and benchmark
//! it natively and its snapshot tests run with `cargo test -p malt-graders`.
//!
//! Every public function is total: no panic on any input (empty, huge, non-ASCII).

pub mod arith;
pub mod arith_check;
pub mod arith_start;
pub mod csqa;
pub mod gsm8k;
pub mod math;
pub mod number;
pub mod record;
pub mod templates;

/// The outcome of grading one answer: a reward in [0, 1] and a short reason for logs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Graded {
    pub reward: f64,
    pub reason: &'static str,
}

impl Graded {
    pub const fn correct(reason: &'static str) -> Self {
        Graded {
            reward: 1.0,
            reason,
        }
    }
    pub const fn wrong(reason: &'static str) -> Self {
        Graded {
            reward: 0.0,
            reason,
        }
    }
    pub const NO_ANSWER: Graded = Graded::wrong("no answer was extracted");
}

/// How an answer was found in an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// After an explicit final-answer marker (`#### 72`, `\boxed{..}`, `Final Answer:`, `The
    /// answer is`): the output states it as its answer.
    Marker,
    /// By a fallback (the last number of the text, a choice text anywhere): a guess at what the
    /// output meant, which a cut-off output may not mean at all.
    Fallback,
}

/// An extracted answer, its voting key and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Extracted {
    /// The answer as graded and logged.
    pub answer: String,
    /// Answers that the benchmark's grading calls equal share a key; answers it calls
    /// different do not.
    pub key: String,
    pub found_by: FoundBy,
}

/// One answer option of a multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    pub label: String,
    pub text: String,
}

/// A parsed dataset record, independent of the WIT types.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub id: String,
    pub question: String,
    pub gold: String,
    pub choices: Vec<Choice>,
    /// A JSON object text ("{}" when empty).
    pub metadata: String,
}

/// Checks an option value against a list of accepted values, with an error naming both.
pub fn parse_choice_option<'a>(
    key: &str,
    value: &str,
    valid: &[&'a str],
) -> Result<&'a str, String> {
    valid.iter().find(|v| **v == value).copied().ok_or_else(|| {
        format!(
            "bad value `{value}` for option `{key}`; valid values: {}",
            valid.join(", ")
        )
    })
}

/// Error text for an unknown option key.
pub fn unknown_option(key: &str, valid: &[&str]) -> String {
    format!(
        "unknown option `{key}`; valid options: {}",
        valid.join(", ")
    )
}

/// Case-insensitive ASCII search for `needle` (ASCII, lowercase) in `hay` starting at `from`.
pub(crate) fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let last = hay.len() - needle.len();
    let first = needle[0];
    let mut i = from;
    while i <= last {
        if hay[i].to_ascii_lowercase() == first
            && hay[i..i + needle.len()]
                .iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Case-insensitive ASCII search for the last occurrence of `needle` (ASCII, lowercase).
pub(crate) fn rfind_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - needle.len()).rev().find(|&i| {
        hay[i].to_ascii_lowercase() == first
            && hay[i..i + needle.len()]
                .iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}

/// FNV-1a, for deterministic ids of records without one.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
