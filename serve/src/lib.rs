//! The OpenAI-compatible HTTP server (see docs/serving.md).
//!
//! * [`server`]: the routes (`/v1/models`, `/v1/completions`, `/v1/chat/completions`,
//!   `/v1/moderations`, `/health`, and the chat page at `/`), auth, limits, SSE streaming;
//! * [`api`]: OpenAI's request, response and error JSON, with field-naming validation;
//! * [`models`]: the served models (engine, tokenizer, chat format) and prompt fitting;
//! * [`moderation`]: builtin keyword/regex lists or a remote `/v1/moderations` service, the
//!   refuse/flag policy, and the builtin `POST /v1/moderations` response.
pub mod api;
pub mod models;
pub mod moderation;
pub mod server;

pub use models::{FormatName, Served};
pub use server::{AppState, ServerConfig, router};

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: std::sync::Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
