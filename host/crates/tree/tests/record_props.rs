//! trees.jsonl records survive any text (newlines, quotes, unicode) and detect any truncation.

mod common;

use malt_tree::fake::{fake_examples, FakeSampler, FakeScorer};
use malt_tree::generate_tree;
use malt_tree::store::{decode_record, encode_record};
use proptest::prelude::*;

proptest! {
    #[test]
    fn roundtrip_any_text_and_detect_truncation(text in "\\PC*|[\\n\\r\"}{\\\\]{0,20}", cut in 0usize..10_000) {
        let chain = common::gvr(2);
        let ex = &fake_examples(1)[0];
        let (mut tree, _) = generate_tree(
            &chain, ex, 1, &mut FakeSampler::default(), &mut FakeScorer::default(), &mut Default::default(),
        ).unwrap();
        tree.nodes[3].output = text.clone();
        tree.example.question = text;
        let line = encode_record(&tree).unwrap();
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let body = &line[..line.len() - 1];
        prop_assert_eq!(decode_record(body).unwrap(), tree);
        let cut = cut % body.len();
        prop_assert!(decode_record(&body[..cut]).is_err());
    }
}
