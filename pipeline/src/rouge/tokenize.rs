//! The tokenizer of Google's `rouge_score` 0.1.2 with `use_stemmer=False`.
//!
//! Python does `text.lower()`, replaces every run of characters outside `[a-z0-9]` with a space,
//! splits on whitespace and keeps the tokens matching `^[a-z0-9]+$`. The result is the maximal runs
//! of ASCII `[a-z0-9]` in the lowercased text. Lowercasing is Unicode's full mapping (as Python's
//! `str.lower`); only two non-ASCII characters lowercase to ASCII letters: `İ` (U+0130, to `i` plus
//! a combining dot, which then splits the token) and the Kelvin sign (U+212A, to `k`). Rust's
//! `char::to_lowercase` gives the same mappings, so non-ASCII characters go through it.

/// Calls `f` with each token of `text`, as `rouge_score`'s tokenizer yields them.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    let mut cur = String::new();
    let flush = |cur: &mut String, f: &mut dyn FnMut(&str)| {
        if !cur.is_empty() {
            f(cur);
            cur.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            let l = c.to_ascii_lowercase();
            if l.is_ascii_lowercase() || l.is_ascii_digit() {
                cur.push(l);
            } else {
                flush(&mut cur, &mut f);
            }
        } else {
            for l in c.to_lowercase() {
                if l.is_ascii_lowercase() || l.is_ascii_digit() {
                    cur.push(l);
                } else {
                    flush(&mut cur, &mut f);
                }
            }
        }
    }
    flush(&mut cur, &mut f);
}

/// The tokens of `text`, as `rouge_score.tokenize.tokenize(text, None)` returns them.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, |t| out.push(t.to_owned()));
    out
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn splits_on_everything_but_ascii_alnum() {
        assert_eq!(
            tokenize("Hello, World! It's 2023."),
            ["hello", "world", "it", "s", "2023"]
        );
        assert_eq!(tokenize("café naïve"), ["caf", "na", "ve"]);
        assert!(tokenize("... !!! —").is_empty());
        assert!(tokenize("").is_empty());
        // U+0130 lowercases to "i" + U+0307; the Kelvin sign to "k".
        assert_eq!(
            tokenize("\u{130}stanbul \u{212a}elvin"),
            ["i", "stanbul", "kelvin"]
        );
        assert_eq!(tokenize("ＡＢＣ ١٢٣"), Vec::<String>::new());
    }
}
