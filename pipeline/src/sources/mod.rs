//! Loaders, one file per published source format, into the conversation table.
