//! Columnar curation of Koala/Alpaca-style dialogue data.
//!
//! Data flows one way: [`sources`] (one loader per published dataset) → the conversation table
//! ([`schema`]) → [`stages`] (cleanup, dedup, language, markers, leakage, mixture) with lineage →
//! [`format`] → [`tokenize`] → packed shards, the contract with the trainer.
pub mod bleu;
pub mod error;
/// The prompt formats, from the polars-free `koala-format` crate (so `koala_pipeline::format::…`
/// and `koala_format::…` name the same items).
pub use koala_format as format;
pub mod leakage;
pub mod notebook;
pub mod rouge;
pub mod schema;
pub mod selfinstruct;
pub mod sources;
pub mod stages;
pub mod synth;
#[cfg(feature = "tokenize")]
pub mod tokenize;

pub use error::{Error, Result};
/// The shipped eval sets and test-set loaders (`koala-testsets`), for the leakage filter.
pub use koala_testsets as testsets;
/// The polars this crate is built with, so that callers (notebooks) use the same version.
pub use polars;

/// What a notebook or a short program needs, in one `use koala_pipeline::prelude::*;`.
///
/// ```
/// use koala_pipeline::prelude::*;
/// let cfg = CurateConfig::preset("koala-all").unwrap();
/// assert!(cfg.sources.len() > 1);
/// let df: DataFrame = df!("source" => ["hc3", "oig", "hc3"]).unwrap();
/// let hc3 = df.lazy().filter(col("source").eq(lit("hc3"))).collect().unwrap();
/// assert_eq!(hc3.height(), 2);
/// ```
pub mod prelude {
    pub use crate::notebook::{html_table, reseat, show};
    pub use crate::schema::{Conversation, Turn, to_dataframe};
    pub use crate::sources::{LoadOptions, load_dir};
    pub use crate::stages::config::{CurateConfig, PRESETS};
    pub use crate::stages::report::Report;
    pub use crate::stages::run::{CurateOutput, Curated, curate, curate_dir, write_outputs};
    pub use crate::{Error, Result};
    pub use polars::prelude::{DataFrame, IntoLazy, col, df, lit};
}
