//! Evaluation as the Koala study ran it: answer the eval sets with any system, rate the answers
//! blind in pairs (people in a web page, or an LLM judge), and report Bradley–Terry ratings with
//! bootstrap intervals and the Koala win-rate chart. See docs/evaluation.md.
//!
//! * [`rows`]: the JSONL rows between the commands (responses, ratings).
/// OpenAI-compatible chat client with retries (shared by `generate` and `judge`).
#[cfg(feature = "run")]
pub mod client;
pub mod error;
/// `eval generate`: answers from every system, resumable.
#[cfg(feature = "run")]
pub mod generate;
/// `eval judge`: pairwise LLM judge, both orders, cached.
#[cfg(feature = "run")]
pub mod judge;
/// `eval rate`: the blind pairwise rating web app and its database.
#[cfg(feature = "run")]
pub mod rate;
pub mod report;
pub mod rows;
/// The systems `eval generate` asks (`--system NAME=SPEC`).
#[cfg(feature = "run")]
pub mod systems;

pub use error::{Error, Result};
pub use rows::{RatingRow, ResponseRow, Side, Usage, Winner};

/// What a notebook or a short program needs to report on ratings, in one
/// `use koala_eval::prelude::*;`.
///
/// ```no_run
/// use koala_eval::prelude::*;
/// let ratings = read_ratings(&["ratings.jsonl".into()])?;
/// let report = build(&ratings, &ReportOptions::default())?;
/// println!("{}", report.to_markdown());
/// # Ok::<(), koala_eval::Error>(())
/// ```
pub mod prelude {
    pub use crate::report::{Report, ReportOptions, build, read_ratings};
    pub use crate::rows::{RatingRow, ResponseRow, Side, Winner, read_jsonl};
    pub use crate::{Error, Result};
}
