//! CommonsenseQA: record parsing and answer-letter extraction.
//!
//! Extraction takes the LAST letter A-E (case-folded) that follows an answer cue
//! (`answer:`, `answer is`, `final answer:`, `\boxed{`), skipping markdown and wrappers
//! (`**`, `$`, `(`, `[`, `\boxed{`, `\text{`, spaces and newlines). A lowercase letter counts
//! only when it is not the start of a word (so "the answer is a bank" gives nothing). When no
//! letter follows any cue, the text after the last cue (or the whole output) is compared with
//! the choice texts, case-insensitively. Unparseable => `None`.

use crate::{Choice, Extracted, FoundBy, Graded, Record};

const LETTERS: &[u8] = b"ABCDE";

fn skip_wrappers(b: &[u8], mut i: usize) -> usize {
    loop {
        while i < b.len()
            && matches!(
                b[i],
                b' ' | b'\t'
                    | b'\n'
                    | b'\r'
                    | b'*'
                    | b'$'
                    | b'('
                    | b'['
                    | b'{'
                    | b'"'
                    | b'\''
                    | b'_'
                    | b':'
            )
        {
            i += 1;
        }
        let rest = &b[i..];
        let mut advanced = false;
        for w in [
            &b"\\boxed"[..],
            b"\\text",
            b"\\textbf",
            b"\\mathrm",
            b"\\mathbf",
        ] {
            if rest.starts_with(w)
                && !rest[w.len()..]
                    .first()
                    .is_some_and(|c| c.is_ascii_alphabetic())
            {
                i += w.len();
                advanced = true;
                break;
            }
        }
        if !advanced {
            return i;
        }
    }
}

/// The letter at `i`, if it stands alone.
fn letter_at(b: &[u8], i: usize) -> Option<char> {
    let c = *b.get(i)?;
    let up = c.to_ascii_uppercase();
    if !LETTERS.contains(&up) {
        return None;
    }
    match b.get(i + 1) {
        None => {}
        Some(n) if n.is_ascii_alphanumeric() => return None,
        Some(n) => {
            if c.is_ascii_lowercase() && (*n == b' ' || *n == b'\t') {
                // "a bank": an article, not an option letter
                if b.get(i + 2).is_some_and(|m| m.is_ascii_alphabetic()) {
                    return None;
                }
            }
            // UTF-8 continuation (a letter glued to a non-ASCII word) is not an option.
            if *n >= 0x80 {
                return None;
            }
        }
    }
    Some(up as char)
}

const CUES: [&[u8]; 3] = [b"answer:", b"answer is", b"\\boxed{"];

/// All cue end positions, in order.
fn cue_ends(b: &[u8]) -> impl Iterator<Item = usize> + '_ {
    (0..b.len()).filter_map(move |i| {
        CUES.iter().find_map(|cue| {
            let end = i + cue.len();
            (end <= b.len() && b[i..end].eq_ignore_ascii_case(cue)).then_some(end)
        })
    })
}

fn normalise_text(s: &str) -> String {
    s.trim()
        .trim_matches(|c: char| {
            c == '*' || c == '"' || c == '\'' || c == '.' || c == '$' || c.is_whitespace()
        })
        .to_lowercase()
}

fn match_choice(text: &str, choices: &[(&str, &str)]) -> Option<String> {
    let t = normalise_text(text);
    if t.is_empty() {
        return None;
    }
    choices
        .iter()
        .find(|(_, ct)| normalise_text(ct) == t)
        .map(|(l, _)| l.to_string())
}

/// Extracts the answer letter. `choices` are `(label, text)` pairs for mapping an exact
/// choice text to its label.
pub fn extract(output: &str, choices: &[(&str, &str)]) -> Option<String> {
    find(output, choices).map(|(letter, _)| letter)
}

/// [`extract`] with the voting key (the letter in upper case, as grading compares letters
/// case-insensitively) and how the letter was found: after an answer cue (a letter, or a choice
/// text on the cue's line) or, as a fallback, as a choice text filling the whole output.
pub fn extract_answer(output: &str, choices: &[(&str, &str)]) -> Option<Extracted> {
    let (answer, found_by) = find(output, choices)?;
    Some(Extracted {
        key: answer.trim().to_ascii_uppercase(),
        answer,
        found_by,
    })
}

fn find(output: &str, choices: &[(&str, &str)]) -> Option<(String, FoundBy)> {
    let b = output.as_bytes();
    let mut last_letter = None;
    let mut last_cue = None;
    for end in cue_ends(b) {
        last_cue = Some(end);
        let i = skip_wrappers(b, end);
        if let Some(l) = letter_at(b, i) {
            last_letter = Some(l);
        }
    }
    if let Some(l) = last_letter {
        return Some((l.to_string(), FoundBy::Marker));
    }
    if choices.is_empty() {
        return None;
    }
    if let Some(end) = last_cue {
        let rest = &output[end..];
        let line = rest.trim_start().lines().next().unwrap_or("");
        if let Some(l) = match_choice(line, choices) {
            return Some((l, FoundBy::Marker));
        }
    }
    match_choice(output, choices).map(|l| (l, FoundBy::Fallback))
}

/// simple-evals' `(?i)Answer[ \t]*:[ \t]*\$?([A-E])\$?`, first match (for comparison).
pub fn simple_evals(output: &str) -> Option<char> {
    let b = output.as_bytes();
    let mut from = 0;
    while let Some(p) = crate::find_ci(b, b"answer", from) {
        let mut i = p + 6;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] == b':' {
            i += 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i < b.len() && b[i] == b'$' {
                i += 1;
            }
            if i < b.len() && LETTERS.contains(&b[i].to_ascii_uppercase()) {
                return Some(b[i] as char);
            }
        }
        from = p + 1;
    }
    None
}

/// Grades an extracted letter against the gold label (case-insensitive).
pub fn grade(answer: Option<&str>, gold: &str) -> Graded {
    match answer {
        None => Graded::NO_ANSWER,
        Some(a) if a.trim().eq_ignore_ascii_case(gold.trim()) => Graded::correct("same choice"),
        Some(_) => Graded::wrong("different choice"),
    }
}

/// Parses a Hugging Face CommonsenseQA record.
pub fn parse_record(line: &str) -> Result<Record, String> {
    let obj = crate::record::parse_object(line)?;
    let question = crate::record::str_field(&obj, "question")?;
    let gold = crate::record::str_field(&obj, "answerKey")?
        .trim()
        .to_string();
    let choices_v = obj.get("choices").ok_or("missing field `choices`")?;
    let labels = choices_v
        .get("label")
        .and_then(|v| v.as_array())
        .ok_or("missing field `choices.label` (a list)")?;
    let texts = choices_v
        .get("text")
        .and_then(|v| v.as_array())
        .ok_or("missing field `choices.text` (a list)")?;
    if labels.len() != texts.len() || labels.is_empty() {
        return Err(format!(
            "`choices.label` has {} entries but `choices.text` has {}",
            labels.len(),
            texts.len()
        ));
    }
    let mut choices = Vec::with_capacity(labels.len());
    for (l, t) in labels.iter().zip(texts) {
        let (Some(l), Some(t)) = (l.as_str(), t.as_str()) else {
            return Err("`choices.label` and `choices.text` must hold strings".to_string());
        };
        choices.push(Choice {
            label: l.to_string(),
            text: t.to_string(),
        });
    }
    if !gold.is_empty() && !choices.iter().any(|c| c.label == gold) {
        return Err(format!(
            "`answerKey` {gold:?} is not one of the choice labels"
        ));
    }
    let id = crate::record::id_or_hash(&obj, "csqa", question);
    let mut meta = serde_json::Map::new();
    if let Some(c) = obj.get("question_concept") {
        meta.insert("question_concept".to_string(), c.clone());
    }
    Ok(Record {
        id,
        question: question.to_string(),
        gold,
        choices,
        metadata: serde_json::Value::Object(meta).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CH: &[(&str, &str)] = &[
        ("A", "bank"),
        ("B", "library"),
        ("C", "park"),
        ("D", "zoo"),
        ("E", "new york"),
    ];

    #[test]
    fn letters() {
        let x = |s| extract(s, &[]);
        assert_eq!(x("Answer: (A)").as_deref(), Some("A"));
        assert_eq!(x("**Answer:** D").as_deref(), Some("D"));
        assert_eq!(x("**Answer: D**").as_deref(), Some("D"));
        assert_eq!(x("Answer: $\\boxed{C}$").as_deref(), Some("C"));
        assert_eq!(x("Answer:\nA").as_deref(), Some("A"));
        assert_eq!(x("answer: c").as_deref(), Some("C"));
        assert_eq!(x("Answer: C\nActually, Answer: D").as_deref(), Some("D"));
        assert_eq!(x("the answer is a bank"), None);
        assert_eq!(x("The answer is Bank."), None);
        assert_eq!(x("\\boxed{\\text{B}}").as_deref(), Some("B"));
        assert_eq!(x(""), None);
        assert_eq!(extract("The answer is bank.", CH).as_deref(), Some("A"));
        assert_eq!(extract("New York", CH).as_deref(), Some("E"));
        assert_eq!(extract("Answer: zoo", CH).as_deref(), Some("D"));
    }

    #[test]
    fn keys_and_markers() {
        let x = |s, ch| {
            let e = extract_answer(s, ch).unwrap();
            (e.key, e.found_by)
        };
        assert_eq!(x("answer: c", &[]), ("C".into(), FoundBy::Marker));
        assert_eq!(x("Answer: zoo", CH), ("D".into(), FoundBy::Marker));
        assert_eq!(x("New York", CH), ("E".into(), FoundBy::Fallback));
        assert_eq!(extract_answer("no idea", CH), None);
    }

    #[test]
    fn records() {
        let r = parse_record(r#"{"id":"x1","question":"q?","question_concept":"c","choices":{"label":["A","B"],"text":["a","b"]},"answerKey":"B"}"#).unwrap();
        assert_eq!(r.gold, "B");
        assert_eq!(r.choices.len(), 2);
        assert_eq!(r.id, "x1");
        assert_eq!(
            parse_record(r#"{"question":"q"}"#).unwrap_err(),
            "missing field `answerKey`"
        );
    }
}
