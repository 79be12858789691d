//! One module per `koala` subcommand.
pub mod curate;
