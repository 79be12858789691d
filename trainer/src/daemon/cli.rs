//! The daemon's process entry point, shared by `koala-trainerd` and `koala serve`.
use std::path::Path;
use std::sync::Arc;

use super::config::DaemonConfig;
use super::error::{DaemonError, Result};
use super::server;
use super::train_runner::TrainRunner;

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
        server::serve(
            cfg,
            Arc::new(TrainRunner),
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
            shutdown_signal(),
        )
        .await
    })
}

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
