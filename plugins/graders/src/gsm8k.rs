//! GSM8K: record parsing, answer extraction and grading.
//!
//! Modes:
//! - `numeric` (default): the first number after the last answer cue (`Final Answer:` / `final answer is`, `####`,
//!   `\boxed`), else the last number of the output; `$`, thousands commas and a trailing `.`
//!   dropped; exact rational comparison (`72.00` == `72`, `0.5` == `.5`).
//! - `strict-match`, `flexible-extract`: lm-evaluation-harness `gsm8k` filters, reproduced
//!   exactly (regexes, group selection, `[invalid]` fallback, and the `exact_match` metric with
//!   `ignore_case` and `regexes_to_ignore = [",", "\$", "(?s).*#### ", "\.$"]`).
//! - `cot-strict-match`: lm-eval `gsm8k-cot` strict filter `The answer is (\-?[0-9\.\,]+).`.

use crate::number::{self, Num};
use crate::{Extracted, FoundBy, Graded, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Numeric,
    StrictMatch,
    FlexibleExtract,
    CotStrictMatch,
}

impl Mode {
    pub const NAMES: [&'static str; 4] = [
        "numeric",
        "strict-match",
        "flexible-extract",
        "cot-strict-match",
    ];

    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "numeric" => Mode::Numeric,
            "strict-match" => Mode::StrictMatch,
            "flexible-extract" => Mode::FlexibleExtract,
            "cot-strict-match" => Mode::CotStrictMatch,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Numeric => "numeric",
            Mode::StrictMatch => "strict-match",
            Mode::FlexibleExtract => "flexible-extract",
            Mode::CotStrictMatch => "cot-strict-match",
        }
    }
}

/// Parses a `{"question", "answer"}` record; gold = text after the last `####` of the answer
/// (or the whole answer when it has none), commas stripped, trimmed. `id` is the optional
/// `id` field, else `gsm8k-<hash of the question>`.
pub fn parse_record(line: &str) -> Result<Record, String> {
    parse_record_with_prefix(line, "gsm8k")
}

/// [`parse_record`] with another id prefix for hashed ids.
pub fn parse_record_with_prefix(line: &str, prefix: &str) -> Result<Record, String> {
    let obj = crate::record::parse_object(line)?;
    let question = crate::record::str_field(&obj, "question")?;
    let answer = match obj.get("answer") {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => crate::record::str_field(&obj, "answer")?.to_string(),
    };
    let gold = gold_from_answer(&answer);
    if gold.is_empty() {
        return Err("field `answer` has no final answer after `####`".to_string());
    }
    let id = crate::record::id_or_hash(&obj, prefix, question);
    Ok(Record {
        id,
        question: question.to_string(),
        gold,
        choices: Vec::new(),
        metadata: "{}".to_string(),
    })
}

/// The final answer of a GSM8K answer text: after the last `####`, commas removed, trimmed.
pub fn gold_from_answer(answer: &str) -> String {
    let tail = match answer.rfind("####") {
        Some(p) => &answer[p + 4..],
        None => answer,
    };
    tail.replace(',', "").trim().to_string()
}

/// Extracts the answer per mode; `None` where lm-eval would give `[invalid]`.
pub fn extract(output: &str, mode: Mode) -> Option<String> {
    match mode {
        Mode::Numeric => extract_numeric(output),
        Mode::StrictMatch => strict_match(output).map(|s| s.trim().to_string()),
        Mode::FlexibleExtract => flexible_extract(output).map(|s| s.trim().to_string()),
        Mode::CotStrictMatch => cot_strict_match(output).map(|s| s.trim().to_string()),
    }
}

/// [`extract`] with the answer's voting key ([`key`]) and how it was found: after an answer
/// cue (`numeric`: `Final Answer:`, `####`, `\boxed`; `strict-match`: `#### `;
/// `cot-strict-match`: `The answer is `) or, in `numeric` mode without a cue and in
/// `flexible-extract`, as the last number of the output: `flexible-extract` counts as a marker
/// only when its number is the first one after the output's last cue.
pub fn extract_answer(output: &str, mode: Mode) -> Option<Extracted> {
    let (answer, found_by) = match mode {
        Mode::Numeric => {
            let (tok, found_by) = find_numeric(output)?;
            (tok.num.canonical(), found_by)
        }
        Mode::StrictMatch => (strict_match(output)?.trim().to_string(), FoundBy::Marker),
        Mode::CotStrictMatch => (
            cot_strict_match(output)?.trim().to_string(),
            FoundBy::Marker,
        ),
        Mode::FlexibleExtract => {
            let m = flexible_extract(output)?;
            // `m` is a slice of `output`: its offset is where the match starts.
            let start = m.as_ptr() as usize - output.as_ptr() as usize;
            let after_cue = last_cue_end(output).is_some_and(|cue| {
                cue <= start && !output[cue..start].bytes().any(|b| b.is_ascii_digit())
            });
            let found_by = if after_cue {
                FoundBy::Marker
            } else {
                FoundBy::Fallback
            };
            (m.trim().to_string(), found_by)
        }
    };
    Some(Extracted {
        key: key(&answer, mode),
        answer,
        found_by,
    })
}

/// The voting key of an answer under `mode`: in `numeric` mode the exact value
/// ([`number::rational_key`]: `72.00`, `$72` and `72` share `72`; `3/4` and `0.75` share
/// `0.75`), since grading compares exact values; in the lm-eval modes the string that
/// `exact_match` compares ([`lmeval_normalize`]). What is not a number keeps its text behind
/// `text:`.
pub fn key(answer: &str, mode: Mode) -> String {
    match mode {
        Mode::Numeric => {
            let value = (answer.len() <= 4 * number::MAX_DIGITS)
                .then(|| number::parse_number(answer))
                .flatten()
                .and_then(|n| n.to_rational());
            match value {
                Some(q) => number::rational_key(&q),
                None => format!("text:{}", answer.trim()),
            }
        }
        _ => lmeval_normalize(answer),
    }
}

/// Grades an extracted answer per mode.
pub fn grade(answer: Option<&str>, gold: &str, mode: Mode) -> Graded {
    let Some(answer) = answer else {
        return Graded::NO_ANSWER;
    };
    match mode {
        Mode::Numeric => grade_numeric(answer, gold),
        _ => {
            if lmeval_normalize(answer) == lmeval_normalize(gold) {
                Graded::correct("exact match after lm-eval normalisation")
            } else {
                Graded::wrong("no exact match after lm-eval normalisation")
            }
        }
    }
}

/// Numeric grading: exact rational equality of the two numbers.
pub fn grade_numeric(answer: &str, gold: &str) -> Graded {
    if answer.len() > 4 * number::MAX_DIGITS {
        return Graded::wrong("answer is too long to be a number");
    }
    let Some(a) = number::parse_number(answer) else {
        return Graded::wrong("answer is not a number");
    };
    let Some(g) = number::parse_number(gold) else {
        return Graded::wrong("gold is not a number");
    };
    if number::num_eq(&a, &g) {
        Graded::correct("numerically equal")
    } else {
        Graded::wrong("numerically different")
    }
}

// ---------------------------------------------------------------------------------------
// numeric extraction

/// A number token found in free text.
#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    num: Num<'a>,
    end: usize,
}

fn sign_before(b: &[u8], start: usize) -> bool {
    // `-5`, `-$5`, `$-5` count as negative when the minus does not follow a word or digit
    // (so "pages 10-15" gives 15, not -15).
    let mut i = start;
    if i > 0 && b[i - 1] == b'$' {
        i -= 1;
    }
    if i > 0 && b[i - 1] == b'-' {
        let j = i - 1;
        return j == 0 || !(b[j - 1].is_ascii_alphanumeric() || b[j - 1] == b')');
    }
    false
}

/// Scans the next number token at or after `from`.
fn next_number(s: &str, from: usize) -> Option<Token<'_>> {
    let b = s.as_bytes();
    let mut i = from;
    while i < b.len() {
        let c = b[i];
        let starts = c.is_ascii_digit()
            || (c == b'.'
                && i + 1 < b.len()
                && b[i + 1].is_ascii_digit()
                && (i == 0 || !b[i - 1].is_ascii_digit()));
        if !starts {
            i += 1;
            continue;
        }
        let neg = sign_before(b, i);
        let (d, used) = number::scan_decimal(&s[i..], neg)?;
        let mut end = i + used;
        let mut num = Num::Dec(d);
        if end + 1 < b.len() && b[end] == b'/' && b[end + 1].is_ascii_digit() {
            if let Some((den, used2)) = number::scan_decimal(&s[end + 1..], false) {
                num = Num::Frac(d, den);
                end = end + 1 + used2;
            }
        }
        return Some(Token { num, end });
    }
    None
}

fn last_number(s: &str, from: usize) -> Option<Token<'_>> {
    let mut last = None;
    let mut pos = from;
    while let Some(t) = next_number(s, pos) {
        pos = t.end.max(pos + 1);
        last = Some(t);
    }
    last
}

/// Position just after the last `Final Answer:` / `final answer is` (case-insensitive; `*`
/// and spaces allowed before the `:`), so "to find the final answer, ..." is not a cue.
pub fn final_answer_cue_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut limit = b.len();
    loop {
        let p = crate::rfind_ci(&b[..limit], b"final answer")?;
        let mut i = p + "final answer".len();
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'*') {
            i += 1;
        }
        if i < b.len() && b[i] == b':' {
            return Some(i + 1);
        }
        if i + 1 < b.len() && b[i..i + 2].eq_ignore_ascii_case(b"is") {
            return Some(i + 2);
        }
        limit = p + "final answer".len() - 1;
    }
}

/// Position just after the last answer cue (`Final Answer:`, `####`, `\boxed`), if any.
pub fn last_cue_end(s: &str) -> Option<usize> {
    let hashes = s.rfind("####").map(|p| p + 4);
    let boxed = s.rfind("\\boxed").map(|p| p + 6);
    [final_answer_cue_end(s), hashes, boxed]
        .into_iter()
        .flatten()
        .max()
}

/// Numeric-mode extraction: the first number after the last cue, else the last number.
/// When the cue's line is a calculation ("Final Answer: 8 + 9 = 17"), its result counts: the
/// first number after the line's last `=`. Returns its canonical text (`$1,000.` -> `1000`,
/// `72.00` -> `72`).
pub fn extract_numeric(output: &str) -> Option<String> {
    find_numeric(output).map(|(tok, _)| tok.num.canonical())
}

fn find_numeric(output: &str) -> Option<(Token<'_>, FoundBy)> {
    match last_cue_end(output).and_then(|p| next_number(output, after_last_equals(output, p))) {
        Some(tok) => Some((tok, FoundBy::Marker)),
        None => last_number(output, 0).map(|tok| (tok, FoundBy::Fallback)),
    }
}

/// Where the result of a calculation on the line starting at `from` begins: after the line's
/// last `=` when a number follows it on that line, else `from`.
fn after_last_equals(s: &str, from: usize) -> usize {
    let line_end = s[from..].find('\n').map_or(s.len(), |i| from + i);
    match s[from..line_end].rfind('=') {
        Some(eq) => {
            let start = from + eq + 1;
            match next_number(s, start) {
                Some(t) if t.end <= line_end => start,
                _ => from,
            }
        }
        None => from,
    }
}

// ---------------------------------------------------------------------------------------
// lm-eval filters, reproduced with hand-written scanners

fn is_num_class(c: u8) -> bool {
    c.is_ascii_digit() || c == b'.' || c == b','
}

/// `#### (\-?[0-9\.\,]+)`, first match, group 1.
pub fn strict_match(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find("#### ") {
        let start = from + p + 5;
        let mut i = start;
        if i < b.len() && b[i] == b'-' {
            i += 1;
        }
        let run_start = i;
        while i < b.len() && is_num_class(b[i]) {
            i += 1;
        }
        if i > run_start {
            return Some(&s[start..i]);
        }
        from = from + p + 1;
    }
    None
}

/// `(-?[$0-9.,]{2,})|(-?[0-9]+)`, all matches, the last one's non-empty group.
pub fn flexible_extract(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let class = |c: u8| c.is_ascii_digit() || c == b'$' || c == b'.' || c == b',';
    let run = |from: usize| {
        let mut j = from;
        while j < b.len() && class(b[j]) {
            j += 1;
        }
        j - from
    };
    let digits = |from: usize| {
        let mut j = from;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        j - from
    };
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        let m = if b[i] == b'-' {
            let r = run(i + 1);
            if r >= 2 {
                Some(i + 1 + r)
            } else {
                let d = digits(i + 1);
                (d >= 1).then_some(i + 1 + d)
            }
        } else {
            let r = run(i);
            if r >= 2 {
                Some(i + r)
            } else {
                let d = digits(i);
                (d >= 1).then_some(i + d)
            }
        };
        match m {
            Some(end) => {
                last = Some(&s[i..end]);
                i = end;
            }
            None => i += 1,
        }
    }
    last
}

/// `The answer is (\-?[0-9\.\,]+).` (the final `.` is any character but a newline), first
/// match, group 1.
pub fn cot_strict_match(s: &str) -> Option<&str> {
    const CUE: &str = "The answer is ";
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(CUE) {
        let start = from + p + CUE.len();
        let mut tries: [Option<usize>; 2] = [None, Some(start)];
        if start < b.len() && b[start] == b'-' {
            tries[0] = Some(start + 1);
        }
        for run_start in tries.into_iter().flatten() {
            let mut i = run_start;
            while i < b.len() && is_num_class(b[i]) {
                i += 1;
            }
            let run = i - run_start;
            if run >= 1 && i < b.len() && b[i] != b'\n' {
                return Some(&s[start..i]);
            }
            if run >= 2 {
                // Backtrack one character: the last class character is the `.`.
                return Some(&s[start..i - 1]);
            }
        }
        from = from + p + 1;
    }
    None
}

/// lm-eval `exact_match` preprocessing for GSM8K: drop `,` and `$`, `(?s).*#### `, a
/// trailing `.`, then lowercase.
pub fn lmeval_normalize(s: &str) -> String {
    let mut t: String = s.chars().filter(|c| *c != ',' && *c != '$').collect();
    if let Some(p) = t.rfind("#### ") {
        t.replace_range(..p + 5, "");
    }
    if t.ends_with('.') {
        t.pop();
    } else if t.ends_with(".\n") {
        let n = t.len();
        t.replace_range(n - 2..n - 1, "");
    }
    t.to_lowercase()
}

/// The canonical numeric form of a gold or answer, when it is a number.
pub fn canonical_number(s: &str) -> Option<String> {
    number::parse_number(s).map(|n| n.canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_extraction_prefers_cue() {
        assert_eq!(
            extract_numeric("It is 5. Final Answer: 7 apples, 8").as_deref(),
            Some("7")
        );
        assert_eq!(extract_numeric("#### 72\n#### 73").as_deref(), Some("73"));
        assert_eq!(extract_numeric("costs $1,000.").as_deref(), Some("1000"));
        assert_eq!(extract_numeric("x = -5").as_deref(), Some("-5"));
        assert_eq!(extract_numeric("pages 10-15").as_deref(), Some("15"));
        assert_eq!(
            extract_numeric("Final Answer: none. I had 4").as_deref(),
            Some("4")
        );
        assert_eq!(extract_numeric("\\boxed{3/4}").as_deref(), Some("3/4"));
        assert_eq!(
            extract_numeric("Final Answer: 8 + 9 = 17\n\nThe answer is 17.").as_deref(),
            Some("17")
        );
        assert_eq!(
            extract_numeric("Final Answer: x = 5 apples").as_deref(),
            Some("5")
        );
        // `=` without a number after it on the cue's line: the cue's first number.
        assert_eq!(
            extract_numeric("Final Answer: 12 =\n 3").as_deref(),
            Some("12")
        );
        assert_eq!(extract_numeric("no number"), None);
        assert_eq!(extract_numeric(""), None);
    }

    #[test]
    fn keys_and_markers() {
        let x = |s: &str, mode| {
            let e = extract_answer(s, mode).unwrap();
            (e.answer, e.key, e.found_by)
        };
        let m = FoundBy::Marker;
        let f = FoundBy::Fallback;
        assert_eq!(
            x("#### 1,000", Mode::Numeric),
            ("1000".into(), "1000".into(), m)
        );
        assert_eq!(
            x("so $72.00 total", Mode::Numeric),
            ("72".into(), "72".into(), f)
        );
        assert_eq!(
            x("Final Answer: 3/4", Mode::Numeric),
            ("3/4".into(), "0.75".into(), m)
        );
        assert_eq!(x("#### 0.75", Mode::Numeric).1, "0.75");
        assert_eq!(x("#### 007", Mode::Numeric).1, "7");
        assert_eq!(x("#### 1/0", Mode::Numeric).1, "text:1/0");
        assert_eq!(
            x("#### 1,000.", Mode::StrictMatch),
            ("1,000.".into(), "1000".into(), m)
        );
        assert_eq!(x("#### 72\nok 3", Mode::FlexibleExtract).2, f);
        assert_eq!(
            x("x 5 #### $72.", Mode::FlexibleExtract),
            ("$72.".into(), "72".into(), m)
        );
        assert_eq!(x("The answer is 72.", Mode::CotStrictMatch).2, m);
        assert_eq!(key("72", Mode::StrictMatch), key("72.", Mode::StrictMatch));
        assert_ne!(
            key("72.00", Mode::StrictMatch),
            key("72", Mode::StrictMatch)
        );
        assert_eq!(extract_answer("no number", Mode::Numeric), None);
    }

    #[test]
    fn numeric_grade() {
        assert_eq!(grade(Some("72.00"), "72", Mode::Numeric).reward, 1.0);
        assert_eq!(grade(Some("0.5"), ".5", Mode::Numeric).reward, 1.0);
        assert_eq!(grade(Some("73"), "72", Mode::Numeric).reward, 0.0);
        assert_eq!(grade(None, "72", Mode::Numeric).reward, 0.0);
        assert_eq!(grade(Some("abc"), "72", Mode::Numeric).reward, 0.0);
    }

    #[test]
    fn lmeval_filters() {
        assert_eq!(strict_match("#### -5"), Some("-5"));
        assert_eq!(strict_match("#### $1,000"), None);
        assert_eq!(strict_match("#### - 5 #### 6"), Some("6"));
        assert_eq!(flexible_extract("The answer is $72."), Some("$72."));
        assert_eq!(flexible_extract("a - 5"), Some("5"));
        assert_eq!(flexible_extract("-5"), Some("-5"));
        assert_eq!(flexible_extract("x -."), None);
        assert_eq!(cot_strict_match("The answer is 72."), Some("72"));
        assert_eq!(cot_strict_match("The answer is 1e3"), Some("1"));
        assert_eq!(cot_strict_match("The answer is 7"), None);
        assert_eq!(lmeval_normalize("#### $1,000."), "1000");
    }

    #[test]
    fn gold_parsing() {
        let r = parse_record(r#"{"question":"q?","answer":"so\n#### 1,080"}"#).unwrap();
        assert_eq!(r.gold, "1080");
        assert!(r.id.starts_with("gsm8k-"));
        let r2 = parse_record(r#"{"question":"q?","answer":"so\n#### 1,080"}"#).unwrap();
        assert_eq!(r.id, r2.id);
        assert_eq!(
            parse_record(r#"{"question":"q"}"#).unwrap_err(),
            "missing field `answer`"
        );
        assert!(parse_record("[1]")
            .unwrap_err()
            .starts_with("not a JSON object"));
        assert!(parse_record("")
            .unwrap_err()
            .starts_with("not a JSON object"));
    }
}
