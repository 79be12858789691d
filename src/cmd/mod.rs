//! One module per `koala` subcommand.
pub mod bleu;
pub mod curate;
pub mod decontaminate;
pub mod eval;
pub mod generate;
pub mod jobs;
pub mod load;
pub mod logits;
pub mod self_instruct;
pub mod serve;
pub mod serve_model;
pub mod submit;
pub mod synth;
pub mod testset;
pub mod tokenize;
pub mod train;
pub mod watermark;
