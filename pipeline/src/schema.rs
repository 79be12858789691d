//! The one conversation schema that every loader produces and every stage consumes.
//!
//! Columns (see `docs/schema.md` for the full contract):
//!
//! | column       | Polars type                                                  | meaning |
//! |--------------|--------------------------------------------------------------|---------|
//! | `id`         | `String`                                                     | stable id: `{source}/{native id or file position}[/{sub}]` |
//! | `source`     | `String`                                                     | `sharegpt`, `hc3`, `oig`, `alpaca`, `hh`, `webgpt`, `summarize` |
//! | `split`      | `String`                                                     | `train`, `test`, `validation` or `unsplit` (the dataset has none) |
//! | `turns`      | `List(Struct{role: String, text: String, preference: String})` | the dialogue, in order |
//! | `src_file`   | `String`                                                     | input file the row came from, as given to the loader |
//! | `src_record` | `UInt64`                                                     | 1-based line (JSONL) or element/row index (JSON list, Parquet) |
//! | `meta`       | `String`                                                     | a JSON object of source-specific facts (scores, answer kind, …) |
//!
//! `role` is one of `user`, `assistant`, `system`; `preference` one of `positive`, `negative`,
//! `unrated`.
//!
//! # Example
//! ```
//! use koala_pipeline::schema::{Conversation, Turn, to_dataframe, from_dataframe};
//! let conv = Conversation {
//!     id: "alpaca/1".into(),
//!     source: "alpaca".into(),
//!     split: "unsplit".into(),
//!     turns: vec![Turn::user("Say hi"), Turn::assistant("Hi!")],
//!     src_file: "alpaca_data.json".into(),
//!     src_record: 1,
//!     meta: "{}".into(),
//! };
//! let df = to_dataframe(std::slice::from_ref(&conv)).unwrap();
//! assert_eq!(df.height(), 1);
//! assert_eq!(from_dataframe(&df).unwrap(), vec![conv]);
//! ```
use polars::prelude::*;

/// The conversation types live in the polars-free `koala-format` crate; this table is built
/// from them.
pub use koala_format::conversation::{Conversation, Preference, Role, Turn};

use crate::error::{Error, Result};

/// Column names, so that stages never spell them by hand.
pub mod col {
    pub const ID: &str = "id";
    pub const SOURCE: &str = "source";
    pub const SPLIT: &str = "split";
    pub const TURNS: &str = "turns";
    pub const SRC_FILE: &str = "src_file";
    pub const SRC_RECORD: &str = "src_record";
    pub const META: &str = "meta";
    /// Fields of the `turns` struct.
    pub const ROLE: &str = "role";
    pub const TEXT: &str = "text";
    pub const PREFERENCE: &str = "preference";
}

/// The dtype of one element of `turns`.
pub fn turn_dtype() -> DataType {
    DataType::Struct(vec![
        Field::new(col::ROLE.into(), DataType::String),
        Field::new(col::TEXT.into(), DataType::String),
        Field::new(col::PREFERENCE.into(), DataType::String),
    ])
}

/// The Polars schema of the conversation table, in column order.
pub fn conversation_schema() -> Schema {
    Schema::from_iter([
        Field::new(col::ID.into(), DataType::String),
        Field::new(col::SOURCE.into(), DataType::String),
        Field::new(col::SPLIT.into(), DataType::String),
        Field::new(col::TURNS.into(), DataType::List(Box::new(turn_dtype()))),
        Field::new(col::SRC_FILE.into(), DataType::String),
        Field::new(col::SRC_RECORD.into(), DataType::UInt64),
        Field::new(col::META.into(), DataType::String),
    ])
}

/// The `turns` column from flat per-turn fields and the number of turns of each row (in order):
/// one struct array of all turns and one list array over it, with no per-row allocation.
pub(crate) fn turns_series(
    roles: Vec<&str>,
    texts: Vec<&str>,
    prefs: Vec<&str>,
    row_lens: &[usize],
) -> Result<Series> {
    let n = texts.len();
    let fields = [
        Series::new(col::ROLE.into(), roles),
        Series::new(col::TEXT.into(), texts),
        Series::new(col::PREFERENCE.into(), prefs),
    ];
    let all = StructChunked::from_series(col::TURNS.into(), n, fields.iter())?
        .into_series()
        .rechunk();
    let bad = |m: String| Error::Invariant(format!("turns column: {m}"));
    let mut offsets: Vec<i64> = Vec::with_capacity(row_lens.len() + 1);
    let mut off = 0i64;
    offsets.push(0);
    for &len in row_lens {
        off += len as i64;
        offsets.push(off);
    }
    if off as usize != n {
        return Err(bad(format!("row lengths add up to {off}, {n} turns given")));
    }
    let values = all
        .chunks()
        .first()
        .cloned()
        .ok_or_else(|| bad("no struct chunk".into()))?;
    let offsets = polars_arrow::offset::OffsetsBuffer::<i64>::try_from(offsets)
        .map_err(|e| bad(e.to_string()))?;
    let arrow_dtype =
        polars_arrow::array::ListArray::<i64>::default_datatype(values.dtype().clone());
    let arr = polars_arrow::array::ListArray::<i64>::try_new(arrow_dtype, offsets, values, None)
        .map_err(|e| bad(e.to_string()))?;
    let dtype = DataType::List(Box::new(all.dtype().clone()));
    // SAFETY: the list's values are the only chunk of `all`, whose dtype is the inner dtype.
    let list = unsafe {
        ListChunked::from_chunks_and_dtype(col::TURNS.into(), vec![Box::new(arr)], dtype)
    };
    let want = DataType::List(Box::new(turn_dtype()));
    let mut s = list.into_series();
    if s.dtype() != &want {
        s = s.cast(&want)?;
    }
    Ok(s)
}

/// Builds the conversation table from Rust values, in the given order.
pub fn to_dataframe(convs: &[Conversation]) -> Result<DataFrame> {
    let n_turns: usize = convs.iter().map(|c| c.turns.len()).sum();
    let mut roles = Vec::with_capacity(n_turns);
    let mut texts = Vec::with_capacity(n_turns);
    let mut prefs = Vec::with_capacity(n_turns);
    for t in convs.iter().flat_map(|c| &c.turns) {
        roles.push(t.role.as_str());
        texts.push(t.text.as_str());
        prefs.push(t.preference.as_str());
    }
    let lens: Vec<usize> = convs.iter().map(|c| c.turns.len()).collect();
    let turns = turns_series(roles, texts, prefs, &lens)?;
    let df = DataFrame::new_infer_height(vec![
        Column::new(
            col::ID.into(),
            convs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            col::SOURCE.into(),
            convs.iter().map(|c| c.source.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            col::SPLIT.into(),
            convs.iter().map(|c| c.split.as_str()).collect::<Vec<_>>(),
        ),
        turns.into_column(),
        Column::new(
            col::SRC_FILE.into(),
            convs
                .iter()
                .map(|c| c.src_file.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            col::SRC_RECORD.into(),
            convs.iter().map(|c| c.src_record).collect::<Vec<_>>(),
        ),
        Column::new(
            col::META.into(),
            convs.iter().map(|c| c.meta.as_str()).collect::<Vec<_>>(),
        ),
    ])?;
    Ok(df)
}

/// Checks that a table has the documented columns and types (extra columns are allowed).
pub fn validate(df: &DataFrame) -> Result<()> {
    let schema = df.schema();
    for (name, dtype) in conversation_schema().iter() {
        match schema.get(name) {
            None => {
                return Err(Error::Invariant(format!(
                    "conversation table lacks column `{name}`"
                )));
            }
            Some(d) if d != dtype => {
                return Err(Error::Invariant(format!(
                    "column `{name}` has type {d}, the schema says {dtype}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn str_at<'a>(ca: &'a StringChunked, i: usize, column: &str) -> Result<&'a str> {
    ca.get(i)
        .ok_or_else(|| Error::Invariant(format!("null in column `{column}` at row {i}")))
}

/// Reads the conversation table back into Rust values (row order kept).
pub fn from_dataframe(df: &DataFrame) -> Result<Vec<Conversation>> {
    validate(df)?;
    let ids = df.column(col::ID)?.str()?;
    let sources = df.column(col::SOURCE)?.str()?;
    let splits = df.column(col::SPLIT)?.str()?;
    let files = df.column(col::SRC_FILE)?.str()?;
    let records = df.column(col::SRC_RECORD)?.u64()?;
    let metas = df.column(col::META)?.str()?;
    let turns = df.column(col::TURNS)?.list()?;
    let mut out = Vec::with_capacity(df.height());
    for (i, list) in turns.amortized_iter().enumerate() {
        let mut conv_turns = Vec::new();
        if let Some(s) = list {
            let st = s.as_ref().struct_()?;
            let roles = st.field_by_name(col::ROLE)?;
            let texts = st.field_by_name(col::TEXT)?;
            let prefs = st.field_by_name(col::PREFERENCE)?;
            let (roles, texts, prefs) = (roles.str()?, texts.str()?, prefs.str()?);
            for k in 0..st.len() {
                let bad = |m: String| Error::Invariant(format!("row {i}, turn {k}: {m}"));
                conv_turns.push(Turn {
                    role: str_at(roles, k, col::ROLE)?.parse().map_err(bad)?,
                    text: str_at(texts, k, col::TEXT)?.to_string(),
                    preference: str_at(prefs, k, col::PREFERENCE)?.parse().map_err(bad)?,
                });
            }
        }
        out.push(Conversation {
            id: str_at(ids, i, col::ID)?.to_string(),
            source: str_at(sources, i, col::SOURCE)?.to_string(),
            split: str_at(splits, i, col::SPLIT)?.to_string(),
            turns: conv_turns,
            src_file: str_at(files, i, col::SRC_FILE)?.to_string(),
            src_record: records.get(i).ok_or_else(|| {
                Error::Invariant(format!("null in column `src_record` at row {i}"))
            })?,
            meta: str_at(metas, i, col::META)?.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Conversation> {
        vec![
            Conversation {
                id: "hh/train/1".into(),
                source: "hh".into(),
                split: "train".into(),
                turns: vec![
                    Turn::user("Hi"),
                    Turn::assistant_with("Hello, how can I help?", Preference::Negative),
                ],
                src_file: "hh/train.jsonl.gz".into(),
                src_record: 7,
                meta: r#"{"pair":"rejected"}"#.into(),
            },
            Conversation {
                id: "x/2".into(),
                source: "x".into(),
                split: "unsplit".into(),
                turns: vec![],
                src_file: "f".into(),
                src_record: 1,
                meta: "{}".into(),
            },
            Conversation {
                id: "x/3".into(),
                source: "x".into(),
                split: "test".into(),
                turns: vec![Turn::system("sys"), Turn::user("q"), Turn::assistant("a")],
                src_file: "f".into(),
                src_record: 2,
                meta: "{}".into(),
            },
        ]
    }

    #[test]
    fn round_trip_keeps_everything() {
        let convs = sample();
        let df = to_dataframe(&convs).unwrap();
        assert_eq!(df.schema().as_ref(), &conversation_schema());
        assert_eq!(from_dataframe(&df).unwrap(), convs);
    }

    #[test]
    fn empty_table_has_the_schema() {
        let df = to_dataframe(&[]).unwrap();
        assert_eq!(df.height(), 0);
        validate(&df).unwrap();
    }

    #[test]
    fn validate_names_the_missing_column() {
        let df = to_dataframe(&sample()).unwrap().drop(col::META).unwrap();
        let err = validate(&df).unwrap_err().to_string();
        assert!(err.contains("`meta`"), "{err}");
    }
}
