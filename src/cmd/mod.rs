//! One module per `koala` subcommand.
pub mod generate;
pub mod jobs;
pub mod logits;
pub mod serve;
pub mod submit;
pub mod train;
