//! `koala serve --config daemon.toml`: run the gRPC trainer daemon in the foreground (the same
//! as `koala-trainerd`; see docs/daemon.md).
use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// The daemon config (listen, data_root, state_dir, token_file, max_queued_jobs, [tls]).
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // The daemon samples checkpoints (`Generate`) on the inference engine.
    koala_model::engine::set_idle_hook(super::release_freed_memory);
    koala_trainer::daemon::cli::run_daemon(&args.config)?;
    Ok(())
}
