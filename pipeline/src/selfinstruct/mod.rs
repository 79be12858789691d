//! Stanford Alpaca's self-instruct: its ROUGE-L similarity filter ([`dedup`]).
pub mod dedup;
