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
pub mod rouge;
pub mod schema;
pub mod selfinstruct;
pub mod sources;
pub mod stages;
pub mod synth;
pub mod tokenize;

pub use error::{Error, Result};
