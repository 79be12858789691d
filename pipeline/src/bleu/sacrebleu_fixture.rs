//! Agreement with the real sacrebleu, through the committed fixture
//! `pipeline/tests/fixtures/bleu_sacrebleu.jsonl` (made by `scripts/gen_bleu_fixtures.py`).
use serde::Deserialize;

use super::*;

const TOL: f64 = 1e-9;

#[derive(Deserialize)]
struct Expect {
    score: f64,
    counts: [u64; 4],
    totals: [u64; 4],
    precisions: [f64; 4],
    bp: f64,
    sys_len: u64,
    ref_len: u64,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Case {
    Sentence {
        hyp: String,
        refs: Vec<String>,
        lowercase: bool,
        tokenized: String,
        expect: Expect,
    },
    Corpus {
        hyps: Vec<String>,
        refs: Vec<Vec<String>>,
        lowercase: bool,
        expect: Expect,
    },
}

fn check(what: &str, got: &BleuScore, want: &Expect) -> Option<String> {
    let close = |a: f64, b: f64| (a - b).abs() <= TOL;
    let ok = close(got.score, want.score)
        && got.counts == want.counts
        && got.totals == want.totals
        && got
            .precisions
            .iter()
            .zip(&want.precisions)
            .all(|(a, b)| close(*a, *b))
        && close(got.bp, want.bp)
        && got.sys_len == want.sys_len
        && got.ref_len == want.ref_len;
    (!ok).then(|| {
        format!(
            "{what}: got score {} counts {:?} totals {:?} lens {}/{}, sacrebleu {} {:?} {:?} {}/{}",
            got.score,
            got.counts,
            got.totals,
            got.sys_len,
            got.ref_len,
            want.score,
            want.counts,
            want.totals,
            want.sys_len,
            want.ref_len
        )
    })
}

#[test]
fn agrees_with_sacrebleu_at_1e_9() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bleu_sacrebleu.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let (mut n_sent, mut n_corpus) = (0, 0);
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let case: Case = serde_json::from_str(line).unwrap();
        match case {
            Case::Sentence {
                hyp,
                refs,
                lowercase,
                tokenized,
                expect,
            } => {
                n_sent += 1;
                let opts = BleuOptions { lowercase };
                let tok = preprocess(&hyp, opts);
                if tok != tokenized {
                    failures.push(format!(
                        "line {}: tokenized {tok:?}, sacrebleu {tokenized:?}",
                        i + 1
                    ));
                }
                let got = sentence_bleu(&hyp, &refs, opts).unwrap();
                failures.extend(check(
                    &format!("line {} {hyp:?} vs {refs:?}", i + 1),
                    &got,
                    &expect,
                ));
            }
            Case::Corpus {
                hyps,
                refs,
                lowercase,
                expect,
            } => {
                n_corpus += 1;
                let got = corpus_bleu(&hyps, &refs, BleuOptions { lowercase }).unwrap();
                failures.extend(check(&format!("line {} (corpus)", i + 1), &got, &expect));
            }
        }
    }
    assert!(
        n_sent >= 500 && n_corpus >= 20,
        "fixture too small: {n_sent} sentence, {n_corpus} corpus"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with sacrebleu; first ones:\n{}",
        failures.len(),
        n_sent + n_corpus,
        failures[..failures.len().min(10)].join("\n")
    );
}
