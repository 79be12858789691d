//! One module per `koala` subcommand.
pub mod bleu;
pub mod decontaminate;
