//! Test sets: the eval sets we ship, loaders for test-set files, and test-set curation.
//!
//! Both the curation pipeline (its leakage filter) and evaluation (`koala eval generate`) read
//! test sets through this crate, which has no polars, so evaluation builds light.
//!
//! * [`sets`]: the Koala test set and the self-instruct user-oriented set, embedded, with
//!   [`sets::resolve`] for `koala|self-instruct|FILE`.
//! * [`load`]: test-set files in the Koala, self-instruct, Alpaca and instruction-JSONL formats.
//! * [`curation`]: the non-English and coding flags that Koala's test-set curation applied.
//! * [`check`]: measures those flags against hand labels (`koala testset check`).
//!
//! ```
//! use koala_testsets::{curation::flag_prompt, sets::EvalSet};
//! let flagged = EvalSet::Koala.prompts().iter().filter(|p| flag_prompt(&p.prompt).coding).count();
//! assert!(flagged < 180);
//! ```
pub mod check;
pub mod curation;
pub mod error;
pub mod load;
pub mod sets;

pub use error::{Error, Result};
pub use load::{TestFormat, TestPrompt, load_test_set, load_test_sets};
pub use sets::EvalSet;
