//! One module per `koala` subcommand.
pub mod bleu;
pub mod decontaminate;
pub mod generate;
pub mod jobs;
pub mod logits;
pub mod serve;
pub mod submit;
pub mod train;
