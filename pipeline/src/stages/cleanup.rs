//! Stage 1, ShareGPT cleanup: HTML → Markdown (with `htmd`), the "Copy code" UI residue, the
//! origin-keyword filter, empty turns and conversations without an assistant reply.
//!
//! Rules, in order, per conversation:
//! 1. For sources in [`CleanupConfig::sources`] (ShareGPT by default): a turn that contains an
//!    HTML tag is converted to Markdown (code blocks become fenced blocks, lists stay lists, links
//!    stay `[text](href)`); in assistant turns `"\nCopy code\n"` becomes `"\n\n"`.
//! 2. For those sources, a conversation whose any turn contains one of
//!    [`CleanupConfig::origin_keywords`] (lowercased substring, as Koala's `process_chat_data.py`)
//!    is dropped: reason `origin_keyword`, details `{"keyword", "turn"}`.
//! 3. For every source: turns that are empty after trimming are removed (an edit, not a drop).
//! 4. For every source: a conversation with no assistant turn left is dropped: reason
//!    `no_assistant_reply`.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::cleanup::{html_to_markdown, strip_copy_code};
//! let md = html_to_markdown("<p>Run <a href=\"https://x.org\">this</a>:</p><pre><code>ls -l\n</code></pre>");
//! assert!(md.contains("[this](https://x.org)"));
//! assert!(md.contains("```\nls -l\n```"));
//! assert_eq!(strip_copy_code("Here:\nCopy code\nls"), "Here:\n\nls");
//! ```
use std::sync::LazyLock;

use indicatif::ProgressBar;
use polars::prelude::*;
use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::view::TurnsView;
use super::{Stage, Verdict, add_verdicts, covers, details};
use crate::error::Result;
use crate::schema::col;

/// Koala's list of words that reveal the assistant's origin (`process_chat_data.py`).
pub const KOALA_ORIGIN_KEYWORDS: [&str; 8] = [
    "openai", "chatgpt", "gpt-3", "chadgpt", "gpt3", "chat-gpt", "open-ai", "open ai",
];

/// Configuration of [`Cleanup`] (TOML table `[cleanup]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Sources that get the ShareGPT rules (HTML, Copy code, origin keywords); `"*"` = all.
    pub sources: Vec<String>,
    /// Convert turns that contain HTML tags to Markdown.
    pub html_to_markdown: bool,
    /// Replace `"\nCopy code\n"` by `"\n\n"` in assistant turns.
    pub strip_copy_code: bool,
    /// Lowercased substrings whose presence in any turn drops the conversation.
    pub origin_keywords: Vec<String>,
    /// Remove turns that are empty after trimming whitespace.
    pub drop_empty_turns: bool,
    /// Drop conversations without a (non-empty) assistant turn.
    pub require_assistant_reply: bool,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            sources: vec!["sharegpt".into()],
            html_to_markdown: true,
            strip_copy_code: true,
            origin_keywords: KOALA_ORIGIN_KEYWORDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            drop_empty_turns: true,
            require_assistant_reply: true,
        }
    }
}

static HTML_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)</?(p|div|pre|code|ol|ul|li|a|br|h[1-6]|table|thead|tbody|tr|td|th|strong|em|b|i|span|blockquote|hr)(\s[^>]*)?/?>")
        .expect("static regex")
});

/// ShareGPT's code-block header: `<div class="flex items-center …"><span>python</span><button>Copy code</button></div>`.
static CODE_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?s)<div class="[^"]*\bitems-center\b[^"]*">.*?</div>"#).expect("static regex")
});
static DIV_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)</?div(\s[^>]*)?>").expect("static regex"));

thread_local! {
    static CONVERTER: htmd::HtmlToMarkdown = htmd::HtmlToMarkdown::builder()
        .options(htmd::options::Options {
            bullet_list_marker: htmd::options::BulletListMarker::Dash,
            ul_bullet_spacing: 1,
            ol_number_spacing: 1,
            ..Default::default()
        })
        .build();
}

/// True when `text` contains an HTML tag that the converter understands.
pub fn looks_like_html(text: &str) -> bool {
    HTML_TAG.is_match(text)
}

/// HTML → Markdown with `htmd`: fenced code blocks, `-` bullets, inline links. Text that htmd
/// cannot parse is returned unchanged.
///
/// ShareGPT's scraped markup is simplified first: the code-block header (language label and
/// "Copy code" button) is removed and `<div>` wrappers are unwrapped, so that
/// `<pre><div><div><code class="language-x">` becomes a fenced `x` block.
pub fn html_to_markdown(html: &str) -> String {
    super::html::to_markdown_fast(html).unwrap_or_else(|| html_to_markdown_htmd(html))
}

/// The reference path of [`html_to_markdown`]: the regex pre-pass, then htmd.
pub(crate) fn html_to_markdown_htmd(html: &str) -> String {
    let simple = CODE_HEADER.replace_all(html, "");
    let simple = DIV_TAG.replace_all(&simple, "");
    CONVERTER
        .with(|c| c.convert(&simple))
        .unwrap_or_else(|_| html.to_string())
}

/// Koala's "Copy code" fix: `"\nCopy code\n"` → `"\n\n"`.
pub fn strip_copy_code(text: &str) -> String {
    text.replace("\nCopy code\n", "\n\n")
}

/// The first keyword of `keywords` (already lowercase) found in `text`, case-insensitively.
pub fn find_keyword<'k>(keywords: &'k [String], text: &str) -> Option<&'k str> {
    let lower = text.to_lowercase();
    keywords
        .iter()
        .find(|k| lower.contains(k.as_str()))
        .map(|k| k.as_str())
}

/// Finds origin keywords in one pass over the text. ASCII keywords (Koala's list) are matched
/// ASCII-case-insensitively by Aho-Corasick without lowercasing the text; a list with a non-ASCII
/// keyword falls back to [`find_keyword`] (Unicode lowercase, then substring search). The two agree
/// except on the few non-ASCII letters whose Unicode lowercase is ASCII (the Kelvin sign).
struct KeywordMatcher {
    keywords: Vec<String>,
    ac: Option<aho_corasick::AhoCorasick>,
}

impl KeywordMatcher {
    fn new(keywords: &[String]) -> Self {
        let ac = if keywords.iter().all(|k| k.is_ascii()) && !keywords.is_empty() {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(keywords)
                .ok()
        } else {
            None
        };
        KeywordMatcher {
            keywords: keywords.to_vec(),
            ac,
        }
    }

    /// The first keyword *of the list* found in `text` (as [`find_keyword`]).
    fn find(&self, text: &str) -> Option<&str> {
        match &self.ac {
            Some(ac) => ac
                .find_overlapping_iter(text)
                .map(|m| m.pattern().as_usize())
                .min()
                .map(|i| self.keywords[i].as_str()),
            None if self.keywords.is_empty() => None,
            None => find_keyword(&self.keywords, text),
        }
    }
}

/// One cleaned row: the kept inner turn positions (with new text where it changed), and the verdict.
type Cleaned = (Vec<(usize, Option<String>)>, Verdict);

/// The cleanup stage.
pub struct Cleanup {
    config: CleanupConfig,
    keywords: KeywordMatcher,
}

impl Cleanup {
    /// A cleanup stage; keywords are lowercased once here.
    pub fn new(mut config: CleanupConfig) -> Self {
        for k in &mut config.origin_keywords {
            *k = k.to_lowercase();
        }
        let keywords = KeywordMatcher::new(&config.origin_keywords);
        Cleanup { config, keywords }
    }

    /// Cleans one conversation: the kept inner positions (with rewritten text where it changed)
    /// and the verdict.
    fn clean_row(&self, view: &TurnsView, row: usize, sharegpt_rules: bool) -> Cleaned {
        let c = &self.config;
        let mut kept = Vec::new();
        let mut has_reply = false;
        for (turn_idx, k) in view.range(row).enumerate() {
            let t = view.turn(k);
            let mut new: Option<String> = None;
            if sharegpt_rules {
                if c.html_to_markdown && looks_like_html(t.text) {
                    new = Some(html_to_markdown(t.text));
                }
                if c.strip_copy_code && t.role == "assistant" {
                    let cur = new.as_deref().unwrap_or(t.text);
                    if cur.contains("\nCopy code\n") {
                        new = Some(strip_copy_code(cur));
                    }
                }
                if let Some(kw) = self.keywords.find(new.as_deref().unwrap_or(t.text)) {
                    let d = details(&[
                        ("keyword", kw.into()),
                        ("turn", (turn_idx as u64).into()),
                        ("role", t.role.into()),
                    ]);
                    return (Vec::new(), Some(("origin_keyword", d)));
                }
            }
            let text = new.as_deref().unwrap_or(t.text);
            if c.drop_empty_turns && text.trim().is_empty() {
                continue;
            }
            if t.role == "assistant" && !text.trim().is_empty() {
                has_reply = true;
            }
            kept.push((k, new));
        }
        if c.require_assistant_reply && !has_reply {
            let d = details(&[("turns", (kept.len() as u64).into())]);
            return (Vec::new(), Some(("no_assistant_reply", d)));
        }
        (kept, None)
    }
}

impl Stage for Cleanup {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn annotate_with_progress(
        &self,
        mut df: DataFrame,
        progress: &ProgressBar,
    ) -> Result<DataFrame> {
        let view = TurnsView::new(&df)?;
        let sources = df.column(col::SOURCE)?.str()?.rechunk().into_owned();
        let results: Vec<Cleaned> = (0..view.len())
            .into_par_iter()
            .with_max_len(super::view::ROW_TASK)
            .map(|i| {
                let rules = covers(&self.config.sources, sources.get(i).unwrap_or(""));
                let r = self.clean_row(&view, i, rules);
                progress.inc(1);
                r
            })
            .collect();
        let changed = results.iter().enumerate().any(|(i, (kept, v))| {
            v.is_none() && (kept.len() != view.range(i).len() || kept.iter().any(|k| k.1.is_some()))
        });
        let (rows, verdicts): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        if changed {
            // Dropped rows keep their original turns, so that lineage holds the input as it was.
            let rows: Vec<Vec<(usize, Option<String>)>> = rows
                .into_iter()
                .zip(&verdicts)
                .enumerate()
                .map(|(i, (r, v))| {
                    if v.is_some() {
                        view.range(i).map(|k| (k, None)).collect()
                    } else {
                        r
                    }
                })
                .collect();
            df.with_column(view.rebuild(&rows)?)?;
        }
        add_verdicts(df, &verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Conversation, Turn, from_dataframe, to_dataframe};

    fn conv(id: &str, source: &str, turns: Vec<Turn>) -> Conversation {
        Conversation {
            id: id.into(),
            source: source.into(),
            split: "unsplit".into(),
            turns,
            src_file: "f.json".into(),
            src_record: 1,
            meta: "{}".into(),
        }
    }

    #[test]
    fn html_becomes_markdown_with_code_lists_and_links() {
        let html = "<div class=\"markdown prose\"><p>Steps:</p><ol><li>Install <code>cargo</code></li>\
                    <li>Read <a href=\"https://doc.rust-lang.org\">the book</a></li></ol>\
                    <ul><li>one</li><li>two</li></ul>\
                    <pre><code class=\"language-rust\">fn main() {\n    println!(\"hi\");\n}\n</code></pre></div>";
        let md = html_to_markdown(html);
        assert!(md.contains("1. Install `cargo`"), "{md}");
        assert!(
            md.contains("2. Read [the book](https://doc.rust-lang.org)"),
            "{md}"
        );
        assert!(md.contains("- one\n- two"), "{md}");
        assert!(
            md.contains("```rust\nfn main() {\n    println!(\"hi\");\n}\n```"),
            "{md}"
        );
        assert!(!md.contains('<'), "{md}");
    }

    #[test]
    fn sharegpt_scraped_code_block() {
        let html = "<div class=\"markdown prose w-full\"><p>Reverse it:</p><pre><div class=\"bg-black mb-4 rounded-md\">\
                    <div class=\"flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans\">\
                    <span class=\"\">python</span><button class=\"flex ml-auto gap-2\">Copy code</button></div>\
                    <div class=\"p-4 overflow-y-auto\"><code class=\"!whitespace-pre hljs language-python\">xs = [<span class=\"hljs-number\">1</span>]\n\
                    xs.reverse()\n</code></div></div></pre><p>Done.</p></div>";
        let md = html_to_markdown(html);
        assert_eq!(
            md,
            "Reverse it:\n\n```python\nxs = [1]\nxs.reverse()\n```\n\nDone."
        );
    }

    #[test]
    fn keyword_matcher_agrees_with_lowercase_search() {
        let kws: Vec<String> = KOALA_ORIGIN_KEYWORDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = KeywordMatcher::new(&kws);
        assert!(m.ac.is_some());
        for text in [
            "I was trained by OpenAI.",
            "as a large language model (ChatGPT), I",
            "GPT-3 and Open AI",
            "built on gpt3 by open-ai",
            "chat-GPT and ChadGPT",
            "no origin here",
            "straße OPEN AI ünïcödé",
            "",
        ] {
            assert_eq!(m.find(text), find_keyword(&kws, text), "{text}");
        }
        // The first keyword of the list wins, not the leftmost match.
        assert_eq!(m.find("gpt-3 ... openai"), Some("openai"));
        let unicode = KeywordMatcher::new(&["über-ki".to_string()]);
        assert!(unicode.ac.is_none());
        assert_eq!(unicode.find("Die ÜBER-KI sagt"), Some("über-ki"));
    }

    #[test]
    fn plain_text_is_not_touched() {
        assert!(!looks_like_html(
            "a < b and 3 > 2, use *stars* and snake_case"
        ));
        assert!(looks_like_html("<p>x</p>"));
        assert!(looks_like_html("line<br/>break"));
    }

    #[test]
    fn copy_code_residue_only_in_assistant_turns() {
        let df = to_dataframe(&[conv(
            "sharegpt/1",
            "sharegpt",
            vec![
                Turn::user("keep\nCopy code\nthis"),
                Turn::assistant("python\nCopy code\nprint(1)"),
            ],
        )])
        .unwrap();
        let out = Cleanup::new(CleanupConfig::default()).run(df).unwrap();
        let rows = from_dataframe(&out.kept).unwrap();
        assert_eq!(rows[0].turns[0].text, "keep\nCopy code\nthis");
        assert_eq!(rows[0].turns[1].text, "python\n\nprint(1)");
    }

    #[test]
    fn origin_keywords_case_insensitive_substrings_sharegpt_only() {
        let rows = vec![
            conv(
                "sharegpt/1",
                "sharegpt",
                vec![Turn::user("Are you ChatGPT?"), Turn::assistant("Yes")],
            ),
            conv(
                "sharegpt/2",
                "sharegpt",
                vec![Turn::user("hi"), Turn::assistant("I was made by Open AI.")],
            ),
            conv(
                "sharegpt/3",
                "sharegpt",
                vec![Turn::user("hi"), Turn::assistant("hello")],
            ),
            conv(
                "hc3/1",
                "hc3",
                vec![Turn::user("what is openai"), Turn::assistant("a lab")],
            ),
        ];
        let out = Cleanup::new(CleanupConfig::default())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        let kept: Vec<String> = from_dataframe(&out.kept)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(kept, ["sharegpt/3", "hc3/1"]);
        assert_eq!(out.stats.dropped["origin_keyword"], 2);
        let d = out
            .dropped
            .column(super::super::DETAILS)
            .unwrap()
            .str()
            .unwrap();
        assert_eq!(
            d.get(0),
            Some(r#"{"keyword":"chatgpt","role":"user","turn":0}"#)
        );
        assert_eq!(
            d.get(1),
            Some(r#"{"keyword":"open ai","role":"assistant","turn":1}"#)
        );
        // Dropped rows are kept verbatim in lineage.
        let dropped = from_dataframe(&lineage_only(&out.dropped)).unwrap();
        assert_eq!(dropped[1].turns[1].text, "I was made by Open AI.");
    }

    fn lineage_only(df: &DataFrame) -> DataFrame {
        df.drop_many([
            super::super::STAGE,
            super::super::REASON,
            super::super::DETAILS,
        ])
    }

    #[test]
    fn configurable_keyword_list() {
        let cfg = CleanupConfig {
            origin_keywords: vec!["Anthropic".into()],
            ..Default::default()
        };
        let rows = vec![
            conv(
                "sharegpt/1",
                "sharegpt",
                vec![Turn::user("openai?"), Turn::assistant("y")],
            ),
            conv(
                "sharegpt/2",
                "sharegpt",
                vec![Turn::user("ANTHROPIC?"), Turn::assistant("y")],
            ),
        ];
        let out = Cleanup::new(cfg).run(to_dataframe(&rows).unwrap()).unwrap();
        assert_eq!(from_dataframe(&out.kept).unwrap()[0].id, "sharegpt/1");
    }

    #[test]
    fn empty_turns_removed_and_replyless_conversations_dropped() {
        let rows = vec![
            conv(
                "a/1",
                "alpaca",
                vec![Turn::user("q"), Turn::user("  \n"), Turn::assistant("a")],
            ),
            conv("a/2", "alpaca", vec![Turn::user("q"), Turn::assistant(" ")]),
            conv("a/3", "alpaca", vec![Turn::user("only a question")]),
            conv("a/4", "alpaca", vec![]),
        ];
        let out = Cleanup::new(CleanupConfig::default())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        let kept = from_dataframe(&out.kept).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].turns, vec![Turn::user("q"), Turn::assistant("a")]);
        assert_eq!(out.stats.dropped["no_assistant_reply"], 3);
        assert_eq!(out.stats.total, 4);
    }
}
