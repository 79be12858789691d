//! The daemon's process entry point, shared by `koala-trainerd` and `koala serve`.
use std::path::Path;
use std::sync::Arc;

use super::config::DaemonConfig;
use super::error::{DaemonError, Result};
use super::server;
use super::train_runner::{TrainRunner, TrainingPriority};

/// Loads `config`, serves until SIGINT/SIGTERM, and prints `listening on ADDR` to stdout once
/// bound (with `listen = "127.0.0.1:0"` that line tells the chosen port).
pub fn run_daemon(config: &Path) -> Result<()> {
    let cfg = DaemonConfig::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("koala-rpc")
        .build()
        .map_err(|e| DaemonError::Server(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let tls = cfg.tls.is_some();
        let runner = Arc::new(TrainRunner::with_priority(
            TrainingPriority::from_config(cfg.training_nice, cfg.training_idle),
        ));
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = server::serve(
            cfg,
            runner,
            move |addr| {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = writeln!(
                    out,
                    "listening on {addr}{}",
                    if tls { " (TLS)" } else { "" }
                );
                let _ = out.flush();
                tracing::info!("koala-trainerd listening on {addr}");
            },
            async move {
                shutdown_signal().await;
                let _ = stopping.send(());
            },
        );
        tokio::pin!(serve);
        // Graceful shutdown waits for open streams (WatchJob); give them a few seconds.
        tokio::select! {
            r = &mut serve => r,
            _ = async {
                if stopped.await.is_ok() {
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!("streams still open {SHUTDOWN_GRACE:?} after the shutdown signal; exiting");
                Ok(())
            }
        }
    })
}

/// How long open streams may delay the exit after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down; a running job resumes from its last checkpoint on restart");
}
