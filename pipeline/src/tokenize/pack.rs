//! Packing examples into fixed-length rows, or padding one example per row.
//!
//! Packing is best-fit decreasing bin packing: examples, longest first, go into the open row with
//! the least room that still fits them, or into a new row. Examples are never split across rows,
//! and every token carries a segment id (1, 2, … within its row; 0 for padding), so the trainer
//! can stop attention at example boundaries and restart positions.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Encoded;

/// How rows are formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Several examples per `seq_len` row, separated by segment ids.
    #[default]
    Pack,
    /// One example per row, padded to `seq_len` (as in Alpaca).
    Pad,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pack" => Ok(Mode::Pack),
            "pad" => Ok(Mode::Pad),
            o => Err(format!("mode must be `pack` or `pad`, not {o:?}")),
        }
    }
}

/// Rows of `seq_len` tokens, stored flat (row `r` is `[r*seq_len, (r+1)*seq_len)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows {
    pub seq_len: usize,
    pub tokens: Vec<u32>,
    pub loss_mask: Vec<u8>,
    pub segment_ids: Vec<u32>,
}

impl Rows {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.tokens.len().checked_div(self.seq_len).unwrap_or(0)
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    /// Tokens that belong to an example (segment id > 0).
    pub fn real_tokens(&self) -> usize {
        self.segment_ids.iter().filter(|&&s| s != 0).count()
    }
}

/// Assigns examples (given by length, each ≤ `seq_len`) to rows; returns, per row, the indices
/// of its examples in ascending order. Deterministic for a given input.
pub fn best_fit_decreasing(lengths: &[usize], seq_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // (room left, bin index) of bins with room.
    let mut open: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let len = lengths[i];
        let best = open.range((len, 0)..).next().copied();
        match best {
            Some((room, b)) => {
                open.remove(&(room, b));
                bins[b].push(i);
                if room > len {
                    open.insert((room - len, b));
                }
            }
            None => {
                bins.push(vec![i]);
                if seq_len > len {
                    open.insert((seq_len - len, bins.len() - 1));
                }
            }
        }
    }
    for b in &mut bins {
        b.sort_unstable();
    }
    bins
}

/// Which examples each row holds, given the examples' lengths (each ≤ `seq_len`): best-fit
/// decreasing bins in pack mode, one example per row in pad mode. Row `r` of the laid-out data is
/// `push_row(.., &plan[r], ..)`.
pub fn plan(lengths: &[usize], seq_len: usize, mode: Mode) -> Vec<Vec<usize>> {
    match mode {
        Mode::Pack => best_fit_decreasing(lengths, seq_len),
        Mode::Pad => (0..lengths.len()).map(|i| vec![i]).collect(),
    }
}

/// Appends one row to `rows`: the examples of `group` in order, with segment ids 1, 2, …, then
/// padding (`pad_id`, no loss, segment 0) up to `rows.seq_len`. The examples must fit.
pub fn push_row(rows: &mut Rows, examples: &[Encoded], group: &[usize], pad_id: u32) {
    let start = rows.tokens.len();
    for (k, &i) in group.iter().enumerate() {
        let e = &examples[i];
        rows.tokens.extend_from_slice(&e.tokens);
        rows.loss_mask.extend_from_slice(&e.loss);
        rows.segment_ids
            .extend(std::iter::repeat_n(k as u32 + 1, e.tokens.len()));
    }
    let used = rows.tokens.len() - start;
    debug_assert!(
        used <= rows.seq_len,
        "a row overflows: {used} > {}",
        rows.seq_len
    );
    let fill = rows.seq_len.saturating_sub(used);
    rows.tokens.extend(std::iter::repeat_n(pad_id, fill));
    rows.loss_mask.extend(std::iter::repeat_n(0, fill));
    rows.segment_ids.extend(std::iter::repeat_n(0, fill));
}

impl Rows {
    /// Empty rows of `seq_len`, with room for `n` rows.
    pub fn with_capacity(seq_len: usize, n: usize) -> Self {
        Rows {
            seq_len,
            tokens: Vec::with_capacity(n * seq_len),
            loss_mask: Vec::with_capacity(n * seq_len),
            segment_ids: Vec::with_capacity(n * seq_len),
        }
    }
}

/// Lays out all examples into rows in memory (for tests and tools; `koala tokenize` streams rows
/// to the shard files instead). Each example must be at most `seq_len` long (truncate first).
pub fn layout(examples: &[Encoded], seq_len: usize, mode: Mode, pad_id: u32) -> Rows {
    let lengths: Vec<usize> = examples.iter().map(|e| e.tokens.len()).collect();
    let groups = plan(&lengths, seq_len, mode);
    let mut rows = Rows::with_capacity(seq_len, groups.len());
    for g in &groups {
        push_row(&mut rows, examples, g, pad_id);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ex(len: usize, first: u32) -> Encoded {
        Encoded {
            tokens: (first..first + len as u32).collect(),
            loss: (0..len).map(|i| (i % 2) as u8).collect(),
        }
    }

    #[test]
    fn packs_and_pads_with_segment_ids() {
        let exs = vec![ex(3, 100), ex(5, 200), ex(2, 300)];
        let rows = layout(&exs, 8, Mode::Pack, 0);
        // 5 and 3 fill one row; 2 goes alone.
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows.tokens[..8], &[100, 101, 102, 200, 201, 202, 203, 204]);
        assert_eq!(&rows.segment_ids[..8], &[1, 1, 1, 2, 2, 2, 2, 2]);
        assert_eq!(&rows.tokens[8..], &[300, 301, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&rows.segment_ids[8..], &[1, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&rows.loss_mask[8..], &[0, 1, 0, 0, 0, 0, 0, 0]);
        let rows = layout(&exs, 8, Mode::Pad, 9);
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows.tokens[..8], &[100, 101, 102, 9, 9, 9, 9, 9]);
        assert_eq!(rows.real_tokens(), 10);
    }

    proptest! {
        /// Every example lands in exactly one row, intact and contiguous, and no row overflows.
        #[test]
        fn packing_keeps_every_example_whole(lens in proptest::collection::vec(1usize..=64, 0..200)) {
            let seq_len = 64;
            let exs: Vec<Encoded> = lens.iter().enumerate().map(|(i, &l)| ex(l, (i as u32) << 8)).collect();
            let bins = best_fit_decreasing(&lens, seq_len);
            let mut seen = vec![0; lens.len()];
            for b in &bins {
                prop_assert!(b.iter().map(|&i| lens[i]).sum::<usize>() <= seq_len);
                for &i in b { seen[i] += 1; }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
            let rows = layout(&exs, seq_len, Mode::Pack, u32::MAX);
            prop_assert_eq!(rows.real_tokens(), lens.iter().sum::<usize>());
            // Reassemble each segment and find it among the examples.
            let mut found = 0;
            for r in 0..rows.len() {
                let seg = &rows.segment_ids[r * seq_len..(r + 1) * seq_len];
                let tok = &rows.tokens[r * seq_len..(r + 1) * seq_len];
                let mut s = 1;
                while let Some(start) = seg.iter().position(|&x| x == s) {
                    let end = seg.iter().rposition(|&x| x == s).unwrap() + 1;
                    let i = (tok[start] >> 8) as usize;
                    prop_assert_eq!(&tok[start..end], &exs[i].tokens[..]);
                    found += 1;
                    s += 1;
                }
            }
            prop_assert_eq!(found, lens.len());
        }
    }
}
