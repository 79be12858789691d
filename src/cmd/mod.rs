//! One module per `koala` subcommand.
