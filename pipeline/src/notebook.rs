//! Notebook helpers (evcxr): tables and reports shown inline, and frames carried across cells.
//!
//! evcxr shows rich output for anything printed between `EVCXR_BEGIN_CONTENT <mime>` and
//! `EVCXR_END_CONTENT`, and for a cell's value whose type has an `evcxr_display` method (with the
//! `evcxr` feature, [`crate::stages::report::Report`] has one: the funnel, the drops by reason and
//! the composition chart). Outside evcxr the same calls just print the HTML.
//!
//! **Frames across cells.** evcxr links a cell's dependencies into that cell, and polars caches a
//! frame's schema in a hash map whose seed is a per-copy global (evcxr issue #311), so a frame
//! made in one cell fails its column lookups in the next ("lacks column `id`"). [`reseat`]
//! rebuilds the frame around the same columns (no data is copied), and the pipeline's entry
//! points ([`crate::stages::run::curate`]) reseat their input themselves.
//!
//! ```
//! use koala_pipeline::notebook::{html_table, reseat};
//! use koala_pipeline::polars::prelude::*;
//! let df = df!("source" => ["hc3", "oig"], "text" => ["<b>hi</b>", "a long text"]).unwrap();
//! let df = reseat(&df).unwrap();
//! let html = html_table(&df, 1, 4);
//! assert!(html.contains("&lt;b&gt;") && html.contains("1 of 2 rows"), "{html}");
//! ```
pub use koala_chart::display::{escape, evcxr_rich};
use polars::prelude::*;

use crate::error::Result;

/// The same frame around the same columns, with a fresh schema cache: what a frame made in an
/// earlier evcxr cell needs before its columns are looked up by name.
pub fn reseat(df: &DataFrame) -> Result<DataFrame> {
    Ok(DataFrame::new(df.height(), df.columns().to_vec())?)
}

/// `s` cut to `max_chars` characters, with `…` when cut.
fn cut(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// An HTML table of the first `max_rows` rows of `df`, each cell cut to `max_chars` characters,
/// with a caption that gives the row and column counts. Everything is escaped.
pub fn html_table(df: &DataFrame, max_rows: usize, max_chars: usize) -> String {
    let shown = df.height().min(max_rows);
    let mut h = format!(
        "<table><caption style=\"text-align:left\">{shown} of {} rows, {} columns</caption><thead><tr>",
        df.height(),
        df.width()
    );
    for c in df.columns() {
        h.push_str(&format!(
            "<th>{}<br><small>{}</small></th>",
            escape(c.name()),
            escape(&c.dtype().to_string())
        ));
    }
    h.push_str("</tr></thead><tbody>");
    for r in 0..shown {
        h.push_str("<tr>");
        for c in df.columns() {
            let text = match c.get(r) {
                Ok(AnyValue::String(s)) => s.to_string(),
                Ok(AnyValue::StringOwned(s)) => s.to_string(),
                Ok(v) => v.to_string(),
                Err(e) => format!("({e})"),
            };
            h.push_str(&format!(
                "<td style=\"text-align:left;vertical-align:top\">{}</td>",
                escape(&cut(&text, max_chars))
            ));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// Shows the first 10 rows of `df` in evcxr: an HTML table (long text cut at 200 characters) in
/// Jupyter, polars' own text table in the REPL.
pub fn show(df: &DataFrame) {
    evcxr_rich(&df.head(Some(10)).to_string(), &html_table(df, 10, 200));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_escapes_cuts_and_counts() {
        let df = df!(
            "id" => ["a", "b", "c"],
            "text" => ["<script>x</script>", "ééééééé", "plain"]
        )
        .unwrap();
        let h = html_table(&df, 2, 5);
        assert!(h.contains("2 of 3 rows, 2 columns"), "{h}");
        assert!(h.contains("&lt;scri…"), "{h}");
        assert!(h.contains("ééééé…"), "{h}");
        assert!(!h.contains("<script>") && !h.contains("plain"), "{h}");
    }

    #[test]
    fn reseat_keeps_the_data() {
        let df = df!("source" => ["hc3", "oig"], "n" => [1i64, 2]).unwrap();
        let again = reseat(&df).unwrap();
        assert!(again.equals(&df));
        assert_eq!(again.column("n").unwrap().i64().unwrap().get(1), Some(2));
    }
}
