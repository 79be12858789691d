//! sacrebleu's `13a` tokenizer and the Python string semantics it relies on.
//!
//! Written from sacrebleu 2.x (`tokenizers/tokenizer_13a.py`, `tokenizer_re.py`) and CPython's
//! `str.split()`/`str.rstrip()`/`str.lower()`; only the behaviour is reproduced, not the code.

/// Python's `str.isspace()` set (what `str.split()` with no argument splits on).
///
/// It is Rust's `char::is_whitespace` plus U+001C–U+001F (the ASCII information separators, which
/// have bidi class B/S and so count as whitespace in CPython), and without U+180E, which neither
/// counts. The full list, checked against CPython 3.11 over every code point:
/// `\t \n \v \f \r U+1C..U+1F ' ' U+85 U+A0 U+1680 U+2000..U+200A U+2028 U+2029 U+202F U+205F U+3000`.
#[inline]
pub fn is_py_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `s.split()`: maximal runs of non-whitespace, empty pieces dropped.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_whitespace).filter(|t| !t.is_empty())
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_whitespace)
}

/// Python's `s.lower()`. Rust's `to_lowercase` follows the same Unicode rules, including the
/// context-dependent final sigma and `İ` → `i̇`; the two differ only on code points whose case
/// mapping changed between the Unicode versions of CPython and of Rust's standard library.
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// The characters that the first 13a regex, `([\{-\~\[-\` -\&\(-\+\:-\@\/])`, pads with spaces:
/// `{|}~`, `` [\]^_` ``, space to `&`, `()*+`, `:;<=>?@` and `/`.
#[inline]
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies a two-character pattern left to right without overlaps, as Python's `re.sub` does for
/// a fixed-width pattern of two single-character classes.
fn sub_pairs(
    input: &[char],
    matches: impl Fn(char, char) -> bool,
    write: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 4 + 4);
    let mut i = 0;
    while i < input.len() {
        if i + 1 < input.len() && matches(input[i], input[i + 1]) {
            write(input[i], input[i + 1], &mut out);
            i += 2;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's `13a` tokenizer: the segment as tokens joined by single spaces.
///
/// Steps, in sacrebleu's order: drop `<skipped>`, join `-\n` line breaks, turn `\n` into a space,
/// unescape `&quot; &amp; &lt; &gt;` (in that order, one pass each, only when the line has a
/// `&`), then the four regexes (pad symbols; split `.`/`,` not preceded by a digit; split `.`/`,`
/// not followed by a digit; split `-` after a digit), then collapse whitespace the Python way.
///
/// ```
/// use koala_pipeline::bleu::tokenize_13a;
/// assert_eq!(tokenize_13a("Hello, world! It costs $3.50 &amp; more."), "Hello , world ! It costs $ 3.50 & more .");
/// ```
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars: Vec<char> = Vec::with_capacity(line.len() * 2 + 2);
    chars.push(' ');
    for c in line.chars() {
        if is_13a_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    chars.push(' ');
    let is_digit = |c: char| c.is_ascii_digit();
    let is_dot_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> "\1 \2 "
    let chars = sub_pairs(
        &chars,
        |a, b| !is_digit(a) && is_dot_comma(b),
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    // ([\.,])([^0-9]) -> " \1 \2"
    let chars = sub_pairs(
        &chars,
        |a, b| is_dot_comma(a) && !is_digit(b),
        |a, b, out| out.extend([' ', a, ' ', b]),
    );
    // ([0-9])(-) -> "\1 \2 "
    let chars = sub_pairs(
        &chars,
        |a, b| is_digit(a) && b == '-',
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    let joined: String = chars.into_iter().collect();
    let mut out = String::with_capacity(joined.len());
    for tok in py_split(&joined) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(tok);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        let s = "a\u{1c}b\u{1d}c\u{1e}d\u{1f}e\u{180e}f";
        assert_eq!(
            py_split(s).collect::<Vec<_>>(),
            vec!["a", "b", "c", "d", "e\u{180e}f"]
        );
    }

    #[test]
    fn regex_order_and_entities() {
        assert_eq!(
            tokenize_13a("a.b,c 3.5 1,000 x-y 3-4"),
            "a . b , c 3.5 1,000 x-y 3 - 4"
        );
        assert_eq!(tokenize_13a("&amp;quot; &amp;lt;"), "& quot ; <");
        assert_eq!(tokenize_13a("<skipped>end-\nline\nnext"), "endline next");
        assert_eq!(tokenize_13a(""), "");
    }
}
