//! The axum layer that authenticates every `/mcp` request, audits the decision, and attaches
//! the principal and profile for the MCP handler.
//!
//! Refusals (401, 403) are not logged one line each: anyone who can reach the port can send
//! them. They are counted per client source and interval, with a few bounded sample lines
//! ([`crate::audit::refusals`]); every value in them is length-bounded.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::{AuthConfig, AuthContext, Decision};
use crate::audit::bound::bound_str;
use crate::audit::event::{Allow, Deny, Event};
use crate::audit::refusals::{Class, Refusals};
use crate::service::Service;
use crate::transport::guard::{Cidr, record_refusal, request_client};

/// Longest refusal reason written to the audit log or returned to the caller. Reasons can quote
/// the request (a JWT key id, a decoding error).
pub const MAX_REASON_BYTES: usize = 256;

#[derive(Clone)]
pub struct AuthState {
    pub config: Arc<RwLock<Arc<AuthConfig>>>,
    pub exec: Arc<Service>,
    pub refusals: Arc<Refusals>,
    pub trusted_proxies: Arc<Vec<Cidr>>,
}

/// `http://HOST` of the request, for URLs in auth responses.
///
/// The `Host` has already passed the allowed-host check (`transport::guard`), so it is one of
/// the operator's names.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{}", bound_str(host, 256))
}

pub async fn require_auth(State(state): State<AuthState>, mut req: Request, next: Next) -> Response {
    let config = state.config.read().unwrap_or_else(|e| e.into_inner()).clone();
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let decision = config.authenticate(authorization);
    let audit = state.exec.audit_log();
    match decision {
        Decision::Allow { principal, method, role, profile } => {
            let event =
                Event::AuthAllowed { result: Allow, principal: principal.clone(), method: method.as_str(), role, profile: profile.clone() };
            if let Err(e) = audit.record(&event) {
                tracing::error!(error = %e, "audit log unavailable; refusing the request");
                return (StatusCode::SERVICE_UNAVAILABLE, "the audit log cannot be written; nothing runs until it is fixed\n")
                    .into_response();
            }
            req.extensions_mut().insert(AuthContext { principal, profile });
            next.run(req).await
        }
        Decision::Unauthenticated { reason } => {
            state.exec.metrics.refuse("unauthenticated");
            let reason = bound_str(&reason, MAX_REASON_BYTES).into_owned();
            let source = request_client(&req, &state.trusted_proxies);
            let event = Event::AuthRefused { result: Deny, reason: reason.clone(), source: source.to_string() };
            record_refusal(&state.exec, &state.refusals, source, Class::Unauthenticated, event);
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
            state.exec.metrics.refuse("no_role");
            let reason = bound_str(&reason, MAX_REASON_BYTES).into_owned();
            let source = request_client(&req, &state.trusted_proxies);
            let event = Event::Forbidden {
                principal: principal.clone(),
                method: method.as_str(),
                reason: reason.clone(),
                source: source.to_string(),
            };
            record_refusal(&state.exec, &state.refusals, source, Class::Forbidden, event);
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "forbidden", "message": format!("{principal} may not use this server: {reason}")})),
            )
                .into_response()
        }
    }
}

/// Whether a request carries credentials that authenticate to a principal with a role, checked
/// without writing anything (for `/healthz` details, which must not become a way to grow the
/// log).
pub fn is_authenticated(config: &AuthConfig, headers: &HeaderMap) -> bool {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    matches!(config.authenticate(authorization), Decision::Allow { .. })
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
