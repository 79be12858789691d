//! One module per `koala` subcommand.
pub mod generate;
pub mod logits;
pub mod train;
