//! The axum layer that authenticates every `/mcp` request, audits the decision, and attaches
//! the principal and profile for the MCP handler.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::{AuthConfig, AuthContext, Decision};
use crate::executor::Executor;

#[derive(Clone)]
pub struct AuthState {
    pub config: Arc<RwLock<Arc<AuthConfig>>>,
    pub exec: Arc<Executor>,
}

/// `http://HOST` of the request, for URLs in auth responses.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

pub async fn require_auth(State(state): State<AuthState>, mut req: Request, next: Next) -> Response {
    let config = state.config.read().unwrap_or_else(|e| e.into_inner()).clone();
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let decision = config.authenticate(authorization);
    let audit = state.exec.audit_log();
    match decision {
        Decision::Allow { principal, method, role, profile } => {
            let event = json!({"result": "allow", "principal": principal, "method": method.as_str(), "role": role, "profile": profile});
            if let Err(e) = audit.record("auth", event) {
                tracing::error!(error = %e, "audit log unavailable; refusing the request");
                return (StatusCode::SERVICE_UNAVAILABLE, "the audit log cannot be written; nothing runs until it is fixed\n").into_response();
            }
            req.extensions_mut().insert(AuthContext { principal, profile });
            next.run(req).await
        }
        Decision::Unauthenticated { reason } => {
            state.exec.metrics.deny("unauthenticated");
            let _ = audit.record("auth", json!({"result": "deny", "reason": reason}));
            let metadata = format!("{}/.well-known/oauth-protected-resource", base_url(req.headers()));
            let challenge = format!(r#"Bearer error="invalid_token", resource_metadata="{metadata}""#);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                Json(json!({"error": "unauthorized", "message": format!("authentication required: {reason}")})),
            )
                .into_response()
        }
        Decision::Forbidden { principal, method, reason } => {
            state.exec.metrics.deny("no_role");
            let _ = audit.record("authz.deny", json!({"principal": principal, "method": method.as_str(), "reason": reason}));
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "forbidden", "message": format!("{principal} may not use this server: {reason}")})),
            )
                .into_response()
        }
    }
}

/// RFC 9728 protected-resource metadata.
pub async fn protected_resource_metadata(State(state): State<AuthState>, headers: HeaderMap) -> impl IntoResponse {
    let config = state.config.read().unwrap_or_else(|e| e.into_inner()).clone();
    let base = base_url(&headers);
    Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": config.issuers(),
        "bearer_methods_supported": ["header"],
        "resource_name": "warden",
    }))
}
