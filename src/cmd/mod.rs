//! One module per `koala` subcommand.
pub mod bleu;
pub mod curate;
pub mod curate_merge;
pub mod decontaminate;
pub mod eval;
pub mod export;
pub mod generate;
pub mod jobs;
pub mod load;
pub mod logits;
pub mod lora;
pub mod plan;
pub mod self_instruct;
pub mod serve;
pub mod serve_model;
pub mod submit;
pub mod synth;
pub mod testset;
pub mod tokenize;
pub mod train;
pub mod watermark;
pub mod weights;

/// The inference engine's idle hook in the servers (`serve-model`, and `serve` for the daemon's
/// `Generate`): mimalloc keeps the pages a burst freed (a full batch's KV caches, the
/// connections' buffers) until more allocator activity comes, which an idle server never makes;
/// this hands them back to the OS, so resident memory returns to where it was.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
