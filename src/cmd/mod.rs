//! One module per `koala` subcommand.
pub mod tokenize;
