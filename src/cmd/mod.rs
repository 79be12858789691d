//! One module per `koala` subcommand.
pub mod bleu;
pub mod curate;
pub mod decontaminate;
pub mod load;
pub mod synth;
