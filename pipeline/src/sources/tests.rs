//! Every loader on the sample files of `examples/data`, and every bad-input case of the issue:
//! invalid UTF-8, a truncated gzip, an empty file, a 50 MB single record, wrong types.
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::schema::{Conversation, Preference, Role, from_dataframe};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data")
}

fn load_samples(opts: &LoadOptions) -> (LoadOutcome, Vec<Conversation>) {
    let out = load_dir(&samples(), opts).unwrap();
    out.check_reconciled().unwrap();
    let rows = from_dataframe(&out.table).unwrap();
    (out, rows)
}

fn stats(out: &LoadOutcome, source: &str) -> SourceStats {
    out.by_source()
        .into_iter()
        .find(|s| s.source == source)
        .unwrap_or_else(|| panic!("no stats for {source}"))
}

fn row<'a>(rows: &'a [Conversation], id: &str) -> &'a Conversation {
    rows.iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no row {id}"))
}

fn meta(c: &Conversation) -> serde_json::Value {
    serde_json::from_str(&c.meta).unwrap()
}

/// (records read, loaded, skipped, quarantined, rows) per source on the sample data.
const EXPECTED: [(&str, [u64; 5]); 7] = [
    ("sharegpt", [10, 9, 0, 1, 9]),
    ("hc3", [7, 6, 0, 1, 13]),
    ("oig", [7, 6, 0, 1, 6]),
    ("alpaca", [6, 6, 0, 0, 6]),
    ("hh", [8, 7, 0, 1, 14]),
    ("webgpt", [3, 3, 0, 0, 6]),
    ("summarize", [3, 3, 0, 0, 6]),
];

#[test]
fn sample_counts_reconcile_per_source() {
    let (out, rows) = load_samples(&LoadOptions::default());
    for (source, [read, loaded, skipped, quarantined, nrows]) in EXPECTED {
        let s = stats(&out, source);
        assert_eq!(
            [
                s.records_read,
                s.records_loaded,
                s.records_skipped,
                s.records_quarantined,
                s.rows
            ],
            [read, loaded, skipped, quarantined, nrows],
            "{source}"
        );
        assert_eq!(
            rows.iter().filter(|r| r.source == source).count() as u64,
            nrows
        );
    }
    assert_eq!(out.quarantine.len(), 4);
    assert!(out.ignored.is_empty(), "{:?}", out.ignored);
    assert_eq!(out.renamed_ids, 0);
    // Sources come out in table order, then files in path order, then records in file order.
    let order: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|s| Source::ALL.iter().position(|x| x.name() == *s));
    assert_eq!(order, sorted);
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| &r.id).collect();
    assert_eq!(ids.len(), rows.len(), "ids are unique");
}

#[test]
fn loads_are_deterministic() {
    let a = load_dir(&samples(), &LoadOptions::default()).unwrap();
    let b = load_dir(
        &samples(),
        &LoadOptions {
            chunk_records: 1,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert!(a.table.equals(&b.table));
    assert_eq!(a.quarantine, b.quarantine);
}

#[test]
fn sharegpt_both_forms() {
    let (out, rows) = load_samples(&LoadOptions::default());
    let c = row(&rows, "sharegpt/QWJhYvA_0");
    assert_eq!(c.turns.len(), 4);
    assert_eq!(c.turns[0].role, Role::User);
    assert_eq!(c.turns[0].text, "How do I reverse a list in Python?");
    assert!(c.turns[1].text.starts_with("<div class=\"markdown"));
    assert_eq!(c.turns[1].preference, Preference::Positive);
    assert_eq!(c.src_file, "sharegpt/sg_90k_sample.json");
    assert_eq!(c.src_record, 1);
    let sys = row(&rows, "sharegpt/Lm0pQrs_3");
    assert_eq!(sys.turns[0].role, Role::System);
    // Keyed form: sorted by the integer suffix, not as strings.
    let k = row(&rows, "sharegpt/keyed_0002");
    let texts: Vec<&str> = k.turns.iter().map(|t| &t.text[..12]).collect();
    assert_eq!(
        texts,
        [
            "I am writing",
            "Sort the key",
            "Does the ord",
            "Yes. The ele"
        ]
    );
    assert_eq!(k.turns[3].role, Role::Assistant);
    assert_eq!(meta(k)["form"], "keyed");
    // The wrong-typed record is quarantined with its field and element.
    let q = out
        .quarantine
        .iter()
        .find(|q| q.source == Source::ShareGpt)
        .unwrap();
    assert_eq!(q.field, "conversations[1].value");
    assert_eq!(q.record, 6);
    assert!(
        q.reason.contains("expected a string, found number 42"),
        "{}",
        q.reason
    );
    assert!(q.raw.contains("bad_types_1"));
    let line = std::fs::read_to_string(samples().join("sharegpt/sg_90k_sample.json"))
        .unwrap()
        .lines()
        .position(|l| l.contains("bad_types_1"))
        .unwrap() as u64;
    assert_eq!(q.line, line, "the line where the element's `{{` is");
}

#[test]
fn hc3_one_row_per_answer() {
    let (out, rows) = load_samples(&LoadOptions::default());
    let ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.id.starts_with("hc3/all/1/"))
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "hc3/all/1/human/0",
            "hc3/all/1/chatgpt/0",
            "hc3/all/1/chatgpt/1"
        ]
    );
    let c = row(&rows, "hc3/all/1/chatgpt/1");
    assert!(c.turns[0].text.starts_with("If salt is so bad"));
    assert!(c.turns[1].text.starts_with("Road salt"));
    let m = meta(c);
    assert_eq!(
        (m["answer_kind"].as_str(), m["answer_index"].as_u64()),
        (Some("chatgpt"), Some(1))
    );
    assert_eq!(m["hc3_source"], "reddit_eli5");
    // The truncated line 5 is quarantined, the others around it are loaded.
    let q = out
        .quarantine
        .iter()
        .find(|q| q.source == Source::Hc3)
        .unwrap();
    assert_eq!((q.line, q.field.as_str()), (5, "(json)"));
    assert!(rows.iter().any(|r| r.id == "hc3/all/5/human/0"));
}

#[test]
fn oig_subsets_and_turns() {
    let (out, rows) = load_samples(&LoadOptions::default());
    let c = row(&rows, "oig/unified_grade_school_math_instructions/3");
    assert_eq!(c.turns.len(), 4);
    assert_eq!(c.turns[2].text, "What if the wallet cost $120 instead?");
    assert_eq!(meta(c)["subset"], "grade_school_math_instructions");
    let subsets: std::collections::BTreeSet<String> = rows
        .iter()
        .filter(|r| r.source == "oig")
        .map(|r| meta(r)["subset"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subsets.len(), 4);
    let q = out
        .quarantine
        .iter()
        .find(|q| q.source == Source::Oig)
        .unwrap();
    assert_eq!(
        (q.file.as_str(), q.line, q.field.as_str()),
        ("oig/unified_poetry_2_song.jsonl", 2, "text")
    );
    assert!(q.reason.contains("first turn is <bot>:"), "{}", q.reason);
}

#[test]
fn alpaca_input_joined_like_koala() {
    let (_, rows) = load_samples(&LoadOptions::default());
    let c = row(&rows, "alpaca/alpaca_data/2");
    assert_eq!(
        c.turns[0].text,
        "Identify the odd one out. Twitter, Instagram, Telegram"
    );
    assert_eq!(meta(c)["input"], "Twitter, Instagram, Telegram");
    let c = row(&rows, "alpaca/alpaca_data/1");
    assert_eq!(c.turns[0].text, "Give three tips for staying healthy.");
    assert_eq!(c.turns[1].preference, Preference::Positive);
}

#[test]
fn hh_pairs_become_two_rows() {
    let (out, rows) = load_samples(&LoadOptions::default());
    let ch = row(&rows, "hh/helpful-base/train/2/chosen");
    let rj = row(&rows, "hh/helpful-base/train/2/rejected");
    assert_eq!((ch.split.as_str(), ch.turns.len()), ("train", 4));
    assert_eq!(ch.turns[1].preference, Preference::Unrated);
    assert_eq!(ch.turns[3].preference, Preference::Positive);
    assert_eq!(rj.turns[3].preference, Preference::Negative);
    assert_eq!(rj.turns[3].text, "Lisbon is in Portugal.");
    assert_eq!(meta(rj)["side"], "rejected");
    assert_eq!(meta(rj)["subset"], "helpful-base");
    assert_eq!(row(&rows, "hh/helpful-base/test/1/chosen").split, "test");
    let empty = row(&rows, "hh/harmless-base/train/2/rejected");
    assert_eq!(empty.turns[1].text, "");
    let q = out
        .quarantine
        .iter()
        .find(|q| q.source == Source::Hh)
        .unwrap();
    assert_eq!(
        (q.file.as_str(), q.line, q.field.as_str()),
        ("hh/helpful-base/train.jsonl.gz", 5, "rejected")
    );
}

#[test]
fn webgpt_scores_ties_and_quotes() {
    let (_, rows) = load_samples(&LoadOptions::default());
    let win = row(&rows, "webgpt/comparisons/1/0");
    let lose = row(&rows, "webgpt/comparisons/1/1");
    assert_eq!(win.turns[1].preference, Preference::Positive);
    assert_eq!(lose.turns[1].preference, Preference::Negative);
    let prompt = &win.turns[0].text;
    assert!(prompt.starts_with("Why does the moon look bigger near the horizon?\n\n"));
    assert!(webgpt::QUOTE_PREFIXES.iter().any(|p| prompt.contains(p)));
    assert!(
        prompt.contains("\n[1] title: Moon illusion - Wikipedia content: The Moon illusion is")
    );
    assert!(
        prompt.contains("\n[2] title: Why Does the Moon Look So Big Tonight? | NASA content: ")
    );
    assert_eq!(meta(win)["score"], 1.0);
    // A tie: kept, both unrated, by default.
    for i in 0..2 {
        let t = row(&rows, &format!("webgpt/comparisons/2/{i}"));
        assert_eq!(t.turns[1].preference, Preference::Unrated);
        assert_eq!(meta(t)["tie"], true);
    }
    // No quotes: the prompt is the question alone.
    assert_eq!(
        row(&rows, "webgpt/comparisons/3/0").turns[0].text,
        "Which planet has the most moons?"
    );
    assert_eq!(
        row(&rows, "webgpt/comparisons/3/1").turns[1].preference,
        Preference::Positive
    );
    // Skipping ties is an option, and the skip is counted.
    let (out, rows) = load_samples(&LoadOptions {
        webgpt_ties: TiePolicy::Skip,
        ..LoadOptions::default()
    });
    let s = stats(&out, "webgpt");
    assert_eq!(
        (s.records_read, s.records_loaded, s.records_skipped, s.rows),
        (3, 2, 1, 4)
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.id.starts_with("webgpt/comparisons/2/"))
    );
}

#[test]
fn summarize_prompt_and_choice() {
    let (_, rows) = load_samples(&LoadOptions::default());
    let a = row(&rows, "summarize/comparisons/batch3/2/0");
    let b = row(&rows, "summarize/comparisons/batch3/2/1");
    assert_eq!(a.turns[1].preference, Preference::Negative);
    assert_eq!(b.turns[1].preference, Preference::Positive);
    assert_eq!(
        a.turns[0].text, b.turns[0].text,
        "both rows share the prompt"
    );
    let p = &a.turns[0].text;
    let prefix = summarize::TASK_PREFIXES
        .iter()
        .find(|x| p.starts_with(**x))
        .expect("one of Koala's prefixes");
    assert!(p[prefix.len()..].starts_with("I've been learning to play guitar"));
    assert!(
        b.turns[1].text.starts_with("Self-taught"),
        "leading blank removed"
    );
    assert_eq!(meta(b)["policy"], "sup4_ppo_rm4_t.7");
    let v = row(&rows, "summarize/comparisons/batch3/3/0");
    assert_eq!(v.split, "validation");
    assert_eq!(meta(v)["native_split"], "valid1");
}

// ---------------------------------------------------------------- bad input

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn fail() -> LoadOptions {
    LoadOptions {
        on_error: OnError::Fail,
        ..LoadOptions::default()
    }
}

const HH_LINE: &str = r#"{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}"#;

#[test]
fn invalid_utf8_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = Vec::new();
    data.extend_from_slice(HH_LINE.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(
        b"{\"chosen\": \"\\n\\nHuman: caf\xe9\\n\\nAssistant: ok\", \"rejected\": \"x\"}\n",
    );
    data.extend_from_slice(HH_LINE.as_bytes());
    data.push(b'\n');
    write(dir.path(), "hh/base/train.jsonl", &data);
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    out.check_reconciled().unwrap();
    let t = out.totals();
    assert_eq!(
        (
            t.records_read,
            t.records_loaded,
            t.records_quarantined,
            t.rows
        ),
        (3, 2, 1, 4)
    );
    let q = &out.quarantine[0];
    assert_eq!(
        (q.file.as_str(), q.line, q.field.as_str()),
        ("hh/base/train.jsonl", 2, "chosen")
    );
    assert!(q.reason.contains("invalid UTF-8"), "{}", q.reason);
    assert!(q.raw.contains("caf\u{FFFD}"));
    let err = load_dir(dir.path(), &fail()).unwrap_err().to_string();
    assert!(
        err.starts_with("hh/base/train.jsonl:2: field `chosen`: invalid UTF-8"),
        "{err}"
    );
}

#[test]
fn truncated_gzip_keeps_the_intact_lines() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..2000).map(|_| format!("{HH_LINE}\n")).collect();
    let gz = gzip(lines.as_bytes());
    write(dir.path(), "hh/base/train.jsonl.gz", &gz[..gz.len() / 2]);
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    out.check_reconciled().unwrap();
    let t = out.totals();
    assert!(t.records_loaded > 100 && t.records_loaded < 2000, "{t:?}");
    assert_eq!(t.records_quarantined, 1);
    assert_eq!(t.records_read, t.records_loaded + 1);
    let q = &out.quarantine[0];
    assert_eq!(q.field, "(gzip)");
    assert_eq!(q.line, t.records_loaded + 1);
    assert!(
        q.reason.contains("truncated or corrupt gzip"),
        "{}",
        q.reason
    );
    let err = load_dir(dir.path(), &fail()).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "hh/base/train.jsonl.gz:{}: field `(gzip)`",
            q.line
        )),
        "{err}"
    );
}

#[test]
fn empty_files_warn_or_fail() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "alpaca/alpaca_data.json", b"");
    write(dir.path(), "hc3/all.jsonl", b"\n\n");
    write(dir.path(), "hh/base/test.jsonl.gz", &gzip(b""));
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    out.check_reconciled().unwrap();
    assert_eq!(out.table.height(), 0);
    schema::validate(&out.table).unwrap();
    assert_eq!(out.files.len(), 3);
    for f in &out.files {
        assert_eq!(f.records_read, 0);
        assert_eq!(
            f.warning.as_deref(),
            Some("empty file: no records"),
            "{}",
            f.file
        );
    }
    let err = load_dir(dir.path(), &fail()).unwrap_err().to_string();
    // Sources are read in table order: hc3 comes before alpaca.
    assert_eq!(
        err,
        "hc3/all.jsonl:1: field `(file)`: empty file: no records"
    );
}

#[test]
fn a_50_mb_record_loads() {
    let dir = tempfile::tempdir().unwrap();
    let big = "lorem ipsum dolor sit amet ".repeat(50 * 1024 * 1024 / 27 + 1);
    let rec = serde_json::json!([
        {"instruction": "short", "input": "", "output": "ok"},
        {"instruction": "Summarize this.", "input": big, "output": "A long text."},
        {"instruction": "after", "input": "", "output": "still here"},
    ]);
    let bytes = serde_json::to_vec(&rec).unwrap();
    assert!(bytes.len() > 50 * 1024 * 1024);
    write(dir.path(), "alpaca/alpaca_data.json", &bytes);
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    out.check_reconciled().unwrap();
    let rows = from_dataframe(&out.table).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[1].turns[0].text.len() > 50 * 1024 * 1024);
    assert_eq!(rows[2].turns[1].text, "still here");
}

/// A record over the cap is quarantined with its size and reason, without being loaded; the
/// records around it load as usual, and the counts reconcile.
#[test]
fn an_oversized_record_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let big = "lorem ipsum ".repeat(200_000);
    let rec = serde_json::json!([
        {"instruction": "short", "input": "", "output": "ok"},
        {"instruction": "Summarize this.", "input": big, "output": "A long text."},
        {"instruction": "after", "input": "", "output": "still here"},
    ]);
    write(
        dir.path(),
        "alpaca/alpaca_data.json",
        &serde_json::to_vec(&rec).unwrap(),
    );
    let opts = LoadOptions {
        max_record_bytes: 1 << 20,
        ..LoadOptions::default()
    };
    let out = load_dir(dir.path(), &opts).unwrap();
    out.check_reconciled().unwrap();
    let rows = from_dataframe(&out.table).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].turns[1].text, "still here");
    assert_eq!(rows[1].src_record, 3);
    let q = &out.quarantine[0];
    assert_eq!((q.record, q.field.as_str()), (2, "(record)"));
    assert!(
        q.reason.contains("over the limit of 1048576 bytes"),
        "{}",
        q.reason
    );
    assert!(
        q.raw_truncated && q.raw_bytes > 2_400_000,
        "{}",
        q.raw_bytes
    );
    assert!(
        q.raw.starts_with("{\"input\":\"lorem ipsum"),
        "{}",
        &q.raw[..40]
    );
    let err = load_dir(
        dir.path(),
        &LoadOptions {
            on_error: OnError::Fail,
            ..opts
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("alpaca/alpaca_data.json:1: field `(record)`"),
        "{err}"
    );
}

/// The same records load the same from a plain file, its gzip, and in batches of any size.
#[test]
fn gzip_and_batch_size_do_not_change_the_table() {
    let bytes = std::fs::read(samples().join("sharegpt/sg_90k_sample.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "plain/sharegpt/part.json", &bytes);
    write(dir.path(), "gz/sharegpt/part.json.gz", &gzip(&bytes));
    let load = |sub: &str, batch_bytes: usize| {
        let opts = LoadOptions {
            batch_bytes,
            chunk_records: 3,
            ..LoadOptions::default()
        };
        let out = load_dir(&dir.path().join(sub), &opts).unwrap();
        out.check_reconciled().unwrap();
        let mut rows = from_dataframe(&out.table).unwrap();
        for r in &mut rows {
            r.src_file.clear(); // part.json vs part.json.gz
        }
        (rows, out.quarantine.len())
    };
    let whole = load("plain", 1 << 30);
    assert!(whole.0.len() >= 5);
    assert_eq!(load("plain", 1), whole);
    assert_eq!(load("gz", 1), whole);
    assert_eq!(load("gz", 1 << 30), whole);
}

#[test]
fn wrong_types_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 7] = [
        (
            "hc3/all.jsonl",
            r#"{"question": "q", "human_answers": "not a list", "chatgpt_answers": []}"#,
            "human_answers",
        ),
        (
            "hc3/all.jsonl",
            r#"{"question": "q", "human_answers": ["a", 7], "chatgpt_answers": []}"#,
            "human_answers[1]",
        ),
        (
            "webgpt/comparisons.jsonl",
            r#"{"question": {"full_text": "q"}, "quotes_0": {"title": [], "extract": []}, "answer_0": "a", "score_0": "high", "quotes_1": {"title": [], "extract": []}, "answer_1": "b", "score_1": 0}"#,
            "score_0",
        ),
        (
            "summarize/comparisons/batch1.json",
            r#"{"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": ["b"]}], "choice": 0}"#,
            "summaries[1].text",
        ),
        ("oig/unified_x.jsonl", r#"{"text": 12}"#, "text"),
        (
            "hh/base/train.jsonl",
            r#"{"chosen": null, "rejected": "x"}"#,
            "chosen",
        ),
        (
            "alpaca/alpaca_data.json",
            r#"[{"instruction": "i", "input": "", "output": {"text": "o"}}]"#,
            "output",
        ),
    ];
    for (file, text, field) in cases {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), file, text.as_bytes());
        // load_dir refuses a source whose every record failed; load_files shows the quarantine.
        let all_bad = load_dir(d.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(all_bad.contains("every one of the 1 records"), "{all_bad}");
        let found = discover(d.path()).unwrap();
        let out = load_files(&found.files, &LoadOptions::default()).unwrap();
        out.check_reconciled().unwrap();
        assert_eq!(out.quarantine.len(), 1, "{file}");
        let q = &out.quarantine[0];
        assert_eq!(
            (q.file.as_str(), q.line, q.field.as_str()),
            (file, 1, field),
            "{}",
            q.reason
        );
        assert!(q.reason.starts_with("expected"), "{}", q.reason);
        assert_eq!(q.raw, text.trim_start_matches('[').trim_end_matches(']'));
        let err = load_dir(d.path(), &fail()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{file}:1: field `{field}`: expected")),
            "{err}"
        );
    }
    drop(dir);
}

#[test]
fn parquet_rows_read_like_json() {
    // The Hugging Face conversion of tatsu-lab/alpaca is Parquet with an extra `text` column.
    let dir = tempfile::tempdir().unwrap();
    let mut df = df!(
        "instruction" => ["Add 2 and 3.", "Name a colour."],
        "input" => ["", ""],
        "output" => ["5", "Blue"],
        "text" => ["…", "…"],
    )
    .unwrap();
    let p = dir.path().join("alpaca/train-00000-of-00001.parquet");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(&p).unwrap())
        .finish(&mut df)
        .unwrap();
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    out.check_reconciled().unwrap();
    let rows = from_dataframe(&out.table).unwrap();
    assert_eq!(rows[1].id, "alpaca/train-00000-of-00001/2");
    assert_eq!(rows[1].turns[1].text, "Blue");
    assert_eq!(out.files[0].layout, "parquet");
}

#[test]
fn duplicate_native_ids_are_made_unique() {
    let dir = tempfile::tempdir().unwrap();
    let conv = r#"{"id": "same", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}"#;
    write(
        dir.path(),
        "sharegpt/a.json",
        format!("[{conv},{conv},{conv}]").as_bytes(),
    );
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    let rows = from_dataframe(&out.table).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["sharegpt/same", "sharegpt/same#2", "sharegpt/same#3"]);
    assert_eq!(out.renamed_ids, 2);
}

#[test]
fn unknown_files_are_ignored_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "README.md", b"hi");
    write(dir.path(), "hh/LICENSE", b"mit");
    write(dir.path(), "hh/base/test.jsonl", HH_LINE.as_bytes());
    let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(out.ignored, ["README.md", "hh/LICENSE"]);
    assert_eq!(out.table.height(), 2);
}
