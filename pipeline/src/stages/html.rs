//! HTML → Markdown in one pass over the bytes, for the markup that ShareGPT dumps contain.
//!
//! [`to_markdown_fast`] gives the same bytes as the reference path in
//! [`cleanup::html_to_markdown`](super::cleanup::html_to_markdown) (the `CODE_HEADER` and
//! `DIV_TAG` regex pre-pass, then `htmd` over an html5ever DOM with cleanup's options), or `None`
//! when it is not sure to: the caller then takes the reference path. It scans for `<` and `&`
//! with `memchr`, keeps a stack of open elements (one small frame each) and writes every
//! element's Markdown in place into the one output string, doing at each end tag what htmd's
//! handler does with that element's converted children.
//!
//! What it converts: `p`, `pre`, `code`, `ol`, `ul`, `li`, `a`, `br`, `hr`, `h1`–`h6`, `strong`,
//! `b`, `em`, `i`, `span`, `blockquote`; `<div>` tags and the code-block header
//! (`<div class="… items-center …">…</div>`) vanish exactly as the regex pre-pass removes them;
//! the entities `&amp; &lt; &gt; &quot; &apos; &nbsp;` and numeric references to printable
//! characters. Well-formed nesting only, as html5ever would build it without repairs.
//!
//! What falls back (returns `None`): any other tag (`table`, `img`, `button` outside the code
//! header, `script`, `style`, …), comments, `<!…>` and `<?…>`, upper-case tag or attribute names,
//! `\r` and NUL, other named references and legacy ones without `;` (`&copy2023`), numeric
//! references without `;` or to control characters, malformed tags, end tags that do not close
//! the current element, anything html5ever would repair (a block start inside an open `<p>`,
//! `<li>` inside an open `li` without a list between, a heading directly inside a heading, `<a>`
//! inside `<a>`), block or inline markup other than `span` inside `pre`/`code`, adjacent inline
//! siblings that htmd would merge (`<b>x</b><b>y</b>`), math spans, `<` inside attribute values,
//! and ordered lists whose number width the look-ahead got wrong.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::html::to_markdown_fast;
//! let md = to_markdown_fast("<p>Run <code>ls</code>:</p><ul><li>one</li><li>two</li></ul>");
//! assert_eq!(md.as_deref(), Some("Run `ls`:\n\n- one\n- two"));
//! assert_eq!(to_markdown_fast("<table><tr><td>x</td></tr></table>"), None);
//! ```
use std::sync::LazyLock;

use memchr::{memchr, memchr2, memmem};

/// HTML → Markdown equal to today's regex pre-pass + htmd path, or `None` where this converter
/// is not sure to give the same bytes (the caller then takes that path). A broken expectation of
/// its own element stack also gives `None`, never a panic on input.
pub fn to_markdown_fast(html: &str) -> Option<String> {
    let bytes = html.as_bytes();
    // html5ever turns `\r` and `\r\n` into `\n` and drops NUL: leave those to it.
    if memchr2(b'\r', 0, bytes).is_some() {
        return None;
    }
    // The frame stack and the two scratch strings are reused across calls on a thread.
    BUFFERS.with(|cell| {
        let (stack, tbuf, scratch) = &mut *cell.borrow_mut();
        stack.clear();
        let mut c = Conv {
            src: html,
            out: String::with_capacity(html.len()),
            stack: std::mem::take(stack),
            pend: Pending::None,
            tbuf: std::mem::take(tbuf),
            scratch: std::mem::take(scratch),
            at_start: true,
            ignore_lf: false,
        };
        let done = c.run();
        (*stack, *tbuf, *scratch) = (c.stack, c.tbuf, c.scratch);
        done?;
        let mut out = c.out;
        // The document handler: trim `\n` at both ends (body, html), then document whitespace at
        // the end, then `\n` at the start.
        let end = out.trim_end_matches(is_doc_ws).len();
        out.truncate(end);
        let start = out.len() - out.trim_start_matches('\n').len();
        out.replace_range(..start, "");
        Some(out)
    })
}

type Buffers = (Vec<Frame>, String, String);

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> =
        std::cell::RefCell::new((Vec::with_capacity(16), String::new(), String::new()));
}

static DOUBLE_SPACE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"  "));
static DIV_END: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"</div>"));
static ITEMS_CENTER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"items-center"));

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    Body,
    P,
    Pre,
    Code,
    Ol,
    Ul,
    Li,
    A,
    Br,
    Hr,
    H(u8),
    Strong,
    B,
    Em,
    I,
    Span,
    Blockquote,
}

impl Tag {
    fn from_name(name: &[u8]) -> Option<Tag> {
        Some(match name {
            b"p" => Tag::P,
            b"pre" => Tag::Pre,
            b"code" => Tag::Code,
            b"ol" => Tag::Ol,
            b"ul" => Tag::Ul,
            b"li" => Tag::Li,
            b"a" => Tag::A,
            b"br" => Tag::Br,
            b"hr" => Tag::Hr,
            b"h1" => Tag::H(1),
            b"h2" => Tag::H(2),
            b"h3" => Tag::H(3),
            b"h4" => Tag::H(4),
            b"h5" => Tag::H(5),
            b"h6" => Tag::H(6),
            b"strong" => Tag::Strong,
            b"b" => Tag::B,
            b"em" => Tag::Em,
            b"i" => Tag::I,
            b"span" => Tag::Span,
            b"blockquote" => Tag::Blockquote,
            _ => return None,
        })
    }

    /// htmd's (CommonMark's) block elements.
    fn is_block(self) -> bool {
        matches!(
            self,
            Tag::Body
                | Tag::P
                | Tag::Pre
                | Tag::Ol
                | Tag::Ul
                | Tag::Li
                | Tag::Hr
                | Tag::H(_)
                | Tag::Blockquote
        )
    }

    /// Start tags that make html5ever close an open `<p>` ("close a p element in button scope").
    fn closes_p(self) -> bool {
        matches!(
            self,
            Tag::P | Tag::Pre | Tag::Ol | Tag::Ul | Tag::Li | Tag::Hr | Tag::H(_) | Tag::Blockquote
        )
    }

    /// Not in html5ever's "special" category (and so skipped by the `<li>` start-tag walk).
    fn is_phrasing(self) -> bool {
        matches!(
            self,
            Tag::A | Tag::B | Tag::Code | Tag::Em | Tag::I | Tag::Span | Tag::Strong
        )
    }
}

/// Would htmd's `can_combine` merge an element `a` with a following sibling `b` (when both hold
/// one text node and equal attributes)?
fn combinable(a: Tag, b: Tag) -> bool {
    if a.is_block() || a == Tag::A {
        return false;
    }
    a == b
        || matches!(
            (a, b),
            (Tag::I, Tag::Em) | (Tag::Em, Tag::I) | (Tag::B, Tag::Strong) | (Tag::Strong, Tag::B)
        )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    None,
    Text,
    /// An element sibling; `true` when its only child was a text node.
    Elem(Tag, bool),
}

type Span = (usize, usize);

/// One open element.
struct Frame {
    tag: Tag,
    /// Where this element's converted children start in the output.
    start: usize,
    /// The parent's output length when this element started (htmd's `output_len`).
    before: usize,
    /// htmd's `trim_leading_spaces` for the next child.
    trim: bool,
    /// htmd's `is_pre` for the children (an ancestor-or-self is `pre` or `code`).
    pre: bool,
    prev: Prev,
    kids: u32,
    first_text: bool,
    /// `code`: the code block's language (a slice of a class attribute); `pre`: its class value.
    class: Option<Span>,
    code_block: bool,
    href: Option<Span>,
    title: Option<Span>,
    /// `ol`: first number, the number width assumed, and the `li` children so far.
    ol_start: usize,
    ol_width: usize,
    ol_count: usize,
}

impl Frame {
    fn new(tag: Tag, start: usize, before: usize, pre: bool) -> Frame {
        Frame {
            tag,
            start,
            before,
            trim: !pre && tag.is_block(),
            pre,
            prev: Prev::None,
            kids: 0,
            first_text: false,
            class: None,
            code_block: false,
            href: None,
            title: None,
            ol_start: 1,
            ol_width: 1,
            ol_count: 0,
        }
    }
}

/// The text node being gathered: html5ever merges the text on both sides of an entity, and of a
/// `<div>` tag or code header that the regex pre-pass removed, into one node.
enum Pending {
    None,
    Slice(usize, usize),
    Owned,
}

/// The attributes the handlers read (the first of each name, as html5ever keeps).
#[derive(Default)]
struct Attrs {
    class: Option<Span>,
    href: Option<Span>,
    title: Option<Span>,
    start: Option<Span>,
}

struct Conv<'a> {
    src: &'a str,
    out: String,
    stack: Vec<Frame>,
    pend: Pending,
    tbuf: String,
    scratch: String,
    /// No token yet: html5ever drops leading whitespace.
    at_start: bool,
    /// Just after `<pre>`: html5ever drops one leading `\n`.
    ignore_lf: bool,
}

fn is_doc_ws(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' ')
}

fn is_html_ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0C | b' ')
}

impl<'a> Conv<'a> {
    fn run(&mut self) -> Option<()> {
        let b = self.src.as_bytes();
        self.stack.push(Frame::new(Tag::Body, 0, 0, false));
        let mut pos = 0;
        while pos < b.len() {
            let Some(off) = memchr2(b'<', b'&', &b[pos..]) else {
                self.text(pos, b.len())?;
                break;
            };
            let i = pos + off;
            self.text(pos, i)?;
            pos = if b[i] == b'&' {
                self.entity(i)?
            } else {
                self.markup(i)?
            };
        }
        while self.stack.len() > 1 {
            self.close()?;
        }
        self.flush()?;
        Some(())
    }

    // ------------------------------------------------------------------ text

    /// Raw text `src[a..e]` (no `<` or `&` in it).
    fn text(&mut self, mut a: usize, e: usize) -> Option<()> {
        let b = self.src.as_bytes();
        if self.at_start {
            while a < e && is_html_ws(b[a]) {
                a += 1;
            }
            if a == e {
                return Some(());
            }
            if self.src[a..e].starts_with('\u{FEFF}') {
                return None;
            }
            self.at_start = false;
        }
        if a == e {
            return Some(());
        }
        if self.ignore_lf {
            self.ignore_lf = false;
            if b[a] == b'\n' {
                a += 1;
                if a == e {
                    return Some(());
                }
            }
        }
        match self.pend {
            Pending::None => self.pend = Pending::Slice(a, e),
            Pending::Slice(s, pe) if pe == a => self.pend = Pending::Slice(s, e),
            Pending::Slice(s, pe) => {
                self.tbuf.clear();
                self.tbuf.push_str(&self.src[s..pe]);
                self.tbuf.push_str(&self.src[a..e]);
                self.pend = Pending::Owned;
            }
            Pending::Owned => self.tbuf.push_str(&self.src[a..e]),
        }
        Some(())
    }

    /// Decoded text (an entity; never a control character, so never `\n`).
    fn text_char(&mut self, c: char) {
        if self.at_start && c == ' ' {
            // `&#32;`: whitespace before any token is dropped however it was written.
            return;
        }
        self.at_start = false;
        self.ignore_lf = false;
        match self.pend {
            Pending::None => {
                self.tbuf.clear();
            }
            Pending::Slice(s, e) => {
                self.tbuf.clear();
                self.tbuf.push_str(&self.src[s..e]);
            }
            Pending::Owned => {}
        }
        self.tbuf.push(c);
        self.pend = Pending::Owned;
    }

    /// `&` at `i`: a supported reference, or a literal `&`. Returns the position after it.
    fn entity(&mut self, i: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        let j = i + 1;
        match b.get(j) {
            Some(c) if c.is_ascii_alphanumeric() => {
                let mut k = j;
                while k < b.len() && b[k].is_ascii_alphanumeric() {
                    k += 1;
                }
                match b.get(k) {
                    Some(b';') => {
                        let c = named_entity(&b[j..k])?;
                        self.text_char(c);
                        Some(k + 1)
                    }
                    // A removed `<div>` could join more name characters.
                    Some(b'<') => None,
                    // No `;`: html5ever still decodes the legacy names that start the run.
                    _ if LEGACY_ENTITIES.iter().any(|n| b[j..k].starts_with(n)) => None,
                    _ => {
                        self.text(i, k)?;
                        Some(k)
                    }
                }
            }
            Some(b'#') => {
                let hex = matches!(b.get(j + 1), Some(b'x' | b'X'));
                let ds = j + 1 + hex as usize;
                let digit = b.get(ds).is_some_and(|c| {
                    if hex {
                        c.is_ascii_hexdigit()
                    } else {
                        c.is_ascii_digit()
                    }
                });
                if !digit {
                    // `&#` (or `&#x`) without digits stays text.
                    if b.get(ds) == Some(&b'<') {
                        return None;
                    }
                    self.text(i, ds)?;
                    return Some(ds);
                }
                let (c, next) = numeric_entity(b, j + 1)?;
                self.text_char(c);
                Some(next)
            }
            // `&<`: the regex pre-pass may remove a `<div>` there and join `&` to what follows.
            Some(b'<') => None,
            _ => {
                self.text(i, j)?;
                Some(j)
            }
        }
    }

    /// Emits the gathered text node into the current element.
    fn flush(&mut self) -> Option<()> {
        let (owned, s, e) = match self.pend {
            Pending::None => return Some(()),
            Pending::Slice(s, e) => (false, s, e),
            Pending::Owned => (true, 0, 0),
        };
        self.pend = Pending::None;
        let tbuf = std::mem::take(&mut self.tbuf);
        let text: &str = if owned { &tbuf } else { &self.src[s..e] };
        let f = self.stack.last_mut()?;
        f.kids += 1;
        if f.kids == 1 {
            f.first_text = true;
        }
        f.prev = Prev::Text;
        let out = &mut self.out;
        if f.tag == Tag::Ol {
            // htmd walks each child of `<ol>` on its own, then joins the blocks.
            let seg = out.len();
            emit_text(out, text, true, false);
            join_block(out, f.start, seg);
        } else if f.pre {
            if f.tag == Tag::Pre && (text.starts_with('`') || text.starts_with('~')) {
                out.push('\\');
            }
            out.push_str(text);
        } else {
            let before = out.len();
            let last_space = out.len() > f.start && out.ends_with(' ');
            emit_text(out, text, f.trim, last_space);
            if out.len() > before {
                f.trim = false;
            }
        }
        self.tbuf = tbuf;
        Some(())
    }

    // ------------------------------------------------------------------ markup

    /// `<` at `i`. Returns the position after the tag (or after the literal `<`).
    fn markup(&mut self, i: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        match b.get(i + 1) {
            None => {
                self.text(i, i + 1)?;
                Some(i + 1)
            }
            Some(c) if c.is_ascii_alphabetic() => self.start_tag(i),
            Some(b'/') => {
                if b.get(i + 2).is_some_and(|c| c.is_ascii_alphabetic()) {
                    self.end_tag(i)
                } else {
                    None
                }
            }
            Some(b'!' | b'?' | b'<') => None,
            Some(_) => {
                self.text(i, i + 1)?;
                Some(i + 1)
            }
        }
    }

    /// A tag name from `a`: up to whitespace, `/` or `>`. Returns the end.
    fn tag_name_end(&self, a: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        let mut j = a;
        while j < b.len() && !is_html_ws(b[j]) && b[j] != b'/' && b[j] != b'>' {
            j += 1;
        }
        (j < b.len()).then_some(j)
    }

    /// After `<div` or `</div` (at `j`): the regex `DIV_TAG` removes up to the first `>`.
    fn skip_div_tag(&self, j: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        if b[j] == b'>' {
            return Some(j + 1);
        }
        if !matches!(b[j], b'\t' | b'\n' | 0x0C | b' ') {
            return None;
        }
        let gt = j + memchr(b'>', &b[j..])?;
        // A `<` inside could start a match of the code-header regex, which runs first.
        if memchr(b'<', &b[j..gt]).is_some() {
            return None;
        }
        Some(gt + 1)
    }

    /// The code-block header `<div class="… items-center …">…</div>` at `i`, as the regex
    /// `CODE_HEADER` matches it: `Some(Some(end))` with the position after its first `</div>`,
    /// `Some(None)` when the regex does not match here, `None` when unsure.
    fn code_header(&self, i: usize) -> Option<Option<usize>> {
        const OPEN: &[u8] = b"<div class=\"";
        let b = self.src.as_bytes();
        if !b[i..].starts_with(OPEN) {
            return Some(None);
        }
        let vs = i + OPEN.len();
        let Some(q) = memchr(b'"', &b[vs..]).map(|k| vs + k) else {
            return Some(None);
        };
        if b.get(q + 1) != Some(&b'>') || !has_items_center(&b[vs..q])? {
            return Some(None);
        }
        let body = q + 2;
        Some(
            DIV_END
                .find(&b[body..])
                .map(|end| body + end + b"</div>".len()),
        )
    }

    fn start_tag(&mut self, i: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        let j = self.tag_name_end(i + 1)?;
        let name = &b[i + 1..j];
        if name == b"div" {
            if let Some(next) = self.code_header(i)? {
                return Some(next);
            }
            return self.skip_div_tag(j);
        }
        let tag = Tag::from_name(name)?;
        let (attrs, self_closing, next) = self.attributes(j)?;
        self.flush()?;
        self.at_start = false;
        self.ignore_lf = false;
        self.open(tag, attrs, self_closing, next)?;
        if tag == Tag::Pre {
            self.ignore_lf = true;
        }
        Some(next)
    }

    fn end_tag(&mut self, i: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        let j = self.tag_name_end(i + 2)?;
        let name = &b[i + 2..j];
        if name == b"div" {
            return self.skip_div_tag(j);
        }
        let tag = Tag::from_name(name)?;
        let mut k = j;
        while k < b.len() && is_html_ws(b[k]) {
            k += 1;
        }
        if b.get(k) != Some(&b'>') {
            return None;
        }
        self.flush()?;
        self.at_start = false;
        self.ignore_lf = false;
        if matches!(tag, Tag::Br | Tag::Hr) {
            return None;
        }
        let top = self.stack.last()?;
        if top.tag != tag || top.tag == Tag::Body {
            return None;
        }
        self.close()?;
        Some(k + 1)
    }

    /// Attributes from `j` (just after the tag name) to `>`: the ones the handlers read, the
    /// self-closing flag and the position after `>`.
    fn attributes(&self, mut j: usize) -> Option<(Attrs, bool, usize)> {
        let b = self.src.as_bytes();
        let mut attrs = Attrs::default();
        loop {
            while j < b.len() && is_html_ws(b[j]) {
                j += 1;
            }
            match *b.get(j)? {
                b'>' => return Some((attrs, false, j + 1)),
                b'/' => {
                    return (b.get(j + 1) == Some(&b'>')).then_some((attrs, true, j + 2));
                }
                _ => {}
            }
            let ns = j;
            while j < b.len() && !is_html_ws(b[j]) && !matches!(b[j], b'/' | b'>' | b'=') {
                let c = b[j];
                if !(c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'-' | b'_' | b':'))
                {
                    return None;
                }
                j += 1;
            }
            let name = &b[ns..j];
            if name.is_empty() {
                return None;
            }
            while j < b.len() && is_html_ws(b[j]) {
                j += 1;
            }
            let mut value = (j, j);
            if b.get(j) == Some(&b'=') {
                j += 1;
                while j < b.len() && is_html_ws(b[j]) {
                    j += 1;
                }
                match *b.get(j)? {
                    q @ (b'"' | b'\'') => {
                        let vs = j + 1;
                        let ve = vs + memchr(q, &b[vs..])?;
                        value = (vs, ve);
                        j = ve + 1;
                        match *b.get(j)? {
                            b'>' | b'/' => {}
                            c if is_html_ws(c) => {}
                            _ => return None,
                        }
                    }
                    b'>' => return None,
                    _ => {
                        let vs = j;
                        while j < b.len() && !is_html_ws(b[j]) && b[j] != b'>' {
                            if matches!(b[j], b'"' | b'\'' | b'=' | b'`') {
                                return None;
                            }
                            j += 1;
                        }
                        value = (vs, j);
                    }
                }
                // The regexes run over the raw text: a `<` in a value could start a match.
                if memchr(b'<', &b[value.0..value.1]).is_some() {
                    return None;
                }
            }
            let slot = match name {
                b"class" => &mut attrs.class,
                b"href" => &mut attrs.href,
                b"title" => &mut attrs.title,
                b"start" => &mut attrs.start,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
    }

    // ------------------------------------------------------------------ tree

    /// A start tag, after html5ever's tree-construction checks.
    fn open(&mut self, tag: Tag, attrs: Attrs, self_closing: bool, next: usize) -> Option<()> {
        let top = self.stack.last()?;
        if top.pre {
            // In `pre`/`code` only highlighting spans and the code element itself.
            match tag {
                Tag::Span => {}
                Tag::Code if top.tag == Tag::Pre => {}
                _ => return None,
            }
        }
        if self_closing && !matches!(tag, Tag::Br | Tag::Hr) {
            return None;
        }
        if tag.closes_p() && self.stack.iter().any(|f| f.tag == Tag::P) {
            return None;
        }
        if matches!(tag, Tag::H(_)) && matches!(top.tag, Tag::H(_)) {
            return None;
        }
        if tag == Tag::Li {
            for f in self.stack.iter().rev() {
                if f.tag == Tag::Li {
                    return None;
                }
                if !f.tag.is_phrasing() {
                    break;
                }
            }
        }
        if tag == Tag::A && self.stack.iter().any(|f| f.tag == Tag::A) {
            return None;
        }
        if top.tag != Tag::Ol
            && let Prev::Elem(prev, true) = top.prev
            && combinable(prev, tag)
            && !(top.pre && prev == Tag::Span && tag == Tag::Span)
        {
            return None;
        }
        let pre = top.pre || matches!(tag, Tag::Pre | Tag::Code);
        let top_tag = top.tag;
        let pre_class = if top_tag == Tag::Pre { top.class } else { None };
        if top_tag != Tag::Ol && tag.is_block() {
            // htmd trims the spaces that end the output before a block child.
            let start = self.stack.last()?.start;
            let keep = self.out[start..].trim_end_matches(' ').len();
            self.out.truncate(start + keep);
        }
        let here = self.out.len();
        let mut f = Frame::new(tag, here, here, pre);
        match tag {
            Tag::Br | Tag::Hr => {
                let text = if tag == Tag::Br {
                    "  \n"
                } else {
                    "\n\n* * *\n\n"
                };
                self.out.push_str(text);
                return self.attach(f, true);
            }
            Tag::Code => {
                f.code_block = top_tag == Tag::Pre;
                if f.code_block {
                    f.class = match language(self.src, attrs.class)? {
                        Some(l) => Some(l),
                        None => language(self.src, pre_class)?,
                    };
                }
            }
            Tag::Pre => f.class = attrs.class,
            Tag::Span => {
                if let Some((s, e)) = attrs.class {
                    let v = &self.src[s..e];
                    if v.contains('&') || v == "math math-inline" || v == "math math-display" {
                        return None;
                    }
                }
            }
            Tag::A => {
                if let Some(h) = attrs.href {
                    check_attr_entities(self.src, h)?;
                    f.href = Some(h);
                    if let Some(t) = attrs.title {
                        check_attr_entities(self.src, t)?;
                        f.title = Some(t);
                    }
                }
            }
            Tag::Ol => {
                if let Some((s, e)) = attrs.start {
                    let v = &self.src[s..e];
                    if v.contains('&') {
                        return None;
                    }
                    f.ol_start = v.parse::<i32>().unwrap_or(1).max(1) as usize;
                }
                if f.ol_start > 100_000 {
                    return None;
                }
                let n = count_items(self.src.as_bytes(), next);
                f.ol_width = digits(f.ol_start + n.max(1) - 1);
            }
            _ => {}
        }
        self.stack.push(f);
        Some(())
    }

    /// The end of the current element: its handler, then the append into the parent.
    fn close(&mut self) -> Option<()> {
        self.flush()?;
        let f = self.stack.pop()?;
        let some = self.finish(&f)?;
        if !some {
            self.out.truncate(f.start);
        }
        self.attach(f, some)
    }

    /// htmd's handler for `f`, in place on `out[f.start..]`. `Some(false)`: the handler returned
    /// nothing.
    fn finish(&mut self, f: &Frame) -> Option<bool> {
        let s = f.start;
        let parent_tag = self.stack.last()?.tag;
        let out = &mut self.out;
        match f.tag {
            Tag::Body => unreachable!("the body is never closed"),
            Tag::P | Tag::Pre => {
                wrap_trimmed(out, s, |c| c == '\n', "\n\n", "\n\n");
            }
            Tag::H(level) => {
                let lead = match level {
                    1 => "\n\n# ",
                    2 => "\n\n## ",
                    3 => "\n\n### ",
                    4 => "\n\n#### ",
                    5 => "\n\n##### ",
                    _ => "\n\n###### ",
                };
                wrap_trimmed(out, s, is_doc_ws, lead, "\n\n");
            }
            Tag::Blockquote => {
                let body = &out[s..];
                let body = body.trim_start_matches('\n').trim_end_matches(is_doc_ws);
                self.scratch.clear();
                self.scratch.push_str(body);
                out.truncate(s);
                out.push_str("\n\n");
                for (k, line) in self.scratch.lines().enumerate() {
                    if k > 0 {
                        out.push('\n');
                    }
                    out.push_str("> ");
                    out.push_str(line);
                }
                out.push_str("\n\n");
            }
            Tag::Li => {
                let lead = out[s..].len() - out[s..].trim_start_matches(is_doc_ws).len();
                if parent_tag == Tag::Ol {
                    let parent = self.stack.last_mut()?;
                    parent.ol_count += 1;
                    let idx = parent.ol_start + parent.ol_count - 1;
                    let width = parent.ol_width;
                    // "\n" + number + "." + spacing, as htmd's `add_ol_li_marker`.
                    let mut buf = [b' '; 32];
                    buf[0] = b'\n';
                    let mut n = 1 + idx.ilog10() as usize + 1;
                    let idx_len = n - 1;
                    if idx_len > width {
                        return None;
                    }
                    let mut v = idx;
                    for k in (1..n).rev() {
                        buf[k] = b'0' + (v % 10) as u8;
                        v /= 10;
                    }
                    buf[n] = b'.';
                    n += 1 + (1 + width - idx_len);
                    let marker = std::str::from_utf8(&buf[..n]).ok()?;
                    let empty = out.len() == s + lead;
                    out.replace_range(s..s + lead, "");
                    if !empty {
                        out.push('\n');
                    }
                    indent_tail(out, &mut self.scratch, s, marker, width + 2);
                } else {
                    out.replace_range(s..s + lead, "");
                    indent_tail(out, &mut self.scratch, s, "\n- ", 2);
                }
            }
            Tag::Ol | Tag::Ul => {
                if f.tag == Tag::Ol
                    && f.ol_count > 0
                    && digits(f.ol_start + f.ol_count - 1) != f.ol_width
                {
                    return None;
                }
                let body = out[s..].trim_matches('\n');
                if body.is_empty() {
                    return Some(false);
                }
                let nl = if parent_tag == Tag::Li { "\n" } else { "\n\n" };
                wrap_trimmed(out, s, |c| c == '\n', nl, nl);
            }
            Tag::Code if f.code_block => {
                if out.ends_with('\n') && out.len() > s {
                    out.pop();
                }
                let run = longest_backtick_run(&out[s..]);
                let n = 3.max(run + 1);
                self.scratch.clear();
                for _ in 0..n {
                    self.scratch.push('`');
                }
                let fence_len = self.scratch.len();
                if let Some((ls, le)) = f.class {
                    self.scratch.push_str(&self.src[ls..le]);
                }
                self.scratch.push('\n');
                out.insert_str(s, &self.scratch);
                out.push('\n');
                out.push_str(&self.scratch[..fence_len]);
            }
            Tag::Code => {
                let body = &out[s..];
                let lead = body.len() - body.trim_start_matches(is_doc_ws).len();
                let keep = body.trim_end_matches(is_doc_ws).len().max(lead);
                out.truncate(s + keep);
                out.replace_range(s..s + lead, "");
                let body = &out[s..];
                let pad = body.starts_with('`') || body.ends_with('`');
                let n = inline_delimiter(body, pad)?;
                self.scratch.clear();
                for _ in 0..n {
                    self.scratch.push('`');
                }
                if pad {
                    self.scratch.push(' ');
                }
                out.insert_str(s, &self.scratch);
                if pad {
                    out.push(' ');
                }
                for _ in 0..n {
                    out.push('`');
                }
            }
            Tag::A => {
                let Some(href) = f.href else {
                    return Some(true);
                };
                let body = &out[s..];
                let lead = body.len() - body.trim_start_matches(is_doc_ws).len();
                let keep = body.trim_end_matches(is_doc_ws).len().max(lead);
                self.scratch.clear();
                self.scratch.push_str(&out[s + keep..]);
                out.truncate(s + keep);
                out.replace_range(s..s + lead, "[");
                out.push_str("](");
                let src = self.src;
                let spaces = decoded_contains_space(src, href);
                if spaces {
                    out.push('<');
                }
                push_link(src, href, out);
                if spaces {
                    out.push('>');
                }
                if let Some(t) = f.title {
                    out.push_str(" \"");
                    push_title(src, t, out);
                    out.push('"');
                }
                out.push(')');
                out.push_str(&self.scratch);
            }
            Tag::Strong | Tag::B | Tag::Em | Tag::I => {
                let marker = if matches!(f.tag, Tag::Strong | Tag::B) {
                    "**"
                } else {
                    "*"
                };
                let body = &out[s..];
                let core = body.trim();
                if core.is_empty() {
                    return Some(false);
                }
                let lead = body.len() - body.trim_start().len();
                let core_end = s + lead + core.len();
                self.scratch.clear();
                self.scratch.push_str(&out[core_end..]);
                out.truncate(core_end);
                out.insert_str(s + lead, marker);
                out.push_str(marker);
                out.push_str(&self.scratch);
            }
            Tag::Span => {
                if !f.pre {
                    let body = &out[s..];
                    let lead = body.len() - body.trim_start_matches('\n').len();
                    let keep = body.trim_end_matches('\n').len().max(lead);
                    out.truncate(s + keep);
                    out.replace_range(s..s + lead, "");
                }
            }
            Tag::Br | Tag::Hr => unreachable!("void elements are finished at the start tag"),
        }
        Some(true)
    }

    /// Appends the finished child `f` (its Markdown at `out[f.start..]`) to its parent, as
    /// htmd's `walk_children` / `append_normalized_content` or, in `<ol>`, `join_blocks`.
    fn attach(&mut self, f: Frame, some: bool) -> Option<()> {
        let out = &mut self.out;
        let p = self.stack.last_mut()?;
        p.kids += 1;
        p.prev = Prev::Elem(f.tag, f.kids == 1 && f.first_text);
        if !some {
            return Some(());
        }
        let s = f.start;
        if p.tag == Tag::Ol {
            join_block(out, p.start, s);
            return Some(());
        }
        if s > p.start && !p.pre {
            let last_nl = out.as_bytes()[p.start..s]
                .iter()
                .rev()
                .take_while(|&&c| c == b'\n')
                .count();
            let content_nl = out.as_bytes()[s..]
                .iter()
                .take_while(|&&c| c == b'\n')
                .count();
            let total = last_nl + content_nl;
            if total > 2 {
                let remove = (total - 2).min(content_nl);
                out.replace_range(s..s + remove, "");
            } else if last_nl == 0
                && content_nl == 0
                && out.as_bytes()[s - 1] == b' '
                && out.as_bytes().get(s) == Some(&b' ')
            {
                out.remove(s);
            }
        }
        if out.len() > f.before {
            p.trim = f.tag.is_block();
        }
        Some(())
    }
}

// ---------------------------------------------------------------------- helpers

/// Trims `pred` characters at both ends of `out[s..]` and wraps it in `lead` … `trail`.
fn wrap_trimmed(
    out: &mut String,
    s: usize,
    pred: impl Fn(char) -> bool + Copy,
    lead: &str,
    trail: &str,
) {
    let body = &out[s..];
    let lead_n = body.len() - body.trim_start_matches(pred).len();
    let keep = body.trim_end_matches(pred).len().max(lead_n);
    out.truncate(s + keep);
    out.replace_range(s..s + lead_n, lead);
    out.push_str(trail);
}

/// `out[s..]` becomes `prefix` + htmd's `indent_text_except_first_line(out[s..], indent, true)`.
fn indent_tail(out: &mut String, scratch: &mut String, s: usize, prefix: &str, indent: usize) {
    scratch.clear();
    scratch.push_str(&out[s..]);
    out.truncate(s);
    out.push_str(prefix);
    for (k, line) in scratch.lines().enumerate() {
        let line = line.trim_end_matches(is_doc_ws);
        if k > 0 {
            out.push('\n');
        }
        if k > 0 && !line.is_empty() {
            for _ in 0..indent {
                out.push(' ');
            }
        }
        out.push_str(line);
    }
}

/// htmd's `join_blocks` step: appends the block `out[s..]` to the blocks `out[start..s]`.
fn join_block(out: &mut String, start: usize, s: usize) {
    if out.len() == s {
        return;
    }
    let b = out.as_bytes();
    let left = b[start..s]
        .iter()
        .rev()
        .take_while(|&&c| c == b'\n')
        .count();
    let right = b[s..].iter().take_while(|&&c| c == b'\n').count();
    let sep = left.max(right).min(2);
    out.replace_range(s - left..s + right, &"\n\n"[..sep]);
}

/// Does `v` (a class value) hold `items-center` between regex word boundaries (`\b`)? `None`
/// when a neighbour is not ASCII (Unicode word characters: leave those to the regex).
fn has_items_center(v: &[u8]) -> Option<bool> {
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let len = ITEMS_CENTER.needle().len();
    for k in ITEMS_CENTER.find_iter(v) {
        let before = if k == 0 { None } else { Some(v[k - 1]) };
        let after = v.get(k + len).copied();
        if before.is_some_and(|c| !c.is_ascii()) || after.is_some_and(|c| !c.is_ascii()) {
            return None;
        }
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            return Some(true);
        }
    }
    Some(false)
}

/// htmd's language of a code block from a class value: the first space-separated class that
/// starts with `language-`, without that prefix. Outer `None`: give up (an entity in the value).
fn language(src: &str, class: Option<Span>) -> Option<Option<Span>> {
    let Some((s, e)) = class else {
        return Some(None);
    };
    let v = &src[s..e];
    if v.contains('&') {
        return None;
    }
    let mut off = s;
    for cls in v.split(' ') {
        if cls.starts_with("language-") {
            return Some(Some((off + "language-".len(), off + cls.len())));
        }
        off += cls.len() + 1;
    }
    Some(None)
}

/// Approximate count of the `<li>` children of an `<ol>` whose content starts at `from`
/// (nested lists skipped): it sets the number width, and a wrong guess is caught at `</ol>`.
fn count_items(b: &[u8], from: usize) -> usize {
    let mut depth = 0usize;
    let mut n = 0;
    let mut pos = from;
    let delim = |c: Option<&u8>| c.is_some_and(|&c| is_html_ws(c) || c == b'>' || c == b'/');
    while let Some(off) = memchr(b'<', &b[pos..]) {
        let i = pos + off;
        let rest = &b[i + 1..];
        if rest.starts_with(b"li") && delim(rest.get(2)) {
            if depth == 0 {
                n += 1;
            }
        } else if (rest.starts_with(b"ol") || rest.starts_with(b"ul")) && delim(rest.get(2)) {
            depth += 1;
        } else if (rest.starts_with(b"/ol") || rest.starts_with(b"/ul")) && delim(rest.get(3)) {
            if depth == 0 {
                break;
            }
            depth -= 1;
        }
        pos = i + 1;
    }
    n
}

/// htmd's `digits` (list number width), to the float.
fn digits(num: usize) -> usize {
    if num == 0 {
        return 1;
    }
    ((num + 1) as f32).log10().ceil() as usize
}

fn longest_backtick_run(s: &str) -> usize {
    let mut longest = 0;
    let mut cur = 0;
    for &c in s.as_bytes() {
        if c == b'`' {
            cur += 1;
            longest = longest.max(cur);
        } else {
            cur = 0;
        }
    }
    longest
}

/// htmd's inline-code delimiter length. `None` for absurd backtick runs.
fn inline_delimiter(content: &str, pad: bool) -> Option<usize> {
    let mut seen: u64 = 0;
    let mut longest = 0;
    let mut cur = 0usize;
    for &c in content.as_bytes() {
        if c == b'`' {
            cur += 1;
            longest = longest.max(cur);
        } else if cur > 0 {
            if cur >= 64 {
                return None;
            }
            seen |= 1 << cur;
            cur = 0;
        }
    }
    if cur > 0 {
        if cur >= 64 {
            return None;
        }
        seen |= 1 << cur;
    }
    if pad {
        return Some(longest + 1);
    }
    (1..64).find(|n| seen & (1 << n) == 0)
}

/// The entity names that html5ever decodes without a `;` (HTML's legacy list).
const LEGACY_ENTITIES: [&[u8]; 106] = [
    b"AElig", b"AMP", b"Aacute", b"Acirc", b"Agrave", b"Aring", b"Atilde", b"Auml", b"COPY",
    b"Ccedil", b"ETH", b"Eacute", b"Ecirc", b"Egrave", b"Euml", b"GT", b"Iacute", b"Icirc",
    b"Igrave", b"Iuml", b"LT", b"Ntilde", b"Oacute", b"Ocirc", b"Ograve", b"Oslash", b"Otilde",
    b"Ouml", b"QUOT", b"REG", b"THORN", b"Uacute", b"Ucirc", b"Ugrave", b"Uuml", b"Yacute",
    b"aacute", b"acirc", b"acute", b"aelig", b"agrave", b"amp", b"aring", b"atilde", b"auml",
    b"brvbar", b"ccedil", b"cedil", b"cent", b"copy", b"curren", b"deg", b"divide", b"eacute",
    b"ecirc", b"egrave", b"eth", b"euml", b"frac12", b"frac14", b"frac34", b"gt", b"iacute",
    b"icirc", b"iexcl", b"igrave", b"iquest", b"iuml", b"laquo", b"lt", b"macr", b"micro",
    b"middot", b"nbsp", b"not", b"ntilde", b"oacute", b"ocirc", b"ograve", b"ordf", b"ordm",
    b"oslash", b"otilde", b"ouml", b"para", b"plusmn", b"pound", b"quot", b"raquo", b"reg",
    b"sect", b"shy", b"sup1", b"sup2", b"sup3", b"szlig", b"thorn", b"times", b"uacute", b"ucirc",
    b"ugrave", b"uml", b"uuml", b"yacute", b"yen", b"yuml",
];

fn named_entity(name: &[u8]) -> Option<char> {
    Some(match name {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        b"nbsp" => '\u{A0}',
        _ => return None,
    })
}

/// `&#…;` from `j` (after `#`): a printable character, and the position after `;`.
fn numeric_entity(b: &[u8], mut j: usize) -> Option<(char, usize)> {
    let hex = matches!(b.get(j), Some(b'x' | b'X'));
    if hex {
        j += 1;
    }
    let ds = j;
    let mut v: u32 = 0;
    while j < b.len() && j - ds < 8 {
        let d = match b[j] {
            c @ b'0'..=b'9' => (c - b'0') as u32,
            c @ b'a'..=b'f' if hex => (c - b'a' + 10) as u32,
            c @ b'A'..=b'F' if hex => (c - b'A' + 10) as u32,
            _ => break,
        };
        v = v * if hex { 16 } else { 10 } + d;
        j += 1;
    }
    if j == ds || b.get(j) != Some(&b';') {
        return None;
    }
    let printable = matches!(v, 0x20..=0x7E | 0xA0..=0xD7FF | 0xE000..=0xFDCF | 0xFDF0..=0x10FFFF)
        && v & 0xFFFE != 0xFFFE;
    if !printable {
        return None;
    }
    Some((char::from_u32(v)?, j + 1))
}

/// Every `&` in an attribute value must start a reference we decode.
fn check_attr_entities(src: &str, (s, e): Span) -> Option<()> {
    let b = src.as_bytes();
    let mut pos = s;
    while let Some(off) = memchr(b'&', &b[pos..e]) {
        let i = pos + off;
        let (_, next) = attr_entity(b, i, e)?;
        pos = next;
    }
    Some(())
}

/// The reference at `i` (an `&`) inside an attribute value ending at `e`.
fn attr_entity(b: &[u8], i: usize, e: usize) -> Option<(char, usize)> {
    let j = i + 1;
    match b[..e].get(j) {
        Some(c) if c.is_ascii_alphanumeric() => {
            let mut k = j;
            while k < e && b[k].is_ascii_alphanumeric() {
                k += 1;
            }
            if k >= e || b[k] != b';' {
                return None;
            }
            Some((named_entity(&b[j..k])?, k + 1))
        }
        Some(b'#') => {
            let (c, next) = numeric_entity(&b[..e], j + 1)?;
            Some((c, next))
        }
        _ => Some(('&', j)),
    }
}

/// Calls `f` on the pieces of the decoded attribute value `src[s..e]`.
fn for_each_decoded(src: &str, (s, e): Span, mut f: impl FnMut(&str)) {
    let b = src.as_bytes();
    let mut pos = s;
    while let Some(off) = memchr(b'&', &b[pos..e]) {
        let i = pos + off;
        f(&src[pos..i]);
        let (c, next) = attr_entity(b, i, e).expect("checked at the start tag");
        let mut buf = [0u8; 4];
        f(c.encode_utf8(&mut buf));
        pos = next;
    }
    f(&src[pos..e]);
}

/// Pushes the decoded link with `(` and `)` backslash-escaped (htmd's `escape_link_destination`).
fn push_link(src: &str, span: Span, out: &mut String) {
    for_each_decoded(src, span, |t| {
        for ch in t.chars() {
            if ch == '(' || ch == ')' {
                out.push('\\');
            }
            out.push(ch);
        }
    });
}

fn decoded_contains_space(src: &str, span: Span) -> bool {
    let mut any = false;
    for_each_decoded(src, span, |t| any |= t.contains(' '));
    any
}

/// htmd's `process_title`: lines trimmed, empty ones dropped, `"` escaped.
fn push_title(src: &str, span: Span, out: &mut String) {
    let mut d = String::new();
    for_each_decoded(src, span, |t| d.push_str(t));
    let mut wrote = false;
    for line in d.lines() {
        let line = line.trim_matches(is_doc_ws);
        if line.is_empty() {
            continue;
        }
        if wrote {
            out.push('\n');
        }
        for ch in line.chars() {
            if ch == '"' {
                out.push('\\');
            }
            out.push(ch);
        }
        wrote = true;
    }
}

/// Bytes that make a text node not plain in htmd's `is_plain_text` (besides a double space).
const NOT_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let special = b"\\*_`[]<\t\n\r\x0c\x0b";
    let mut k = 0;
    while k < special.len() {
        t[special[k] as usize] = true;
        k += 1;
    }
    t
};

/// htmd's `is_plain_text`: a table scan and a search for two spaces instead of its byte loop.
fn is_plain_text(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return true;
    };
    if matches!(first, b'=' | b'~' | b'>' | b'-' | b'+' | b'#' | b'0'..=b'9') {
        return false;
    }
    !bytes.iter().any(|&b| NOT_PLAIN[b as usize]) && DOUBLE_SPACE.find(bytes).is_none()
}

fn is_markdown_atx_heading(text: &str) -> bool {
    let mut is_prev_ch_hash = false;
    for ch in text.chars() {
        if ch == '#' {
            is_prev_ch_hash = true;
        } else if ch == ' ' {
            return is_prev_ch_hash;
        } else {
            return false;
        }
    }
    false
}

fn index_of_markdown_ordered_item_dot(text: &str) -> Option<usize> {
    let mut is_prev_ch_numeric = false;
    let mut dot_byte_offset = 0;
    let mut is_prev_ch_dot = false;
    for (byte_offset, ch) in text.char_indices() {
        if ch.is_numeric() {
            if is_prev_ch_dot {
                return None;
            }
            is_prev_ch_numeric = true;
        } else if ch == '.' {
            if !is_prev_ch_numeric {
                return None;
            }
            dot_byte_offset = byte_offset;
            is_prev_ch_dot = true;
        } else if ch == ' ' {
            if is_prev_ch_dot {
                return Some(dot_byte_offset);
            } else {
                return None;
            }
        } else {
            return None;
        }
    }
    None
}

/// htmd's `escape_html` decision for a `<` followed by `rest` (in the raw text).
fn escapes_lt(rest: &str) -> bool {
    let mut chars = rest.chars();
    match chars.next() {
        Some('!') => !chars.as_str().starts_with("[CDATA["),
        Some('?') => true,
        Some('/') => chars.next().is_some_and(|c| c.is_ascii_alphabetic()),
        Some(c) => c.is_ascii_alphabetic(),
        None => false,
    }
}

/// A text node outside `pre`, as htmd's `walk_node` emits it: `is_plain_text`, or
/// `escape_if_needed` + `escape_html` + `compress_whitespace`, then the leading-space trim.
fn emit_text(out: &mut String, text: &str, trim_leading: bool, last_space: bool) {
    if is_plain_text(text) {
        let t = if trim_leading || (text.starts_with(' ') && last_space) {
            text.trim_start_matches(' ')
        } else {
            text
        };
        out.push_str(t);
        return;
    }
    let Some(first) = text.chars().next() else {
        return;
    };
    let need_escape = matches!(first, '=' | '~' | '>' | '-' | '+' | '#' | '0'..='9')
        || text
            .bytes()
            .any(|b| matches!(b, b'\\' | b'*' | b'_' | b'`' | b'[' | b']'));
    let lead_backslash = need_escape
        && match first {
            '=' | '~' | '>' => true,
            '-' | '+' => text[1..].starts_with(' '),
            '#' => is_markdown_atx_heading(text),
            _ => false,
        };
    let dot = if need_escape && first.is_ascii_digit() {
        index_of_markdown_ordered_item_dot(text)
    } else {
        None
    };
    // The compressed text starts with a space iff the raw text starts with ASCII whitespace
    // (no leading backslash then); that space is trimmed on these conditions.
    let mut skip_ws =
        !lead_backslash && first.is_ascii_whitespace() && (trim_leading || last_space);
    if lead_backslash {
        out.push('\\');
    }
    let mut in_ws = false;
    for (i, ch) in text.char_indices() {
        if ch.is_ascii_whitespace() {
            if !in_ws {
                in_ws = true;
                if !skip_ws {
                    out.push(' ');
                }
            }
            continue;
        }
        in_ws = false;
        skip_ws = false;
        match ch {
            '\\' | '*' | '_' | '`' | '[' | ']' if need_escape => {
                out.push('\\');
                out.push(ch);
            }
            '.' if dot == Some(i) => out.push_str("\\."),
            '<' => {
                if escapes_lt(&text[i + 1..]) {
                    out.push('\\');
                }
                out.push('<');
            }
            _ => out.push(ch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::cleanup::html_to_markdown_htmd as reference;

    /// The fast path takes `html` and agrees with the reference.
    #[track_caller]
    fn same(html: &str) {
        let want = reference(html);
        match to_markdown_fast(html) {
            Some(got) => assert_eq!(got, want, "input {html:?}"),
            None => panic!("fell back on {html:?} (reference {want:?})"),
        }
    }

    /// The fast path declines `html`.
    #[track_caller]
    fn falls_back(html: &str) {
        assert_eq!(to_markdown_fast(html), None, "input {html:?}");
    }

    #[test]
    fn paragraphs_text_and_whitespace() {
        for html in [
            "",
            "plain text",
            "<p>one</p><p>two</p>",
            "<p>  lead and trail  </p>\n\n<p>\n x \n</p>",
            "  \n <p>x</p>  \n",
            "a<p>b</p>c",
            "<p>a  b\tc\nd</p>",
            "<p></p><p>x</p><p></p>",
            "<p>x</p>  <p>y</p>",
            "<p>x <b>y</b> z</p>",
            "<p>x<br>y<br/>z<br /></p>",
            "<br><br>x",
            "<p>a <br> b</p>",
            "<hr><p>x</p><hr/>",
            "x<hr>y",
            "text &amp; more &lt;tag&gt; &quot;q&quot; &#39;s&#39; &nbsp;x&nbsp; &apos;",
            "a < b and c > d, 3<4, <= >=, <>",
            "&#x41;&#66;&#x1F600; &#169;",
            "x & y &; &# z",
            "<p>日本語のテキスト。</p><p>émigré — ünïcödé</p>",
        ] {
            same(html);
        }
    }

    #[test]
    fn markdown_escapes() {
        for html in [
            "<p>*stars* and _under_ and `tick` and [link] and \\back</p>",
            "<p># not a heading</p><p>#hash</p><p>## two</p>",
            "<p>- not a list</p><p>-dash</p><p>+ plus</p><p>+x</p>",
            "<p>1. not a list</p><p>12. x</p><p>1.. y</p><p>1.x</p><p>3 items</p>",
            "<p>> quote</p><p>= eq</p><p>~ tilde</p><p>~~~ fence</p>",
            "<p>&lt;div&gt; and &lt;/p&gt; and &lt;!-- c --&gt; &lt;?x&gt; &lt;3 &lt;/3</p>",
            "<p>&lt;![CDATA[x]]&gt; and [&lt;![CDATA[y]]&gt;]</p>",
            "<p>a\n\n- b</p>",
            "<p>\n- b</p>",
            "<p>x <em>- y</em></p>",
            "<p>a  *b*   c</p>",
            "<p>2½. x</p>",
        ] {
            same(html);
        }
    }

    #[test]
    fn inline_elements() {
        for html in [
            "<p><strong>bold</strong> <b>b</b> <em>em</em> <i>i</i></p>",
            "<p><strong> spaced </strong>x<em>\n y \n</em></p>",
            "<p><b></b>x<b> </b>y<i>&nbsp;</i></p>",
            "<p>a<span>b</span>c<span> d </span>e<span>\nf\n</span></p>",
            "<p><span class=\"x\">s</span> <span>t</span></p>",
            "<p><code>x</code> <code> y </code> <code>a`b</code> <code>`x`</code> <code>a``b`c</code> <code></code></p>",
            "<p><code>multi\nline  code</code></p>",
            "<p><code>&lt;T&gt;</code> and <code>*p</code></p>",
            "<p><b>x <i>y</i> z</b></p>",
            "<p><b><i>both</i></b></p>",
            "<p><b>x</b><i>y</i></p>",
            "<p><b>x</b> <b>y</b></p>",
        ] {
            same(html);
        }
    }

    #[test]
    fn links() {
        for html in [
            "<p>see <a href=\"https://x.org\">this</a>.</p>",
            "<p><a href=\"https://x.org/a(b)\">p</a> <a href=\"a b\">sp</a></p>",
            "<p><a href='https://x.org/?a=1&amp;b=2' title=\"T &quot;q&quot;\">t</a></p>",
            "<p><a href=https://x.org/y>unquoted</a></p>",
            "<p><a>no href</a> <a title=\"t\">title only</a></p>",
            "<p><a href=\"u\"> pad </a>x</p>",
            "<p><a href=\"u\" title=\"line1\nline2\n\n\">multi</a></p>",
            "<p><a href=\"u\"><b>bold</b> link</a></p>",
            "<p><a href=\"u\"></a></p>",
            "<a href=\"u\" class=\"c\" rel=\"noopener\" target=_blank>attrs</a>",
        ] {
            same(html);
        }
    }

    #[test]
    fn lists() {
        for html in [
            "<ul><li>one</li><li>two</li></ul>",
            "<ol><li>one</li><li>two</li></ol>",
            "<ol><li><p>one</p></li><li><p>two</p></li></ol>",
            "<ol>\n<li>a</li>\n<li>b</li>\n</ol>",
            "<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>",
            "<ol start=\"2\"><li>x</li><li>y</li></ol>",
            "<ol start=\"0\"><li>x</li></ol><ol start=\"-3\"><li>y</li></ol><ol start=\"z\"><li>w</li></ol>",
            "<ol><li>1</li><li>2</li><li>3</li><li>4</li><li>5</li><li>6</li><li>7</li><li>8</li><li>9</li><li>10</li><li>11</li></ol>",
            "<ol start=\"8\"><li>a\nb</li><li><p>x</p><p>y</p></li><li>c</li></ol>",
            "<ul><li>a<ul><li>b</li><li>c</li></ul></li><li>d</li></ul>",
            "<ol><li>a<ol><li>b</li></ol></li><li>d<ul><li>e</li></ul></li></ol>",
            "<ul><li><p>para</p><pre><code>code\n</code></pre></li></ul>",
            "<ol><li></li><li>x</li></ol>",
            "<ul><li></li></ul><ol></ol><ul> </ul>",
            "<ol>text<li>a</li>more</ol>",
            "<ol><b>x</b><li>a</li></ol>",
            "<li>orphan</li><li>two</li>",
            "<p>before</p><ul><li>x</li></ul><p>after</p>",
            "<ul><li>a  </li><li>  b</li></ul>",
        ] {
            same(html);
        }
    }

    #[test]
    fn headings_quotes_rules() {
        for html in [
            "<h1>Title</h1><h2> Sub </h2><h3>x</h3><h4>x</h4><h5>x</h5><h6>x</h6>",
            "<h2>a <code>b</code></h2>text",
            "<blockquote><p>q1</p><p>q2</p></blockquote>",
            "<blockquote>one\ntwo</blockquote>",
            "<blockquote></blockquote>",
            "<blockquote><blockquote>deep</blockquote></blockquote>",
            "<hr><hr>",
        ] {
            same(html);
        }
    }

    #[test]
    fn code_blocks() {
        for html in [
            "<pre><code>plain\n</code></pre>",
            "<pre><code class=\"language-rust\">fn main() {}\n</code></pre>",
            "<pre class=\"language-py\"><code>x\n</code></pre>",
            "<pre><code class=\"hljs language-c-sharp x\">c</code></pre>",
            "<pre><code class=\"language-\">e</code></pre>",
            "<pre>\n<code>after lf</code></pre>",
            "<pre>\n\nraw pre text</pre>",
            "<pre>`tick first</pre><pre>~tilde</pre>",
            "<pre><code>```inner fence```\n````four</code></pre>",
            "<pre><code>a <span class=\"k\">b</span><span class=\"k\">c</span> &lt;d&gt;</code></pre>",
            "<pre><code>  indented\n\n\n  gaps  \n\n</code></pre>",
            "<pre> <code>x</code> </pre>",
            "<pre></pre><pre><code></code></pre>",
            "<p>Reverse it:</p><pre><div class=\"bg-black mb-4 rounded-md\"><div class=\"flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans\"><span class=\"\">python</span><button class=\"flex ml-auto gap-2\">Copy code</button></div><div class=\"p-4 overflow-y-auto\"><code class=\"!whitespace-pre hljs language-python\">xs = [<span class=\"hljs-number\">1</span>]\nxs.reverse()\n</code></div></div></pre><p>Done.</p>",
            "<div class=\"markdown prose w-full\"><p>x</p></div>",
            "<div><div>nested</div> divs</div>",
            "<p>a</p><div class=\"flex items-center\">gone <b>entirely</b></div><p>b</p>",
            "<pre><div>\nlf after removed div</div></pre>",
        ] {
            same(html);
        }
    }

    #[test]
    fn unsure_markup_falls_back() {
        let nine = "<li>x</li>".repeat(9);
        let header_li =
            format!("<ol>{nine}<div class=\"flex items-center\"><li>in the header</li></div></ol>");
        for html in [
            // Tags the converter does not know.
            "<table><tr><td>x</td></tr></table>",
            "<p>x<img src=\"a.png\"></p>",
            "<button>Copy code</button>",
            "<script>x</script>",
            "<style>p{}</style>",
            "<textarea>x</textarea>",
            "<p>x</p><custom-tag>y</custom-tag>",
            "<P>upper</P>",
            "<p CLASS=\"x\">upper attribute</p>",
            // Comments, declarations, processing instructions.
            "<p>a<!-- comment -->b</p>",
            "<![CDATA[x]]>",
            "<!DOCTYPE html><p>x</p>",
            "<?xml version=\"1.0\"?><p>x</p>",
            "a </ x> b",
            // Characters html5ever rewrites.
            "<p>a\r\nb</p>",
            "<p>a\0b</p>",
            "\u{FEFF}<p>bom</p>",
            // Entities not decoded here.
            "&copy; 2023",
            "&copy2023",
            "&ampx;",
            "a &amp b",
            "&#65 no semicolon",
            "&#1;",
            "&#128;",
            "&#xD800;",
            "&#xFFFE;",
            "<p>a &<div>amp;</div></p>",
            "<p>a &lt<div></div>;</p>",
            "<p>a <<div></div>b>c</b></p>",
            // Malformed or repaired nesting.
            "<p>a<ul><li>x</li></ul></p>",
            "<p>a<p>b</p></p>",
            "<p>a<pre>b</pre></p>",
            "<p><b>a<hr></b></p>",
            "<ul><li>a<li>b</li></ul>",
            "<ul><li><b>a<li>b</li></b></li></ul>",
            "<h1><h2>x</h2></h1>",
            "<a href=\"x\"><a href=\"y\">z</a></a>",
            "<b>x</p>",
            "</p>",
            "<p>x</b>",
            "<p>a</br>b</p>",
            "<p/>x",
            "<div/>x",
            "<div\u{0B}>x</div>",
            "<p class=\"x",
            "<p x=y\"z>w</p>",
            "<p x=\"a\"y=\"b\">w</p>",
            "<br x>text<hr/ >",
            // Markup inside code that htmd would render.
            "<pre><b>x</b></pre>",
            "<pre><p>x</p></pre>",
            "<pre><br></pre>",
            "<code><em>x</em></code>",
            "<pre><span><code>x</code></span></pre>",
            // Siblings htmd merges.
            "<b>x</b><b>y</b>",
            "<p><em>x</em><i>y</i></p>",
            "<p><code>a</code><code>b</code></p>",
            "<p><span>a</span><span>b</span></p>",
            "<pre><code>a</code><code>b</code></pre>",
            // Attributes.
            "<span class=\"math math-inline\">x^2</span>",
            "<a title=\"<b>\" href=\"u\">x</a>",
            "<a href=\"u&copy;\">x</a>",
            "<pre><code class=\"language-a&amp;b\">x</code></pre>",
            // A non-ASCII neighbour of `items-center`: Unicode word boundaries.
            "<div class=\"éitems-center\">x</div>y",
            // The code-header regex without its `</div>`: its button stays.
            "<pre><div class=\"flex items-center\"><span>py</span><button>Copy code</button><code>x</code></pre>",
            // An ordered list whose number width the look-ahead got wrong.
            header_li.as_str(),
        ] {
            falls_back(html);
        }
    }

    #[test]
    fn code_header_regex_cases() {
        for html in [
            // Word boundaries around `items-center`.
            "<p>a</p><div class=\"x-items-center\">gone</div><p>b</p>",
            "<p>a</p><div class=\"items-center_x\">kept</div><p>b</p>",
            "<p>a</p><div class=\"xitems-center\">kept</div><p>b</p>",
            // Only the exact `<div class="…">` form is the header.
            "<p>a</p><div id=\"h\" class=\"items-center\">kept</div><p>b</p>",
            "<p>a</p><div  class=\"items-center\">kept</div><p>b</p>",
            // `>` inside the class value: the header regex and the div regex disagree on the end.
            "<p>a</p><div class=\"a>b items-center\">gone</div>c",
            "<p>a</p><div class=\"a>b\">c</div>d",
            // The header up to the first `</div>` only.
            "<div class=\"flex items-center\"><div>x</div>y</div>z",
        ] {
            let want = reference(html);
            if let Some(got) = to_markdown_fast(html) {
                assert_eq!(got, want, "input {html:?}");
            }
        }
        same("<p>a</p><div class=\"x-items-center\">gone</div><p>b</p>");
        same("<p>a</p><div class=\"items-center_x\">kept</div><p>b</p>");
        same("<div class=\"flex items-center\"><div>x</div>y</div>z");
    }

    // ------------------------------------------------------------------ random markup

    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};

    /// Text pieces: Markdown specials, entities, whitespace runs, newlines, Unicode.
    const ATOMS: &[&str] = &[
        "a",
        "word",
        "Two words",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        " \n ",
        "*",
        "**",
        "_",
        "[",
        "]",
        "#",
        "## ",
        "`",
        "```",
        "~",
        "\\",
        "<",
        ">",
        "> ",
        "&",
        "&amp;",
        "&lt;",
        "&gt;",
        "&quot;",
        "&#39;",
        "&nbsp;",
        "&apos;",
        "&#x41;",
        "1. ",
        "2.",
        "10",
        "- ",
        "-",
        "+ ",
        "= ",
        "é",
        "日本語",
        "😀",
        "\u{a0}",
        ".",
        ",",
        "(",
        ")",
        "AT&T",
        "&copy",
        "&foo;",
        "<3",
        " < ",
        "a=b",
        "x_y",
        "Copy code",
        "&lt;b&gt;",
        "&lt;/p&gt;",
        "&lt;!x",
        "&#;",
        "&#x;",
        "\u{0C}",
        "\u{0B}",
        "\u{1}",
        "&#x1F600;",
        "&#32;",
        "R&D",
        "&#xZ",
        "\u{2003}",
        "\u{85}",
    ];

    /// Pieces the converter declines (mostly).
    const EDGE_ATOMS: &[&str] = &[
        "\u{FEFF}",
        "&#0;",
        "&#128;",
        "&#65",
        "&ampx;",
        "&amp",
        "&lt",
        "&#12345678;",
        "&copy;",
        "\r\n",
        "<!-- c -->",
        "</ x>",
        "<",
    ];

    fn edge_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![4 => prop::sample::select(ATOMS), 1 => prop::sample::select(EDGE_ATOMS)],
            0..6,
        )
        .prop_map(|v| v.concat())
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ATOMS), 0..6).prop_map(|v| v.concat())
    }

    /// Start tags with the attributes the handlers read (and some they ignore).
    const OPEN: &[&str] = &[
        "<p>",
        "<p class=\"x\">",
        "<pre>",
        "<pre class=\"language-sh\">",
        "<code>",
        "<code class=\"language-rust\">",
        "<code class=\"!whitespace-pre hljs language-python\">",
        "<ol>",
        "<ol start=\"3\">",
        "<ol start=\"9\">",
        "<ul>",
        "<li>",
        "<a href=\"https://x.org/a\">",
        "<a href=\"u (v)\" title=\"T &quot;t&quot;\">",
        "<a>",
        "<a href='q?a=1&amp;b=2'>",
        "<h1>",
        "<h2>",
        "<h4>",
        "<strong>",
        "<b>",
        "<em>",
        "<i>",
        "<span>",
        "<span class=\"hljs-number\">",
        "<blockquote>",
        "<div>",
        "<div class=\"markdown prose w-full\">",
        "<a href=\"a&#32;b\">",
        "<code class=language-x>",
        "<div\tdata-x='1'>",
        "<ol start=x>",
    ];

    /// Start tags the converter declines, or that end up unbalanced.
    const EDGE_OPEN: &[&str] = &[
        "<P>",
        "<div class=\"p-4 items-center\">",
        "<span class=\"math math-inline\">",
        "<table>",
        "<img src=x>",
        "<p/>",
        "<div/>",
        "<p x=y\"z>",
        "<br x=\"1\"/>",
        "<hr>",
        "<br>",
    ];

    #[derive(Clone, Debug)]
    enum Node {
        Text(String),
        Void(&'static str),
        Elem(&'static str, Vec<Node>, bool),
        /// The scraped code-block header that the regex removes.
        Header,
    }

    fn tag_name(open: &str) -> &str {
        let end = open[1..].find([' ', '>']).map_or(open.len(), |k| k + 1);
        &open[1..end]
    }

    fn render(nodes: &[Node], out: &mut String) {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Void(v) => out.push_str(v),
                Node::Header => out.push_str(
                    "<div class=\"flex items-center relative\"><span class=\"\">python</span><button class=\"flex\">Copy code</button></div>",
                ),
                Node::Elem(open, kids, closed) => {
                    out.push_str(open);
                    render(kids, out);
                    if *closed {
                        out.push_str("</");
                        out.push_str(tag_name(open));
                        out.push('>');
                    }
                }
            }
        }
    }

    fn tree() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            6 => text().prop_map(Node::Text),
            1 => edge_text().prop_map(Node::Text),
            1 => prop::sample::select(&["<br>", "<br/>", "<br />", "<hr>", "<hr/>"][..]).prop_map(Node::Void),
            1 => Just(Node::Header),
        ];
        let node = leaf.prop_recursive(5, 40, 5, |inner| {
            (
                prop::sample::select(OPEN),
                prop::collection::vec(inner, 0..5),
                prop::bool::weighted(0.95),
            )
                .prop_map(|(open, kids, closed)| Node::Elem(open, kids, closed))
        });
        prop::collection::vec(node, 1..5).prop_map(|nodes| {
            let mut s = String::new();
            render(&nodes, &mut s);
            s
        })
    }

    /// Tags in any order, balanced or not.
    fn soup() -> impl Strategy<Value = String> {
        let close: Vec<String> = OPEN.iter().map(|o| format!("</{}>", tag_name(o))).collect();
        let token = prop_oneof![
            3 => prop::sample::select(OPEN).prop_map(str::to_string),
            2 => prop::sample::select(close),
            3 => edge_text(),
            1 => prop::sample::select(EDGE_OPEN).prop_map(str::to_string),
            1 => prop::sample::select(&["</br>", "</div foo>", "</p >", "</P>"][..]).prop_map(str::to_string),
        ];
        prop::collection::vec(token, 0..24).prop_map(|v| v.concat())
    }

    /// Whenever the fast path answers, it equals the reference. Returns whether it answered.
    fn check(html: &str) -> std::result::Result<bool, TestCaseError> {
        match to_markdown_fast(html) {
            Some(got) => {
                prop_assert_eq!(got, reference(html), "input {:?}", html);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// htmd's `is_plain_text`, byte loop as written there: the oracle for ours.
    fn htmd_is_plain_text(text: &str) -> bool {
        let bytes = text.as_bytes();
        let Some(&first) = bytes.first() else {
            return true;
        };
        if matches!(first, b'=' | b'~' | b'>' | b'-' | b'+' | b'#' | b'0'..=b'9') {
            return false;
        }
        let mut previous_was_space = false;
        for &byte in bytes {
            match byte {
                b'\\' | b'*' | b'_' | b'`' | b'[' | b']' | b'<' => return false,
                b' ' => {
                    if previous_was_space {
                        return false;
                    }
                    previous_was_space = true;
                }
                b'\t' | b'\n' | b'\r' | 0x0C | 0x0B => return false,
                _ => previous_was_space = false,
            }
        }
        true
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn plain_text_test_equals_htmd(t in "[ a-c1#=*_`\\[\\]<\\\\\t\n\r\x0b\x0c\u{a0}é-]{0,12}") {
            prop_assert_eq!(is_plain_text(&t), htmd_is_plain_text(&t), "{:?}", t);
        }

        #[test]
        fn random_trees_agree_when_taken(html in tree()) {
            check(&html)?;
        }

        #[test]
        fn random_soup_agrees_when_taken(html in soup()) {
            check(&html)?;
        }
    }

    /// The generators are not vacuous: the fast path takes a fair share of the random trees.
    #[test]
    fn random_trees_are_mostly_taken() {
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::deterministic_rng(Config::default().rng_algorithm),
        );
        let strategy = tree();
        let (mut taken, n) = (0, 2000);
        for _ in 0..n {
            let html = strategy.new_tree(&mut runner).expect("value").current();
            taken += check(&html).expect("agrees") as usize;
        }
        let share = taken as f64 / n as f64;
        println!(
            "random trees taken by the fast path: {taken}/{n} ({:.1}%)",
            100.0 * share
        );
        assert!(share > 0.3, "{share}");
    }

    /// A longer random search (`KOALA_HTML_FUZZ` cases per generator, 100 000 by default;
    /// `KOALA_HTML_FUZZ_SEED`, a byte, picks another sequence):
    /// `cargo test --release -p koala-pipeline html::tests::fuzz -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn fuzz_many() {
        let n: usize = std::env::var("KOALA_HTML_FUZZ")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let seed: u8 = std::env::var("KOALA_HTML_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7);
        let config = Config::default();
        let mut runner = TestRunner::new_with_rng(
            config.clone(),
            TestRng::from_seed(config.rng_algorithm, &[seed; 32]),
        );
        for (name, strategy) in [("trees", tree().boxed()), ("soup", soup().boxed())] {
            let mut taken = 0;
            for _ in 0..n {
                let html = strategy.new_tree(&mut runner).expect("value").current();
                taken += check(&html).unwrap_or_else(|e| panic!("{e}")) as usize;
            }
            println!("{name}: {taken}/{n} taken by the fast path, all equal to the reference");
        }
    }

    // ------------------------------------------------------------------ corpora

    /// The text of every turn of the ShareGPT files under `dir` that cleanup would convert.
    fn html_turns(dir: &std::path::Path) -> Vec<String> {
        use crate::sources::{LoadOptions, Source, load_dir};
        let opts = LoadOptions {
            sources: Some(vec![Source::ShareGpt]),
            ..Default::default()
        };
        let loaded = load_dir(dir, &opts).expect("load");
        crate::schema::from_dataframe(&loaded.table)
            .expect("rows")
            .into_iter()
            .flat_map(|c| c.turns)
            .map(|t| t.text)
            .filter(|t| crate::stages::cleanup::looks_like_html(t))
            .collect()
    }

    /// Compares both paths on every turn: (taken by the fast path, mismatches shown).
    fn compare(turns: &[String]) -> (usize, Vec<String>) {
        let mut taken = 0;
        let mut bad = Vec::new();
        for t in turns {
            if let Some(fast) = to_markdown_fast(t) {
                taken += 1;
                let want = reference(t);
                if fast != want && bad.len() < 3 {
                    bad.push(format!("input {t:?}\n fast {fast:?}\n  ref {want:?}"));
                }
            }
        }
        (taken, bad)
    }

    /// Every HTML turn of a `koala synth --scale small` corpus: the same Markdown both ways, and
    /// at least 95% of them through the fast path.
    #[test]
    fn synth_small_corpus_agrees_and_is_covered() {
        use crate::synth::{Scale, SynthOptions, synth};
        let dir = tempfile::tempdir().expect("tempdir");
        synth(
            dir.path(),
            &SynthOptions {
                scale: Scale::Small,
                seed: 0,
            },
        )
        .expect("synth");
        let turns = html_turns(dir.path());
        assert!(turns.len() > 100, "{} HTML turns", turns.len());
        let (taken, bad) = compare(&turns);
        let share = taken as f64 / turns.len() as f64;
        println!(
            "synth small: {} HTML turns, {taken} ({:.2}%) through the fast path, {} mismatches",
            turns.len(),
            100.0 * share,
            bad.len()
        );
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        assert!(share >= 0.95, "fast path took {share}");
    }

    /// The shipped ShareGPT sample (`examples/data/sharegpt/`).
    #[test]
    fn shipped_sample_agrees() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
        let turns = html_turns(&dir);
        let (taken, bad) = compare(&turns);
        println!(
            "shipped sample: {} HTML turns, {taken} through the fast path",
            turns.len()
        );
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        assert_eq!(taken, turns.len());
    }

    /// The real-sized corpus (`KOALA_SG_DIR`, default `/tmp/sg60k`): coverage, mismatches and
    /// the time of both paths over every HTML turn, on one thread. Run it in release:
    /// `cargo test --release -p koala-pipeline html::tests::real -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn real_corpus_agrees_and_is_faster() {
        use std::time::Instant;
        let dir = std::env::var("KOALA_SG_DIR").unwrap_or_else(|_| "/tmp/sg60k".into());
        let turns = html_turns(std::path::Path::new(&dir));
        let bytes: usize = turns.iter().map(String::len).sum();
        let (taken, bad) = compare(&turns);
        println!(
            "{dir}: {} HTML turns ({:.1} MB), {taken} ({:.2}%) through the fast path, {} mismatches",
            turns.len(),
            bytes as f64 / 1e6,
            100.0 * taken as f64 / turns.len() as f64,
            bad.len()
        );
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        // Time each path over every turn, best of 5 (the fast ones first, on a fresh heap).
        let mut sink = 0usize;
        let mut best = |f: &dyn Fn(&str) -> String| {
            (0..5)
                .map(|_| {
                    let t0 = Instant::now();
                    for t in &turns {
                        sink += f(t).len();
                    }
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let t_fast = best(&|t| to_markdown_fast(t).unwrap_or_default());
        let t_new = best(&|t| crate::stages::cleanup::html_to_markdown(t));
        let t_ref = best(&|t| reference(t));
        println!(
            "reference (regex + htmd): {t_ref:.3} s ({:.1} MB/s)\n\
             html_to_markdown (fast path, fallback): {t_new:.3} s ({:.1} MB/s), {:.1}x\n\
             fast path alone: {t_fast:.3} s, {:.1}x   [{sink}]",
            bytes as f64 / 1e6 / t_ref,
            bytes as f64 / 1e6 / t_new,
            t_ref / t_new,
            t_ref / t_fast
        );
    }
}
