//! Our ROUGE-L against Google's `rouge_score` 0.1.2 on fixtures it made itself
//! (scripts/gen_rouge_fixtures.py → tests/fixtures/rouge_l.json): tokens equal, F within 1e-12
//! (in practice bit-equal).
use koala_pipeline::rouge::{Vocab, fmeasure, lcs_len, rouge_l, tokenize};
use serde_json::Value;

#[test]
fn rouge_l_equals_rouge_score() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rouge_l.json");
    let text = std::fs::read_to_string(path).expect("fixture");
    let doc: Value = serde_json::from_str(&text).expect("fixture json");
    assert_eq!(doc["rouge_score_version"], "0.1.2");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 400);
    let (mut unicode, mut empty, mut long, mut bit_equal) = (0, 0, 0, 0);
    for (i, c) in cases.iter().enumerate() {
        let t = c["target"].as_str().expect("target");
        let p = c["prediction"].as_str().expect("prediction");
        let toks = |k: &str| -> Vec<String> {
            c[k].as_array()
                .expect(k)
                .iter()
                .map(|v| v.as_str().expect("token").to_owned())
                .collect()
        };
        assert_eq!(tokenize(t), toks("target_tokens"), "case {i}: target {t:?}");
        assert_eq!(
            tokenize(p),
            toks("prediction_tokens"),
            "case {i}: prediction {p:?}"
        );
        let num = |k: &str| -> f64 { c[k].as_str().expect(k).parse().expect("python float repr") };
        let want = num("fmeasure");
        let got = rouge_l(t, p);
        assert!(
            (got - want).abs() <= 1e-12,
            "case {i}: {got} vs {want} for {t:?} / {p:?}"
        );
        if got.to_bits() == want.to_bits() {
            bit_equal += 1;
        }
        // precision and recall too, from the same LCS
        let mut v = Vocab::new();
        let (ti, pi) = (v.encode(t), v.encode(p));
        if !ti.is_empty() && !pi.is_empty() {
            let l = lcs_len(&ti, &pi) as f64;
            assert_eq!(l / pi.len() as f64, num("precision"), "case {i}");
            assert_eq!(l / ti.len() as f64, num("recall"), "case {i}");
            assert_eq!(fmeasure(l as usize, ti.len(), pi.len()), got);
        }
        unicode += usize::from(!t.is_ascii() || !p.is_ascii());
        empty += usize::from(ti.is_empty() || pi.is_empty());
        long += usize::from(ti.len() > 128 || pi.len() > 128);
    }
    assert!(
        unicode >= 20 && empty >= 5 && long >= 10,
        "{unicode} {empty} {long}"
    );
    assert_eq!(bit_equal, cases.len());
}
