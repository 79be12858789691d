//! Test-set curation: flag non-English and coding-related prompts, as Koala removed them by hand.
//!
//! Every flag carries its reasons (the rules that fired), so that a reviewer can check it.
//!
//! - **Language**: whatlang's detection on the whole prompt. A prompt is flagged `non_english`
//!   when the detected language is not English with whatlang reliable or at least 0.5 confident,
//!   the prompt has at least 12 letters, and English function words make up less than 15 % of
//!   its words (reason `lang:<code>(<confidence>)`); or when more than 30 % of its letters are
//!   outside the Latin script (reason `script:<name>`, prompts of 4+ letters). Language ID is
//!   unreliable on short text, hence the guards.
//! - **Coding**: any of
//!   - `code_fence`: a Markdown fence (```` ``` ````) or `~~~`;
//!   - `keyword:<k>`: a programming construct such as `def f(`, `#include`, `console.log`,
//!     `SELECT … FROM`, `public static`, `=>`, `std::`, `</div>`, or the name of a programming
//!     language or tool used with a coding verb (`write a python function`, `in javascript`, …);
//!   - `symbols:<density>`: more than 8 % of the non-space characters are code symbols
//!     (`{}[]();=<>*/\|&^%$#~`) in a prompt of at least 40 non-space characters.
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The curation verdict on one test prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptFlags {
    /// whatlang's ISO 639-3 code, or `und` when it found none.
    pub lang: String,
    /// whatlang's confidence in 0..=1.
    pub lang_confidence: f64,
    pub non_english: bool,
    pub coding: bool,
    /// The rules that fired, `;`-separated (empty when nothing fired).
    pub reasons: String,
}

static CODE_PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    let p = |name: &'static str, re: &str| (name, Regex::new(re).expect("static regex"));
    vec![
        p("def", r"\bdef\s+\w+\s*\("),
        p("include", r"#include\s*[<\x22]"),
        p("console.log", r"console\.log\s*\("),
        p("sql", r"(?i)\bselect\b[^.?!]{1,200}\bfrom\b\s+\w+"),
        p(
            "public_static",
            r"\bpublic\s+(static\s+)?(void|class|int|String)\b",
        ),
        p("arrow_fn", r"\)\s*=>"),
        p("std::", r"\bstd::"),
        p("html_tag", r"</(div|span|html|body|script|p|a|table)>"),
        p(
            "import",
            r"(?m)^\s*(import\s+[\w.]+|from\s+[\w.]+\s+import\b|using\s+System)",
        ),
        p("function_decl", r"\bfunction\s+\w*\s*\("),
        p(
            "print_call",
            r"\b(print|printf|println|System\.out\.println)\s*\(",
        ),
        p(
            "shell",
            r"(?m)^\s*(\$\s+)?(sudo|pip|npm|git|cargo)\s+(install|clone|run|build|commit)\b",
        ),
        p(
            "language_task",
            r"(?i)\b(write|implement|debug|fix|refactor|code|program|script|function|class|method|regex|query|compile)\b[^.?!\n]{0,60}\b(python|javascript|typescript|java|c\+\+|c#|rust|golang|sql|bash|html|css|php|ruby|kotlin|swift|matlab|regex|regular expression)\b",
        ),
        p(
            "language_task",
            r"(?i)\b(in|using|with)\s+(python|javascript|typescript|java|c\+\+|c#|rust|golang|bash|php|ruby|kotlin|swift|matlab)\b",
        ),
    ]
});

/// Common English function words: a prompt where they make up 15 % of the words is not flagged
/// on whatlang's say-so alone (whatlang is weak on short text).
const ENGLISH_FUNCTION_WORDS: &[&str] = &[
    "the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "you", "on", "with",
    "as", "i", "be", "at", "this", "have", "from", "or", "by", "what", "how", "can", "my", "do",
    "are", "your", "me", "about", "if", "will", "would", "should", "some", "there", "which", "why",
    "when", "where", "who", "was", "were", "not", "but", "they", "we", "he", "she", "his", "her",
];

fn is_code_symbol(c: char) -> bool {
    matches!(
        c,
        '{' | '}'
            | '['
            | ']'
            | '('
            | ')'
            | ';'
            | '='
            | '<'
            | '>'
            | '*'
            | '/'
            | '\\'
            | '|'
            | '&'
            | '^'
            | '%'
            | '$'
            | '#'
            | '~'
    )
}

/// Applies the curation rules to one prompt.
///
/// ```
/// use koala_testsets::curation::flag_prompt;
/// let f = flag_prompt("Write a Python function that reverses a list.");
/// assert!(f.coding && !f.non_english, "{f:?}");
/// let f = flag_prompt("¿Cuál es la capital de Francia y por qué es tan famosa en el mundo?");
/// assert!(f.non_english && !f.coding, "{f:?}");
/// ```
pub fn flag_prompt(prompt: &str) -> PromptFlags {
    let mut reasons: Vec<String> = Vec::new();
    // Language.
    let letters: Vec<char> = prompt.chars().filter(|c| c.is_alphabetic()).collect();
    let info = whatlang::detect(prompt);
    let (lang, conf, reliable) = match &info {
        Some(i) => (i.lang().code().to_string(), i.confidence(), i.is_reliable()),
        None => ("und".to_string(), 0.0, false),
    };
    let mut non_english = false;
    if letters.len() >= 4 {
        let words: Vec<String> = prompt
            .split(|c: char| !c.is_alphabetic() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(|w| w.to_lowercase())
            .collect();
        let english = words
            .iter()
            .filter(|w| ENGLISH_FUNCTION_WORDS.contains(&w.as_str()))
            .count() as f64
            / words.len().max(1) as f64;
        if lang != "eng" && (reliable || conf >= 0.5) && letters.len() >= 12 && english < 0.15 {
            non_english = true;
            reasons.push(format!("lang:{lang}({conf:.2})"));
        }
        let non_latin = letters
            .iter()
            .filter(|c| whatlang::detect_script(&c.to_string()) != Some(whatlang::Script::Latin))
            .count();
        let frac = non_latin as f64 / letters.len() as f64;
        if frac > 0.3 {
            non_english = true;
            let script = info
                .map(|i| i.script().name().to_string())
                .unwrap_or_else(|| "unknown".into());
            reasons.push(format!("script:{script}"));
        }
    }
    // Coding.
    let mut coding = false;
    if prompt.contains("```") || prompt.contains("~~~") {
        coding = true;
        reasons.push("code_fence".into());
    }
    for (name, re) in CODE_PATTERNS.iter() {
        if re.is_match(prompt) {
            coding = true;
            let r = format!("keyword:{name}");
            if !reasons.contains(&r) {
                reasons.push(r);
            }
        }
    }
    let non_space: Vec<char> = prompt.chars().filter(|c| !c.is_whitespace()).collect();
    if non_space.len() >= 40 {
        let density = non_space.iter().filter(|c| is_code_symbol(**c)).count() as f64
            / non_space.len() as f64;
        if density > 0.08 {
            coding = true;
            reasons.push(format!("symbols:{density:.3}"));
        }
    }
    PromptFlags {
        lang,
        lang_confidence: conf,
        non_english,
        coding,
        reasons: reasons.join(";"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_english_is_not_flagged() {
        for p in [
            "What are some good tips for writing a cover letter for a marketing job?",
            "Explain why the sky is blue to a five year old.",
            "Give me three ideas for a birthday party.",
        ] {
            let f = flag_prompt(p);
            assert!(!f.non_english && !f.coding, "{p}: {f:?}");
        }
    }

    #[test]
    fn flags_code_and_foreign_text_with_reasons() {
        let f = flag_prompt("Why does this fail?\n```\nfor i in range(10) print(i)\n```");
        assert!(f.coding && f.reasons.contains("code_fence"), "{f:?}");
        let f = flag_prompt("fix this: int main() { int x[3] = {1,2,3}; return x[1] + x[2]; }");
        assert!(f.coding && f.reasons.contains("symbols:"), "{f:?}");
        let f = flag_prompt("请告诉我如何学习机器学习，以及需要哪些数学基础知识？");
        assert!(f.non_english && f.reasons.contains("script:"), "{f:?}");
        let f = flag_prompt("Wie kann ich am besten Deutsch lernen, wenn ich wenig Zeit habe?");
        assert!(f.non_english && f.reasons.contains("lang:deu"), "{f:?}");
    }
}
