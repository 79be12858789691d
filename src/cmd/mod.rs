//! One module per `koala` subcommand.
pub mod curate;
pub mod load;
pub mod synth;
