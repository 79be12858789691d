#![cfg(feature = "tokenize")]
//! The tokenize stage end to end on hand-made conversations: shards read back give exactly the
//! assistant texts plus EOS on the loss-masked tokens, segment ids separate the examples, and the
//! manifest describes the files. A pyarrow cross-check reads the shards when Python has pyarrow.
use std::path::Path;

use koala_pipeline::schema::{Conversation, Preference, Turn, to_dataframe};
use koala_pipeline::tokenize::pack::Mode;
use koala_pipeline::tokenize::run::{FormatName, TokenizeConfig, run};
use koala_pipeline::tokenize::shards::{Manifest, read_split};
use koala_pipeline::tokenize::{Side, Tok};
use polars::prelude::*;

fn conv(i: usize, source: &str, split: &str, turns: Vec<Turn>) -> Conversation {
    Conversation {
        id: format!("{source}/{i}"),
        source: source.into(),
        split: split.into(),
        turns,
        src_file: format!("{source}.jsonl"),
        src_record: i as u64 + 1,
        meta: "{}".into(),
    }
}

fn corpus() -> Vec<Conversation> {
    let mut v = Vec::new();
    for i in 0..60 {
        v.push(conv(
            i,
            "sharegpt",
            if i % 10 == 0 { "validation" } else { "train" },
            vec![
                Turn::user(format!("Question number {i}: what do koalas eat?")),
                Turn::assistant(format!(
                    "Koalas eat eucalyptus leaves, {} grams a day.",
                    200 + i
                )),
                Turn::user("And sleep?"),
                Turn::assistant(format!("About {} hours. ✓", 18 + i % 4)),
            ],
        ));
    }
    for i in 0..40 {
        v.push(conv(
            i,
            "hh",
            "train",
            vec![
                Turn::user(format!("Tell me a secret {i}")),
                Turn::assistant_with(
                    "No.",
                    if i % 2 == 0 {
                        Preference::Negative
                    } else {
                        Preference::Positive
                    },
                ),
            ],
        ));
    }
    // No assistant turn: skipped as `no_target`.
    v.push(conv(0, "oig", "train", vec![Turn::user("hello?")]));
    v
}

fn write_parquet(convs: &[Conversation], path: &Path) {
    let mut df = to_dataframe(convs).unwrap();
    let f = std::fs::File::create(path).unwrap();
    ParquetWriter::new(f).finish(&mut df).unwrap();
}

/// The expected loss-masked text of each example, in the conversation order.
fn expected_targets(c: &Conversation) -> String {
    c.turns
        .iter()
        .filter(|t| t.role == koala_pipeline::schema::Role::Assistant)
        .map(|t| format!("{}</s>", t.text))
        .collect()
}

#[test]
fn koala_pack_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("kept.parquet");
    let convs = corpus();
    write_parquet(&convs, &input);
    let out = dir.path().join("shards");
    let cfg = TokenizeConfig {
        format: FormatName::Koala,
        vocab_size: 600,
        seq_len: Some(96),
        rows_per_shard: 5,
        batch_rows: 2,
        ..TokenizeConfig::default()
    };
    let (manifest, report) = run(dir.path(), &out, &cfg, None).unwrap();
    assert_eq!(report.conversations, convs.len());
    assert_eq!(report.examples, convs.len() - 1);
    assert_eq!(report.skipped.get("no_target"), Some(&1));
    assert_eq!(report.truncated_examples, 0);
    assert!(report.tokenizer_trained);
    assert_eq!(report.per_source["hh"].examples, 40);

    let read = Manifest::read(&out.join("manifest.json")).unwrap();
    assert_eq!(read, manifest);
    assert_eq!(manifest.seq_len, 96);
    assert_eq!(manifest.mode, Mode::Pack);
    let tok = Tok::from_file(&out.join(&manifest.tokenizer_file), None).unwrap();
    assert_eq!(tok.sha256, manifest.tokenizer_sha256);
    assert_eq!(
        (tok.eos_id, tok.pad_id, tok.bos_id),
        (manifest.eos_id, manifest.pad_id, manifest.bos_id)
    );

    // Every example's targets, decoded from the shards, are one of the expected strings.
    let mut expected: Vec<String> = convs[..convs.len() - 1]
        .iter()
        .map(expected_targets)
        .collect();
    let mut got = Vec::new();
    let mut rows_total = 0;
    for (split, info) in &manifest.splits {
        let rows = read_split(&out, &manifest, split).unwrap();
        assert_eq!(rows.len(), info.rows);
        rows_total += rows.len();
        assert!(info.files.len() > 1 || info.rows <= 5);
        for r in 0..rows.len() {
            let s = r * 96..(r + 1) * 96;
            let (tk, lm, sg) = (
                &rows.tokens[s.clone()],
                &rows.loss_mask[s.clone()],
                &rows.segment_ids[s],
            );
            let max_seg = *sg.iter().max().unwrap();
            assert!(max_seg >= 1);
            // Segments are contiguous, numbered from 1, padding (0) only at the end.
            let first_pad = sg.iter().position(|&x| x == 0).unwrap_or(96);
            assert!(sg[first_pad..].iter().all(|&x| x == 0));
            assert!(tk[first_pad..].iter().all(|&x| x == manifest.pad_id));
            assert!(lm[first_pad..].iter().all(|&x| x == 0));
            assert!(
                sg[..first_pad]
                    .windows(2)
                    .all(|w| w[1] == w[0] || w[1] == w[0] + 1)
            );
            for seg in 1..=max_seg {
                let idx: Vec<usize> = (0..96).filter(|&i| sg[i] == seg).collect();
                // Each example starts with BOS (masked), as EasyLM does.
                assert_eq!(tk[idx[0]], manifest.bos_id.unwrap());
                assert_eq!(lm[idx[0]], 0);
                let ids: Vec<u32> = idx
                    .iter()
                    .filter(|&&i| lm[i] == 1)
                    .map(|&i| tk[i])
                    .collect();
                got.push(tok.decode(&ids).unwrap());
            }
        }
    }
    assert_eq!(rows_total, report.rows);
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(
        report.packing_efficiency > 0.5,
        "{}",
        report.packing_efficiency
    );
    let loss_share = report.loss_tokens as f64 / report.tokens as f64;
    assert!((loss_share - report.loss_token_share).abs() < 1e-12);

    // The same input and config give byte-identical shards.
    let out2 = dir.path().join("again");
    run(dir.path(), &out2, &cfg, None).unwrap();
    for info in manifest.splits.values() {
        for f in &info.files {
            assert_eq!(
                std::fs::read(out.join(&f.path)).unwrap(),
                std::fs::read(out2.join(&f.path)).unwrap(),
                "{}",
                f.path
            );
        }
    }

    pyarrow_cross_check(&out, &manifest);
}

/// pyarrow (an independent Arrow implementation) opens the shards and sees the same columns and
/// counts as the manifest.
fn pyarrow_cross_check(out: &Path, manifest: &Manifest) {
    let py = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&py)
        .args(["-c", "import pyarrow"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has {
        eprintln!("skipped: pyarrow cross-check ({py} has no pyarrow)");
        return;
    }
    let script = r#"
import json, sys, pyarrow as pa, pyarrow.compute as pc
out = sys.argv[1]
m = json.load(open(out + "/manifest.json"))
res = {}
for split, info in m["splits"].items():
    rows = tok = loss = 0
    for f in info["files"]:
        with pa.memory_map(out + "/" + f["path"]) as src:
            t = pa.ipc.open_file(src).read_all()
        assert t.schema.names == ["tokens", "loss_mask", "segment_ids"], t.schema
        assert t.schema.field("tokens").type == pa.list_(pa.field("item", pa.uint32(), nullable=False), m["seq_len"])
        assert t.schema.field("loss_mask").type == pa.list_(pa.field("item", pa.uint8(), nullable=False), m["seq_len"])
        rows += t.num_rows
        seg = t.column("segment_ids").combine_chunks().flatten()
        tok += pc.sum(pc.cast(pc.not_equal(seg, 0), pa.int64())).as_py() or 0
        lm = t.column("loss_mask").combine_chunks().flatten()
        loss += pc.sum(pc.cast(lm, pa.int64())).as_py() or 0
    res[split] = [rows, tok, loss]
print(json.dumps(res))
"#;
    let o = std::process::Command::new(&py)
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let res: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_slice(&o.stdout).unwrap();
    for (split, info) in &manifest.splits {
        assert_eq!(
            res[split],
            vec![info.rows, info.tokens, info.loss_tokens],
            "{split}"
        );
    }
}

#[test]
fn pad_mode_truncation_and_alpaca() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    let long = "word ".repeat(200);
    let convs = vec![
        conv(
            0,
            "alpaca",
            "train",
            vec![Turn::user("Say hi."), Turn::assistant("Hi!")],
        ),
        conv(
            1,
            "alpaca",
            "train",
            vec![Turn::user("Write a lot."), Turn::assistant(long.clone())],
        ),
        conv(
            2,
            "sharegpt",
            "train",
            vec![
                Turn::user("a"),
                Turn::assistant("b"),
                Turn::user("c"),
                Turn::assistant("d"),
            ],
        ),
    ];
    write_parquet(&convs, &input);
    let cfg = TokenizeConfig {
        format: FormatName::Alpaca,
        mode: Mode::Pad,
        vocab_size: 400,
        seq_len: Some(64),
        truncation_side: Side::Right,
        ..TokenizeConfig::default()
    };
    let out = dir.path().join("o");
    let (m, r) = run(&input, &out, &cfg, None).unwrap();
    assert_eq!(r.examples, 2);
    assert_eq!(r.skipped.get("not_single_turn"), Some(&1));
    assert_eq!(r.truncated_examples, 1);
    assert_eq!(m.splits["train"].rows, 2);
    let rows = read_split(&out, &m, "train").unwrap();
    // One example per row: segment ids are 1 then 0.
    assert!(rows.segment_ids.iter().all(|&s| s <= 1));
    // Only one example was cut, so the total cut is its cut.
    assert_eq!(r.truncated_tokens, r.max_truncated_tokens);
    assert!(r.packing_efficiency < 1.0);

    // Left truncation with nothing left to train on drops the example and says why.
    let cfg = TokenizeConfig {
        max_len: Some(3),
        truncation_side: Side::Left,
        ..cfg
    };
    let (_, r) = run(&input, &dir.path().join("o2"), &cfg, None).unwrap();
    assert_eq!(r.truncated_examples, 2);
    assert_eq!(r.examples, 2);
    let bad = TokenizeConfig {
        max_len: Some(100),
        ..cfg
    };
    assert!(
        run(&input, &dir.path().join("o3"), &bad, None)
            .unwrap_err()
            .to_string()
            .contains("max_len")
    );
}

#[test]
fn missing_input_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = run(
        &dir.path().join("nope.parquet"),
        dir.path(),
        &TokenizeConfig::default(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope.parquet"), "{e}");
}

/// The curation stage's Koala JSONL export (`koala curate` on the loaders' sample data, branch
/// `curate`, committed as fixtures) read through the EasyLM fields interpreter gives exactly the
/// pieces the Koala format renders from the same kept conversations: training on our shards and
/// training EasyLM on the exported JSONL see the same tokens.
#[test]
fn koala_format_agrees_with_the_curated_easylm_export() {
    use koala_pipeline::format::{FieldsSpec, Format, KoalaFormat};
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (_, convs) =
        koala_pipeline::tokenize::run::read_conversations(&fx.join("tok_curated_kept.parquet"))
            .unwrap();
    let by_id: std::collections::HashMap<&str, &Conversation> =
        convs.iter().map(|c| (c.id.as_str(), c)).collect();
    let kf = KoalaFormat::default();
    let spec = FieldsSpec {
        fields_from_example: "fields".into(),
        prepend_text: kf.prepend_text.clone(),
        add_eos_token: false,
        ..FieldsSpec::default()
    };
    let format = Format::Koala(kf);
    let text = std::fs::read_to_string(fx.join("tok_curated_train.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let rec: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let id = rec["id"].as_str().unwrap();
        let conv = by_id[id];
        assert_eq!(
            spec.render(&rec).unwrap(),
            format.render(conv).unwrap(),
            "{id}"
        );
        n += 1;
    }
    assert!(n >= 40, "{n}");
}
