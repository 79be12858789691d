//! Stanford Alpaca's self-instruct: the ROUGE-L similarity filter ([`dedup`]) and the generator's
//! prompt, parsing and rule filters ([`generate`]).
pub mod dedup;
pub mod generate;
