//! MATH (Hendrycks) and MATH-500: record parsing, boxed-answer extraction and grading.
//!
//! Modes: `prm800k` (default; PRM800K's `grade_answer` with an exact evaluator instead of
//! sympy) and `hendrycks` (`is_equiv`, reproduced exactly).

pub mod expr;
pub mod hendrycks;
pub mod key;
pub mod latex;
pub mod poly;
pub mod prm800k;

use crate::{Extracted, FoundBy, Graded, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Prm800k,
    Hendrycks,
}

impl Mode {
    pub const NAMES: [&'static str; 2] = ["prm800k", "hendrycks"];

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "prm800k" => Some(Mode::Prm800k),
            "hendrycks" => Some(Mode::Hendrycks),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Prm800k => "prm800k",
            Mode::Hendrycks => "hendrycks",
        }
    }
}

/// Hendrycks' `last_boxed_only_string`, reproduced exactly (including its quirk: any
/// `\boxed ` with a space anywhere wins, and it runs to the next `$`).
pub fn last_boxed_only_string(s: &str) -> Option<String> {
    if let Some(p) = s.rfind("\\boxed ") {
        let tail = &s[p + "\\boxed ".len()..];
        let tail = tail.split('$').next().unwrap_or("");
        return Some(format!("\\boxed {tail}"));
    }
    let idx = s.rfind("\\boxed").or_else(|| s.rfind("\\fbox"))?;
    let b = s.as_bytes();
    let mut open = 0i64;
    for (i, &c) in b.iter().enumerate().skip(idx) {
        if c == b'{' {
            open += 1;
        }
        if c == b'}' {
            open -= 1;
            if open == 0 {
                return Some(s[idx..=i].to_string());
            }
        }
    }
    None
}

/// Hendrycks' `remove_boxed`; `None` where it fails its assertions (e.g. on `\fbox{..}`).
pub fn remove_boxed(s: &str) -> Option<&str> {
    if s.contains("\\boxed ") {
        return s.strip_prefix("\\boxed ");
    }
    s.strip_prefix("\\boxed{")?.strip_suffix('}')
}

/// Our boxed extraction: the content of the last `\boxed{..}` or `\fbox{..}` by brace
/// counting, or of a `\boxed X` (up to the next `$` or newline). `None` when the last box is
/// unbalanced.
pub fn boxed_content(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let boxed = s.rfind("\\boxed").map(|p| (p, p + 6));
    let fbox = s.rfind("\\fbox").map(|p| (p, p + 5));
    let (_, after) = match (boxed, fbox) {
        (Some(x), Some(y)) => {
            if x.0 > y.0 {
                x
            } else {
                y
            }
        }
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => return None,
    };
    match b.get(after) {
        Some(b'{') => {
            let mut open = 0usize;
            for (i, &c) in b.iter().enumerate().skip(after) {
                match c {
                    b'{' => open += 1,
                    b'}' => {
                        open -= 1;
                        if open == 0 {
                            return Some(&s[after + 1..i]);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        Some(b' ') => {
            let tail = s[after..].trim_start_matches(' ');
            let end = tail.find(['$', '\n']).unwrap_or(tail.len());
            let v = tail[..end].trim();
            (!v.is_empty()).then_some(v)
        }
        _ => None,
    }
}

/// The text after the last `Final Answer:` or `final answer is` (case-insensitive), up to the
/// end of its line,
/// with Minerva's wrapper (`The final answer is $X$. I hope it is correct.`), surrounding
/// `$`/`\(..\)`/`\[..\]` and a trailing `.` removed.
pub fn final_answer(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let mut limit = b.len();
    let mut rest;
    loop {
        let p = crate::rfind_ci(&b[..limit], b"final answer")?;
        rest = s[p + "final answer".len()..].trim_start_matches([' ', '\t', '*']);
        if let Some(r) = rest.strip_prefix(':') {
            rest = r;
            break;
        }
        if rest.len() >= 2 && rest.as_bytes()[..2].eq_ignore_ascii_case(b"is") {
            rest = &rest[2..];
            break;
        }
        limit = p + "final answer".len() - 1;
    }
    rest = rest.trim_start_matches([' ', '\t', '*', '\n']);
    let line_end = rest.find('\n').unwrap_or(rest.len());
    let mut v = rest[..line_end].trim();
    const HOPE: &[u8] = b"i hope it is correct.";
    if v.len() >= HOPE.len() && v.as_bytes()[v.len() - HOPE.len()..].eq_ignore_ascii_case(HOPE) {
        v = v[..v.len() - HOPE.len()].trim();
    }
    v = v.trim_end_matches('*').trim();
    v = v.strip_suffix('.').unwrap_or(v).trim();
    for (open, close) in [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if v.len() >= open.len() + close.len() && v.starts_with(open) && v.ends_with(close) {
            v = v[open.len()..v.len() - close.len()].trim();
        }
    }
    (!v.is_empty()).then_some(v)
}

/// Extraction used by the plugin: the last box, else `Final Answer: X`.
pub fn extract(output: &str) -> Option<String> {
    if let Some(b) = boxed_content(output) {
        let b = b.trim();
        if !b.is_empty() {
            return Some(b.to_string());
        }
    }
    final_answer(output).map(str::to_string)
}

/// [`extract`] with the answer's voting key under `mode` ([`key::key`]). Both the box and
/// `Final Answer:` are explicit markers: MATH extraction has no fallback.
pub fn extract_answer(output: &str, mode: Mode) -> Option<Extracted> {
    let answer = extract(output)?;
    Some(Extracted {
        key: key::key(&answer, mode),
        answer,
        found_by: FoundBy::Marker,
    })
}

/// Grades an extracted answer per mode.
pub fn grade(answer: Option<&str>, gold: &str, mode: Mode) -> Graded {
    let Some(answer) = answer else {
        return Graded::NO_ANSWER;
    };
    if answer.len() > 10_000 {
        return Graded::wrong("answer is too long");
    }
    match mode {
        Mode::Hendrycks => {
            if hendrycks::is_equiv(answer, gold) {
                Graded::correct("equal after MATH normalisation")
            } else {
                Graded::wrong("not equal after MATH normalisation")
            }
        }
        Mode::Prm800k => {
            let v = prm800k::grade_answer(answer, gold);
            Graded {
                reward: if v.correct() { 1.0 } else { 0.0 },
                reason: v.reason(),
            }
        }
    }
}

/// Parses a Hendrycks MATH record (`problem`, `solution`; gold = the solution's last box) or
/// a MATH-500 record (`problem`, `answer`, optional `unique_id`).
pub fn parse_record(line: &str) -> Result<Record, String> {
    let obj = crate::record::parse_object(line)?;
    let problem = crate::record::str_field(&obj, "problem")?;
    let gold = if obj.contains_key("answer") {
        crate::record::str_field(&obj, "answer")?.trim().to_string()
    } else if obj.contains_key("solution") {
        let sol = crate::record::str_field(&obj, "solution")?;
        boxed_content(sol)
            .map(|s| s.trim().to_string())
            .ok_or_else(|| "field `solution` has no \\boxed{} answer".to_string())?
    } else {
        return Err("missing field `answer` (MATH-500) or `solution` (MATH)".to_string());
    };
    if gold.is_empty() {
        return Err("empty gold answer".to_string());
    }
    let id = match obj.get("unique_id").and_then(|v| v.as_str()) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => crate::record::id_or_hash(&obj, "math", problem),
    };
    let mut meta = serde_json::Map::new();
    for key in ["level", "type", "subject"] {
        if let Some(v) = obj.get(key) {
            meta.insert(key.to_string(), v.clone());
        }
    }
    Ok(Record {
        id,
        question: problem.to_string(),
        gold,
        choices: Vec::new(),
        metadata: serde_json::Value::Object(meta).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction() {
        assert_eq!(
            extract("so $\\boxed{\\frac{1}{2}}$.").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(extract("\\fbox{12}").as_deref(), Some("12"));
        assert_eq!(extract("Final Answer: $24$").as_deref(), Some("24"));
        assert_eq!(
            extract("Final Answer: The final answer is $24$. I hope it is correct.").as_deref(),
            Some("24")
        );
        assert_eq!(extract("\\boxed{}").as_deref(), None);
        assert_eq!(extract("\\boxed{"), None);
        assert_eq!(extract(""), None);
        assert_eq!(extract("}}}\\boxed}"), None);
    }

    #[test]
    fn records() {
        let r = parse_record(r#"{"problem":"p","solution":"so \\boxed{5}."}"#).unwrap();
        assert_eq!(r.gold, "5");
        let r = parse_record(r#"{"problem":"p","answer":"\\frac12","unique_id":"test/x/1.json"}"#)
            .unwrap();
        assert_eq!(
            (r.gold.as_str(), r.id.as_str()),
            ("\\frac12", "test/x/1.json")
        );
        assert!(parse_record(r#"{"problem":"p"}"#)
            .unwrap_err()
            .contains("missing field `answer`"));
        assert_eq!(
            parse_record(r#"{"answer":"1"}"#).unwrap_err(),
            "missing field `problem`"
        );
    }
}
