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
pub const fn is_py_whitespace(c: char) -> bool {
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
    let mut out = String::with_capacity(line.len() + line.len() / 4);
    for_each_13a_token(line, |tok| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(tok);
    });
    out
}

/// Calls `f` with each token of [`tokenize_13a`]`(line)`, in order, without building the token
/// string: what a caller that splits the result on whitespace would see.
pub fn for_each_13a_token(line: &str, mut f: impl FnMut(&str)) {
    let line = unescape_13a(line);
    if line.is_ascii() {
        return tokens_ascii(&line, f);
    }
    for tok in py_split(&tokenize_chars(&line)) {
        f(tok);
    }
}

/// 13a's first steps: `<skipped>` and `-\n` removed, newlines made spaces, four HTML entities
/// decoded.
fn unescape_13a(line: &str) -> std::borrow::Cow<'_, str> {
    let mut line = std::borrow::Cow::Borrowed(line);
    if line.contains('\n') || line.contains("<skipped>") {
        line = line
            .replace("<skipped>", "")
            .replace("-\n", "")
            .replace('\n', " ")
            .into();
    }
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .into();
    }
    line
}

/// The 13a regexes on `char`s, each a pass over the whole text (any text).
fn tokenize_chars(line: &str) -> String {
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
    let chars = sub_pairs(
        &chars,
        |a, b| !is_digit(a) && is_dot_comma(b),
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    let chars = sub_pairs(
        &chars,
        |a, b| is_dot_comma(a) && !is_digit(b),
        |a, b, out| out.extend([' ', a, ' ', b]),
    );
    let chars = sub_pairs(
        &chars,
        |a, b| is_digit(a) && b == '-',
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    chars.into_iter().collect()
}

/// One byte stage of the 13a pipeline on ASCII text.
trait Sink {
    fn push(&mut self, b: u8);
    fn finish(&mut self);
}

/// One regex substitution `(X)(Y) → …` as [`sub_pairs`] applies it (left to right, pairs not
/// overlapping), on a stream: it holds the byte at the scan position until the next one decides
/// whether the two form a pair.
struct Pairs<M, W, S> {
    pending: Option<u8>,
    matches: M,
    write: W,
    next: S,
}

impl<M: Fn(u8, u8) -> bool, W: Fn(u8, u8, &mut S), S: Sink> Sink for Pairs<M, W, S> {
    #[inline]
    fn push(&mut self, b: u8) {
        match self.pending.take() {
            Some(a) if (self.matches)(a, b) => (self.write)(a, b, &mut self.next),
            Some(a) => {
                self.next.push(a);
                self.pending = Some(b);
            }
            None => self.pending = Some(b),
        }
    }
    fn finish(&mut self) {
        if let Some(a) = self.pending.take() {
            self.next.push(a);
        }
        self.next.finish();
    }
}

/// The last stage: Python's `split()` on ASCII, handing each token on.
struct Split<'a, F> {
    token: Vec<u8>,
    f: &'a mut F,
}

impl<F: FnMut(&str)> Split<'_, F> {
    fn flush(&mut self) {
        if !self.token.is_empty() {
            // ASCII bytes are UTF-8.
            if let Ok(t) = std::str::from_utf8(&self.token) {
                (self.f)(t);
            }
            self.token.clear();
        }
    }
}

impl<F: FnMut(&str)> Sink for Split<'_, F> {
    #[inline]
    fn push(&mut self, b: u8) {
        if is_py_whitespace(b as char) {
            self.flush();
        } else {
            self.token.push(b);
        }
    }
    fn finish(&mut self) {
        self.flush();
    }
}

/// How 13a treats an ASCII byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Python whitespace: splits tokens, and takes part in no substitution as anything but a
    /// non-digit.
    Space,
    /// A 13a symbol (padded with spaces), `.`, `,` or `-`: the substitutions may split here.
    Special,
    /// Anything else: left as it is.
    Plain,
}

const fn classify(b: u8) -> Class {
    match b {
        _ if is_py_whitespace(b as char) => Class::Space,
        b'{'..=b'~' | b'['..=b'`' | b'!'..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/' => {
            Class::Special
        }
        b'.' | b',' | b'-' => Class::Special,
        _ => Class::Plain,
    }
}

const CLASS: [Class; 128] = {
    let mut t = [Class::Plain; 128];
    let mut b = 0;
    while b < 128 {
        t[b] = classify(b as u8);
        b += 1;
    }
    t
};

/// 13a on ASCII text, word by word. No substitution pairs a whitespace byte with anything that
/// changes it: `([^0-9])([\.,])` may take whitespace as its first byte but never as its second
/// (so whitespace is never consumed before a word), and the other two never match whitespace.
/// So each whitespace-separated word tokenizes on its own, between two spaces. A word of plain
/// bytes is its own token; the others go through the symbol padding and the three pair
/// substitutions as stream stages, with no intermediate text.
fn tokens_ascii(text: &str, mut f: impl FnMut(&str)) {
    let line = text.as_bytes();
    let is_digit = |c: u8| c.is_ascii_digit();
    let is_dot_comma = |c: u8| c == b'.' || c == b',';
    let split = Split {
        token: Vec::with_capacity(64),
        f: &mut f,
    };
    // `([0-9])(-)` → `\1 \2 `
    let dash = Pairs {
        pending: None,
        matches: move |a, b| is_digit(a) && b == b'-',
        write: |a, b, s: &mut Split<'_, _>| {
            for x in [a, b' ', b, b' '] {
                s.push(x)
            }
        },
        next: split,
    };
    // `([\.,])([^0-9])` → ` \1 \2`
    let after = Pairs {
        pending: None,
        matches: move |a, b| is_dot_comma(a) && !is_digit(b),
        write: |a, b, s: &mut _| {
            for x in [b' ', a, b' ', b] {
                Sink::push(s, x)
            }
        },
        next: dash,
    };
    // `([^0-9])([\.,])` → `\1 \2 `
    let mut before = Pairs {
        pending: None,
        matches: move |a, b| !is_digit(a) && is_dot_comma(b),
        write: |a, b, s: &mut _| {
            for x in [a, b' ', b, b' '] {
                Sink::push(s, x)
            }
        },
        next: after,
    };
    let mut i = 0;
    let n = line.len();
    while i < n {
        while i < n && CLASS[line[i] as usize] == Class::Space {
            i += 1;
        }
        let start = i;
        let mut plain = true;
        while i < n {
            match CLASS[line[i] as usize] {
                Class::Space => break,
                Class::Special => plain = false,
                Class::Plain => {}
            }
            i += 1;
        }
        if start == i {
            break;
        }
        let word = &line[start..i];
        if plain {
            // ASCII: every byte offset is a character boundary.
            (before.next.next.next.f)(&text[start..i]);
            continue;
        }
        before.push(b' ');
        for &c in word {
            if c != b'.' && c != b',' && c != b'-' && CLASS[c as usize] == Class::Special {
                before.push(b' ');
                before.push(c);
                before.push(b' ');
            } else {
                before.push(c);
            }
        }
        before.push(b' ');
        before.finish();
    }
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

    /// The ASCII path gives exactly what the `char` path gives.
    #[test]
    fn ascii_path_equals_the_char_path() {
        use proptest::prelude::*;
        let alphabet = "ab9 0.,-&;:\n\t\x1c<>\"'()x1{}[]`~/@+=_|\\$%#!?^*";
        let chars: Vec<char> = alphabet.chars().collect();
        proptest!(|(idx in proptest::collection::vec(0..chars.len(), 0..40))| {
            let text: String = idx.iter().map(|&i| chars[i]).collect();
            // The char path, on any text.
            let narrow = tokenize_13a(&text);
            let wide = py_split(&tokenize_chars(&unescape_13a(&text))).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(&narrow, &wide, "{:?}", text);
            let mut tokens = Vec::new();
            for_each_13a_token(&text, |t| tokens.push(t.to_string()));
            prop_assert_eq!(tokens.join(" "), narrow);
        });
    }
}
