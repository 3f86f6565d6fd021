//! The caller's trace context: W3C `traceparent`/`tracestate` from a request's `params._meta`
//! (SEP-414, the MCP semantic conventions' carrier) and from the HTTP request's headers.
//!
//! Per the conventions, `_meta` is the parent; an HTTP context that differs is kept as a link
//! (one HTTP request can carry several MCP messages, one MCP request several HTTP requests).
//! With no `_meta` context, the HTTP header's is the parent. Values are the caller's: an
//! over-long `tracestate` is ignored so that it cannot inflate every span of the call.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, SpanContext, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The W3C limit a `tracestate` should keep to (32 members of short keys and values).
const MAX_TRACESTATE_BYTES: usize = 512;

/// Where a request's spans hang: the caller's remote context (or none), and a context to link.
#[derive(Clone, Debug, Default)]
pub struct Parent {
    pub cx: Context,
    pub link: Option<SpanContext>,
}

impl Parent {
    /// The parent from a request's `_meta` object and, over HTTP, its headers.
    pub fn from_meta_and_headers(meta: &serde_json::Value, headers: Option<&axum::http::HeaderMap>) -> Parent {
        let from_meta = extract(&Meta(meta));
        let from_http = headers.map(|h| extract(&Headers(h)));
        let valid = |cx: &Context| cx.span().span_context().is_valid();
        match (from_meta, from_http) {
            (m, Some(h)) if valid(&m) && valid(&h) => {
                let link = h.span().span_context().clone();
                let link = (&link != m.span().span_context()).then_some(link);
                Parent { cx: m, link }
            }
            (m, _) if valid(&m) => Parent { cx: m, link: None },
            (_, Some(h)) if valid(&h) => Parent { cx: h, link: None },
            _ => Parent::default(),
        }
    }

    /// The span links of a request span under this parent.
    pub fn links(&self) -> Vec<Link> {
        self.link.iter().map(|sc| Link::new(sc.clone(), vec![KeyValue::new("warden.link", "http.traceparent")], 0)).collect()
    }
}

fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), carrier)
}

/// `_meta` as a carrier: string values of the unprefixed W3C keys only.
struct Meta<'a>(&'a serde_json::Value);

impl Extractor for Meta<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let v = self.0.get(key)?.as_str()?;
        (key != "tracestate" || v.len() <= MAX_TRACESTATE_BYTES).then_some(v)
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"].into_iter().filter(|k| self.0.get(*k).is_some()).collect()
    }
}

/// HTTP headers as a carrier, with the same bound on `tracestate`.
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let v = self.0.get(key)?.to_str().ok()?;
        (key != "tracestate" || v.len() <= MAX_TRACESTATE_BYTES).then_some(v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    const META_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const HTTP_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn trace_id(p: &Parent) -> String {
        p.cx.span().span_context().trace_id().to_string()
    }

    #[test]
    fn meta_is_the_parent_and_a_different_http_context_a_link() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HTTP_PARENT.parse().unwrap());
        let p = Parent::from_meta_and_headers(&serde_json::json!({"traceparent": META_PARENT}), Some(&headers));
        assert_eq!(trace_id(&p), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.cx.span().span_context().is_remote());
        assert_eq!(p.link.as_ref().unwrap().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");

        let http_only = Parent::from_meta_and_headers(&serde_json::json!({}), Some(&headers));
        assert_eq!(trace_id(&http_only), "0af7651916cd43dd8448eb211c80319c");
        assert!(http_only.link.is_none());
    }

    #[test]
    fn malformed_or_oversized_context_is_ignored() {
        for meta in [
            serde_json::json!({"traceparent": "00-zz-00f067aa0ba902b7-01"}),
            serde_json::json!({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}),
            serde_json::json!({"traceparent": 7}),
        ] {
            let p = Parent::from_meta_and_headers(&meta, None);
            assert!(!p.cx.span().span_context().is_valid(), "{meta}");
        }
        let long = serde_json::json!({"traceparent": META_PARENT, "tracestate": format!("a={}", "x".repeat(600))});
        let p = Parent::from_meta_and_headers(&long, None);
        assert!(p.cx.span().span_context().is_valid());
        assert_eq!(p.cx.span().span_context().trace_state().header(), "", "an over-long tracestate is dropped");
    }
}
