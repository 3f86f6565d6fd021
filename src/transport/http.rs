//! MCP over streamable HTTP at `/mcp`, plus `/healthz` and `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::mcp::WardenMcp;

#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// `Host` header values accepted (DNS-rebinding defence). Loopback names by default.
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()], max_body_bytes: 32 << 20 }
    }
}

/// Extra facts `/healthz` reports (hardening state, filled in by the caller).
#[derive(Clone, Default)]
pub struct Health {
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone)]
struct AppState {
    exec: Arc<Executor>,
    health: Arc<Health>,
}

pub fn router(exec: Arc<Executor>, opts: &HttpOptions, health: Health, shutdown: &CancellationToken) -> Router {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(opts.allowed_hosts.clone())
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_max_request_body_bytes(opts.max_body_bytes)
        .with_cancellation_token(shutdown.child_token());
    let factory_exec = exec.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(WardenMcp::http(factory_exec.clone())),
        LocalSessionManager::default().into(),
        config,
    );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { exec, health: Arc::new(health) })
        .nest_service("/mcp", mcp)
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = serde_json::Map::new();
    body.insert("status".into(), json!("ok"));
    body.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    body.insert("policy".into(), json!(s.exec.policy().name()));
    body.insert("runtimes".into(), json!(s.exec.sandbox().runtimes().languages().collect::<Vec<_>>()));
    body.insert("executions_running".into(), json!(s.exec.inflight()));
    body.insert("sessions".into(), json!(s.exec.sessions.len()));
    body.extend(s.health.details.clone());
    Json(serde_json::Value::Object(body))
}

/// Ready once the runtimes are loaded (they are before the listener serves) and until shutdown
/// begins.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.exec.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Serves until `shutdown` fires.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
