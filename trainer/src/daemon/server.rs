//! Start-up: open the store, start the scheduler, and serve gRPC (TrainerService behind the
//! bearer-token interceptor, reflection, and the open health service), optionally over TLS.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use koala_proto::v1::trainer_service_server::TrainerServiceServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::auth::BearerAuth;
use super::config::DaemonConfig;
use super::error::{DaemonError, Result};
use super::generate::GenerateOptions;
use super::runner::Runner;
use super::scheduler::{Core, Scheduler};
use super::service::{TrainerApi, TrainerRoutes};
use super::store::Store;

/// The store file inside `state_dir`.
pub const STORE_FILE: &str = "jobs.sqlite3";

/// Binds `cfg.listen` and serves until `shutdown` completes. `on_bound` gets the bound address
/// (useful with port 0).
pub async fn serve(
    cfg: DaemonConfig,
    runner: Arc<dyn Runner>,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| DaemonError::Server(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DaemonError::Server(e.to_string()))?;
    serve_on(cfg, runner, listener, move || on_bound(addr), shutdown).await
}

/// Serves on an already-bound listener.
pub async fn serve_on(
    cfg: DaemonConfig,
    runner: Arc<dyn Runner>,
    listener: TcpListener,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let token = cfg.read_token()?;
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::Io { path, source }
    };
    std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
    let data_root = cfg.data_root.canonicalize().map_err(io(&cfg.data_root))?;
    let state_dir = cfg.state_dir.canonicalize().map_err(io(&cfg.state_dir))?;
    let store = Store::open(&state_dir.join(STORE_FILE))?;
    let core = Arc::new(Core::new(store, data_root, state_dir));
    let scheduler = Scheduler::start(core.clone(), runner)?;
    let api = TrainerApi::new(core, scheduler, cfg.max_queued_jobs as u64).with_generate(
        GenerateOptions {
            device: cfg.generate_device.clone(),
            allow_dirs: cfg.generate_allow_dirs,
            ..Default::default()
        },
    );
    let auth = BearerAuth::new(&token);

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<TrainerServiceServer<TrainerApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(koala_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| DaemonError::Server(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(koala_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| DaemonError::Server(format!("reflection: {e}")))?;
    let trainer = TrainerRoutes::new(api, cfg.max_message_bytes, 64 << 20);

    let mut builder = Server::builder();
    if let Some(tls) = &cfg.tls {
        let cert = std::fs::read(&tls.cert).map_err(io(&tls.cert))?;
        let key = std::fs::read(&tls.key).map_err(io(&tls.key))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| DaemonError::Server(format!("TLS: {e}")))?;
    }
    let router = builder
        .add_service(health_svc)
        .add_service(InterceptedService::new(reflection, auth.clone()))
        .add_service(InterceptedService::new(reflection_alpha, auth.clone()))
        .add_service(InterceptedService::new(trainer, auth));
    on_ready();
    // Small gRPC responses must not wait for Nagle's algorithm (tonic sets TCP_NODELAY only on
    // listeners it binds itself): with it, a reply can sit ~40 ms behind a delayed ACK.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn
            && let Err(e) = c.set_nodelay(true)
        {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
        conn
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| DaemonError::Server(e.to_string()))
}
