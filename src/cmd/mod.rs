//! One module per `koala` subcommand.
pub mod load;
pub mod synth;
