//! Showing charts and tables in a notebook: HTML escaping, and evcxr's rich output.
//!
//! evcxr shows what a cell prints between `EVCXR_BEGIN_CONTENT <mime>` and `EVCXR_END_CONTENT`.
//! Jupyter shows the HTML form; the evcxr REPL drops HTML and shows the text form.
//!
//! ```
//! use koala_chart::display::escape;
//! assert_eq!(escape("<b>\"a\" & 'b'</b>"), "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;");
//! ```

/// Escapes text for HTML (element content and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Prints a value for evcxr in two forms: `plain` (what the evcxr REPL shows; it drops HTML)
/// and `html` (what Jupyter shows).
pub fn evcxr_rich(plain: &str, html: &str) {
    println!(
        "EVCXR_BEGIN_CONTENT text/plain\n{plain}\nEVCXR_END_CONTENT\n\
         EVCXR_BEGIN_CONTENT text/html\n{html}\nEVCXR_END_CONTENT"
    );
}
