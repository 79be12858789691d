//! Zero-copy, thread-safe access to the `turns` list column, for stages whose per-row work
//! (hashing, language detection, HTML conversion) is plain Rust run in parallel with rayon.
use polars::prelude::*;

use crate::error::{Error, Result};
use crate::schema::col;

/// Most rows one rayon task takes in the stages' per-row loops. The expensive rows are often
/// clustered (after `select`, all ShareGPT rows come first, and only they get HTML conversion or
/// language detection); rayon's adaptive splitting stops splitting a range that was never
/// stolen, so without a cap one thread ended up with every ShareGPT row while the other idled.
pub const ROW_TASK: usize = 256;

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
    /// Views the `turns` column of `df` without copying any text: the list column is brought
    /// to one chunk (a no-op for a table that already is one, as `select`'s sort leaves it in
    /// [`crate::stages::run::curate`]), and its inner struct fields are used in place, at the
    /// list's own offsets.
    pub fn new(df: &DataFrame) -> Result<Self> {
        let list = df.column(col::TURNS)?.list()?.rechunk();
        let mut offsets = Vec::with_capacity(list.len() + 1);
        for arr in list.downcast_iter() {
            offsets.extend(arr.offsets().buffer().iter().map(|&o| o as usize));
        }
        if offsets.is_empty() {
            offsets.push(0);
        }
        if offsets.len() != list.len() + 1 {
            return Err(Error::Invariant(format!(
                "turns column: {} offsets for {} rows",
                offsets.len(),
                list.len()
            )));
        }
        let inner = list.get_inner();
        let st = inner.struct_()?;
        let field = |name: &str| -> Result<StringChunked> {
            Ok(st.field_by_name(name)?.str()?.rechunk().into_owned())
        };
        let (roles, texts, prefs) = (
            field(col::ROLE)?,
            field(col::TEXT)?,
            field(col::PREFERENCE)?,
        );
        let end = offsets[offsets.len() - 1];
        if roles.len() < end || texts.len() < end || prefs.len() < end {
            return Err(Error::Invariant(format!(
                "turns column: offsets reach {end}, the turn fields hold {}",
                texts.len()
            )));
        }
        Ok(TurnsView {
            offsets,
            roles,
            texts,
            prefs,
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
        self.offsets[self.offsets.len() - 1] - self.offsets[0]
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
        let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        let s = crate::schema::turns_series(roles, texts, prefs, &lens)?;
        Ok(s.into_column())
    }
}
