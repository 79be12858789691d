//! `koala-trainerd --config daemon.toml`: the gRPC trainer daemon (see docs/daemon.md).
use std::path::PathBuf;

use clap::Parser;

// Many small allocations per RPC (prost messages, h2 frames): mimalloc serves them at a
// fraction of glibc's cost, which shows directly in the daemon's tail latency under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The koala trainer daemon: queues fine-tuning jobs and runs them, resuming after a crash.
#[derive(Parser)]
#[command(name = "koala-trainerd", version)]
struct Args {
    /// The daemon's TOML config (listen, data_root, state_dir, token_file, ...).
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // `Generate` samples checkpoints on the inference engine: when it goes idle, hand the pages
    // a burst freed back to the OS (mimalloc keeps them until more allocator activity comes).
    koala_model::engine::set_idle_hook(release_freed_memory);
    koala_trainer::daemon::cli::run_daemon(&args.config)?;
    Ok(())
}

fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
