//! One module per `koala` subcommand.
pub mod generate;
pub mod logits;
pub mod train;
pub mod jobs;
pub mod serve;
pub mod submit;
pub mod bleu;
pub mod decontaminate;
