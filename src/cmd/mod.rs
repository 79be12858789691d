//! One module per `koala` subcommand.
pub mod jobs;
pub mod serve;
pub mod submit;
