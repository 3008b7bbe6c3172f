//! Majority voting over the final answers of `k` independent attempts.
//!
//! Votes are grouped by exact key: [`crate::Outcome::vote_key`], the plugin's canonical key of
//! the answer when it gives one (API `malt:plugin@0.2.0`: the math plugin keys `\frac12`,
//! `\dfrac{1}{2}` and `0.5` alike as `0.5`), else the extracted answer; either trimmed of
//! surrounding whitespace, and nothing more. Any smarter equivalence is benchmark knowledge and
//! belongs to the plugin, which also grades: only it knows which answers its grader calls equal.
//! A 0.1.0 plugin gives no key, so its answers vote as they are written.
//!
//! Tie rule: among the most frequent keys, the one whose *first occurrence is earliest* wins,
//! i.e. the earliest attempt wins ties. Why:
//! - it is deterministic and independent of the answer text (a lexicographic rule would favour,
//!   say, shorter numbers);
//! - when all answers differ, MV@k returns attempt 0, the non-MV result, so voting only changes
//!   an answer when there is a real majority.
//!
//! `None` votes (unparseable or errored attempts) never win unless all votes are `None`, in
//! which case there is no winner: a failed parse carries no answer to agree on, and letting
//! two failures outvote one real answer could only turn a possibly correct answer into a
//! certainly wrong one.

/// The voting key of an answer or of a plugin's key: the text trimmed.
pub fn vote_key(answer: &str) -> &str {
    answer.trim()
}

/// Index of the winning vote: the first vote holding the most frequent key (see the module doc
/// for the tie rule). `None` when every vote is `None` (or there are no votes).
///
/// Keys are compared after [`vote_key`]. Returning an index rather than the key lets the caller
/// take the grade of the very attempt that won.
pub fn majority_vote<S: AsRef<str>>(votes: &[Option<S>]) -> Option<usize> {
    // (key, first index, count); k is small (3 in the paper), so a linear scan beats hashing
    // and keeps first-occurrence order for free.
    let mut tally: Vec<(&str, usize, usize)> = Vec::new();
    for (i, vote) in votes.iter().enumerate() {
        let Some(v) = vote else { continue };
        let key = vote_key(v.as_ref());
        match tally.iter_mut().find(|(k, _, _)| *k == key) {
            Some(entry) => entry.2 += 1,
            None => tally.push((key, i, 1)),
        }
    }
    // `tally` is in first-occurrence order, so keeping the first strict maximum is the tie rule.
    let mut best: Option<(usize, usize)> = None;
    for &(_, first, count) in &tally {
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((first, count));
        }
    }
    best.map(|(first, _)| first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[Option<&str>]) -> Option<usize> {
        majority_vote(xs)
    }

    #[test]
    fn clear_majority() {
        assert_eq!(v(&[Some("1"), Some("2"), Some("2")]), Some(1));
    }

    #[test]
    fn all_distinct_returns_first_attempt() {
        assert_eq!(v(&[Some("3"), Some("1"), Some("2")]), Some(0));
    }

    #[test]
    fn tie_goes_to_earliest_first_occurrence() {
        assert_eq!(v(&[Some("b"), Some("a"), Some("a"), Some("b")]), Some(0));
        assert_eq!(
            v(&[None, Some("a"), Some("b"), Some("b"), Some("a")]),
            Some(1)
        );
    }

    #[test]
    fn none_never_wins() {
        assert_eq!(v(&[None, None, Some("7")]), Some(2));
        assert_eq!(v(&[None, None, None]), None);
        assert_eq!(v(&[]), None);
    }

    /// The plugin's keys decide: two ways of writing one half outvote `3`, although all three
    /// answers differ as written; without keys (a 0.1.0 plugin) they tie and attempt 0 wins.
    #[test]
    fn plugin_keys_merge_forms_of_one_answer() {
        use crate::Outcome;
        let answer = |answer: &str, key: Option<&str>, correct| Outcome::Answer {
            answer: answer.into(),
            key: key.map(Into::into),
            correct,
        };
        let keyed = [
            answer("3", Some("3"), false),
            answer("\\frac12", Some("0.5"), true),
            answer("\\dfrac{1}{2}", Some("0.5"), true),
        ];
        let votes: Vec<Option<&str>> = keyed.iter().map(Outcome::vote_key).collect();
        let winner = majority_vote(&votes).unwrap();
        assert_eq!(winner, 1);
        assert!(keyed[winner].is_correct());
        let bare = [
            answer("3", None, false),
            answer("\\frac12", None, true),
            answer("\\dfrac{1}{2}", None, true),
        ];
        let votes: Vec<Option<&str>> = bare.iter().map(Outcome::vote_key).collect();
        assert_eq!(majority_vote(&votes), Some(0));
    }

    #[test]
    fn keys_are_trimmed_but_otherwise_exact() {
        assert_eq!(v(&[Some("x"), Some(" 5 "), Some("5\n")]), Some(1));
        assert_eq!(v(&[Some("5.0"), Some("5"), Some("x")]), Some(0));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Votes over a small alphabet so that ties and repeats are common; `None` included.
    fn votes() -> impl Strategy<Value = Vec<Option<String>>> {
        prop::collection::vec(
            prop_oneof![
                1 => Just(None),
                4 => prop::sample::select(vec!["1", "2", " 2", "3", "4 "]).prop_map(|s| Some(s.to_string())),
            ],
            0..9,
        )
    }

    fn winner_key(votes: &[Option<String>]) -> Option<String> {
        majority_vote(votes).and_then(|i| votes[i].as_deref().map(|s| vote_key(s).to_string()))
    }

    fn counts(votes: &[Option<String>]) -> Vec<(String, usize)> {
        let mut c: Vec<(String, usize)> = Vec::new();
        for v in votes.iter().flatten() {
            let k = vote_key(v).to_string();
            match c.iter_mut().find(|(x, _)| *x == k) {
                Some(e) => e.1 += 1,
                None => c.push((k, 1)),
            }
        }
        c
    }

    proptest! {
        #[test]
        fn unique_mode_is_permutation_invariant(v in votes(), shuffle_seed: u64) {
            let c = counts(&v);
            let max = c.iter().map(|x| x.1).max();
            let modes: Vec<&String> = c.iter().filter(|x| Some(x.1) == max).map(|x| &x.0).collect();
            prop_assume!(modes.len() == 1);
            let mut w = v.clone();
            // Fisher-Yates driven by the generated seed: any permutation is reachable.
            let mut rng = crate::subset::SplitMix64::new(shuffle_seed);
            for i in (1..w.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                w.swap(i, j);
            }
            prop_assert_eq!(winner_key(&v), Some(modes[0].clone()));
            prop_assert_eq!(winner_key(&w), Some(modes[0].clone()));
        }

        #[test]
        fn winner_is_a_mode_at_its_first_occurrence(v in votes()) {
            let c = counts(&v);
            match majority_vote(&v) {
                None => prop_assert!(v.iter().all(Option::is_none)),
                Some(i) => {
                    let key = vote_key(v[i].as_deref().expect("winner has a vote"));
                    let max = c.iter().map(|x| x.1).max();
                    prop_assert_eq!(c.iter().find(|x| x.0 == key).map(|x| x.1), max);
                    // No earlier vote holds a key with the same (maximal) count.
                    for earlier in v[..i].iter().flatten() {
                        let ek = vote_key(earlier);
                        prop_assert!(c.iter().find(|x| x.0 == ek).map(|x| x.1) < max);
                    }
                }
            }
        }

        #[test]
        fn all_none_gives_none(n in 0usize..10) {
            let v: Vec<Option<String>> = vec![None; n];
            prop_assert_eq!(majority_vote(&v), None);
        }
    }
}
