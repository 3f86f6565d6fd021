//! Transports: MCP over stdio, and MCP over streamable HTTP (axum) with health endpoints.
//!
//! Both serve the same [`WardenMcp`] handler, wrapped in [`Traced`] for its request spans, over
//! one shared [`Service`]; shutting down is the
//! service's job (drain, cancel, remove workspaces), the transports only stop listening.

pub mod guard;
pub mod http;

use std::sync::Arc;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::mcp::WardenMcp;
use crate::mcp::trace::Traced;
use crate::service::Service;

/// Serves MCP on stdin/stdout until the client closes stdin or `shutdown` fires. Nothing but
/// JSON-RPC is written to stdout; logs go to stderr.
pub async fn serve_stdio(exec: Arc<Service>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handler = Traced(WardenMcp::stdio(exec));
    let service = tokio::select! {
        s = handler.serve(rmcp::transport::stdio()) => s?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let ct = service.cancellation_token();
    let stop = tokio::spawn(async move {
        shutdown.cancelled().await;
        ct.cancel();
    });
    let reason = service.waiting().await;
    stop.abort();
    tracing::info!(?reason, "stdio transport closed");
    Ok(())
}
