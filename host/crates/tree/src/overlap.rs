//! Train/test overlap: a held-out question that is also a training question makes the
//! evaluation measure memory, so a run with a separate test file refuses it.
//!
//! Two questions are the same when they have the same id (the dataset's own id, or the
//! plugin's hash of the question text when the dataset has none), or the same normalised
//! question text: Unicode lower case, every run of whitespace one space, trimmed. Choices and
//! gold answers are not compared: a question asked twice is one question.

use std::collections::HashMap;

use malt_records::Position;

use crate::types::Example;

/// The normal form of a question's text for the overlap check.
pub fn normalise_question(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One test question that is also a training question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// Index into the test examples, and its position in the test file.
    pub test: (usize, Position),
    /// Index into the training examples, and its position in its file (none when generated).
    pub train: (usize, Option<Position>),
    /// "id" or "question text".
    pub by: &'static str,
}

/// Every test question that shares an id or a normalised question text with a training one,
/// in test order.
pub fn find_overlap(
    train: &[(Example, Option<Position>)],
    test: &[(Example, Position)],
) -> Vec<Overlap> {
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(train.len());
    let mut by_text: HashMap<String, usize> = HashMap::with_capacity(train.len());
    for (i, (e, _)) in train.iter().enumerate() {
        by_id.entry(e.id.as_str()).or_insert(i);
        by_text.entry(normalise_question(&e.question)).or_insert(i);
    }
    let mut out = Vec::new();
    for (j, (e, at)) in test.iter().enumerate() {
        let hit = match by_id.get(e.id.as_str()) {
            Some(&i) => Some((i, "id")),
            None => by_text
                .get(&normalise_question(&e.question))
                .map(|&i| (i, "question text")),
        };
        if let Some((i, by)) = hit {
            out.push(Overlap {
                test: (j, *at),
                train: (i, train[i].1),
                by,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &str, q: &str) -> Example {
        Example {
            id: id.into(),
            question: q.into(),
            gold: "1".into(),
            choices: vec![],
            metadata: "{}".into(),
        }
    }

    #[test]
    fn same_id_or_same_text_up_to_case_and_spacing() {
        let train = vec![
            (ex("a", "How many eggs?"), Some(Position::Line(1))),
            (ex("b", "What  is\t2+2?"), Some(Position::Line(2))),
        ];
        let test = vec![
            (ex("a", "something else"), Position::Row(0)),
            (ex("x", "  what is 2+2? "), Position::Row(1)),
            (ex("y", "What is 2+3?"), Position::Row(2)),
        ];
        let o = find_overlap(&train, &test);
        assert_eq!(
            o,
            vec![
                Overlap {
                    test: (0, Position::Row(0)),
                    train: (0, Some(Position::Line(1))),
                    by: "id"
                },
                Overlap {
                    test: (1, Position::Row(1)),
                    train: (1, Some(Position::Line(2))),
                    by: "question text"
                },
            ]
        );
    }

    #[test]
    fn disjoint_sets_have_no_overlap() {
        let train = vec![(ex("a", "q1"), None)];
        let test = vec![(ex("b", "q2"), Position::Line(1))];
        assert!(find_overlap(&train, &test).is_empty());
    }

    #[test]
    fn normal_form_folds_unicode_case() {
        assert_eq!(
            normalise_question(" Ünïcode\n\nQUESTION "),
            "ünïcode question"
        );
    }
}
