//! Zero-copy, thread-safe access to the `turns` list column, for stages whose per-row work
//! (hashing, language detection, HTML conversion) is plain Rust run in parallel with rayon.
use polars::prelude::*;

use crate::error::{Error, Result};
use crate::schema::col;

/// One turn, borrowed from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnRef<'a> {
    pub role: &'a str,
    pub text: &'a str,
    pub preference: &'a str,
}

/// The `turns` column of a conversation table, flattened once: row `i` owns inner positions
/// `offsets[i]..offsets[i + 1]`.
pub struct TurnsView {
    offsets: Vec<usize>,
    roles: StringChunked,
    texts: StringChunked,
    prefs: StringChunked,
}

impl TurnsView {
    /// Flattens the `turns` column of `df`.
    pub fn new(df: &DataFrame) -> Result<Self> {
        let list = df.column(col::TURNS)?.list()?.rechunk();
        let mut offsets = Vec::with_capacity(list.len() + 1);
        let mut pos = 0usize;
        offsets.push(0);
        // Inner values are re-materialised in row order, so that offsets are dense and sliced
        // or multi-chunk inputs are handled alike.
        let exploded = list.explode(ExplodeOptions {
            empty_as_null: false,
            keep_nulls: false,
        })?;
        for arr in list.downcast_iter() {
            for w in arr.offsets().buffer().windows(2) {
                pos += (w[1] - w[0]) as usize;
                offsets.push(pos);
            }
        }
        if exploded.len() != pos {
            return Err(Error::Invariant(format!(
                "turns column: {pos} turns by list lengths, {} after explode",
                exploded.len()
            )));
        }
        let st = exploded.struct_()?;
        let field = |name: &str| -> Result<StringChunked> {
            Ok(st.field_by_name(name)?.str()?.rechunk().into_owned())
        };
        Ok(TurnsView {
            offsets,
            roles: field(col::ROLE)?,
            texts: field(col::TEXT)?,
            prefs: field(col::PREFERENCE)?,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of turns.
    pub fn n_turns(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    /// The inner positions of row `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Turn at inner position `k`.
    pub fn turn(&self, k: usize) -> TurnRef<'_> {
        TurnRef {
            role: self.roles.get(k).unwrap_or(""),
            text: self.texts.get(k).unwrap_or(""),
            preference: self.prefs.get(k).unwrap_or(""),
        }
    }

    /// The turns of row `i`, in order.
    pub fn turns(&self, i: usize) -> impl Iterator<Item = TurnRef<'_>> + '_ {
        self.range(i).map(move |k| self.turn(k))
    }

    /// Rebuilds a `turns` column: for each row, the kept inner positions, with text replaced
    /// where `new_text` says so.
    pub fn rebuild(&self, rows: &[Vec<(usize, Option<String>)>]) -> Result<Column> {
        let n: usize = rows.iter().map(|r| r.len()).sum();
        let mut roles = Vec::with_capacity(n);
        let mut texts: Vec<&str> = Vec::with_capacity(n);
        let mut prefs = Vec::with_capacity(n);
        for row in rows {
            for (k, new) in row {
                let t = self.turn(*k);
                roles.push(t.role);
                texts.push(new.as_deref().unwrap_or(t.text));
                prefs.push(t.preference);
            }
        }
        let fields = [
            Series::new(col::ROLE.into(), roles),
            Series::new(col::TEXT.into(), texts),
            Series::new(col::PREFERENCE.into(), prefs),
        ];
        let all = StructChunked::from_series(col::TURNS.into(), n, fields.iter())?.into_series();
        let mut off = 0usize;
        let mut lists: Vec<Series> = Vec::with_capacity(rows.len());
        for row in rows {
            lists.push(all.slice(off as i64, row.len()));
            off += row.len();
        }
        let dtype = DataType::List(Box::new(crate::schema::turn_dtype()));
        let mut s = Series::new(col::TURNS.into(), lists);
        if s.dtype() != &dtype {
            s = s.cast(&dtype)?;
        }
        Ok(s.into_column())
    }
}
