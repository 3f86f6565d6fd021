//! OTLP over HTTP (protobuf) to a collector the operator names with a server setting.
//!
//! The collector's address is fixed at start: a host name is resolved once, before the server
//! confines itself (a confined front cannot resolve names: no UDP socket, no resolver files),
//! and the exporter then talks to that address. The front's Landlock rules allow TCP connect to
//! that one port, and its seccomp filter allows making TCP sockets of that address's family;
//! nothing else on the network opens. Plain `http://` only: TLS to a collector is a sidecar's or
//! node agent's job.
//!
//! The OTLP encoding and protocol are `opentelemetry-otlp`'s; this module supplies its HTTP
//! client (hyper's, through `opentelemetry-http`), run on the server's tokio runtime because the
//! batch processor's thread has none.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};

/// How long one export may take before it is abandoned (the batch is dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A collector endpoint, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    /// What the operator wrote.
    pub endpoint: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// The traces URL, with the resolved address in place of any host name.
    pub url: String,
}

impl Collector {
    /// Parses and resolves `http://host:port[/path]`; the path defaults to OTLP's `/v1/traces`.
    pub fn resolve(endpoint: &str) -> Result<Collector, String> {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            format!("--otlp-endpoint {endpoint:?}: only http:// is supported (put TLS in a collector sidecar or node agent)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" { "/v1/traces" } else { path };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("--otlp-endpoint {endpoint:?}: give host:port, without user info"));
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else if authority.starts_with('[') && authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:4318")
        } else {
            authority.to_string()
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("--otlp-endpoint {endpoint:?}: {with_port} has no address"))?;
        Ok(Collector { endpoint: endpoint.to_string(), addr, url: format!("http://{addr}{path}") })
    }

    /// The OTLP/HTTP span exporter for this collector, its requests run on `runtime`.
    pub fn exporter(&self, runtime: tokio::runtime::Handle) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
        let client = OnRuntime { client: Arc::new(HyperClient::with_default_connector(EXPORT_TIMEOUT, None)), runtime };
        Ok(opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(self.url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()?)
    }
}

/// An HTTP client whose requests run on a tokio runtime, whoever polls them.
#[derive(Debug)]
struct OnRuntime {
    client: Arc<HyperClient>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime.spawn(async move { client.send_bytes(request).await }).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_to_one_address_and_the_traces_path() {
        let c = Collector::resolve("http://127.0.0.1:4318").unwrap();
        assert_eq!(c.addr, "127.0.0.1:4318".parse().unwrap());
        assert_eq!(c.url, "http://127.0.0.1:4318/v1/traces");
        let c = Collector::resolve("http://localhost:9999/custom/traces").unwrap();
        assert_eq!(c.addr.port(), 9999);
        assert!(c.url.ends_with(":9999/custom/traces"), "{}", c.url);
        assert_eq!(Collector::resolve("http://[::1]").unwrap().addr, "[::1]:4318".parse().unwrap());
        for bad in ["https://127.0.0.1:4318", "127.0.0.1:4318", "http://", "http://u:p@127.0.0.1:1", "http://no.such.host.invalid:1"] {
            assert!(Collector::resolve(bad).is_err(), "{bad}");
        }
    }
}
