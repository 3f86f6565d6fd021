//! The checks every HTTP request passes before any route sees it: the `Host` header (DNS
//! rebinding) and the `Origin` header (cross-site requests from a browser), as the MCP
//! streamable-HTTP transport requires; plus who the client is, for counting refusals.
//!
//! - `Host` must name an allowed host (loopback names, plus `--allowed-host`), on every route:
//!   `/mcp`, `/healthz`, `/readyz`, `/metrics` and the OAuth metadata alike.
//! - A request that carries `Origin` must come from an allowed origin (loopback origins on any
//!   port, plus `--allowed-origin`); otherwise 403. A request without `Origin` (every non-browser
//!   client) passes.
//! - The client's address is the TCP peer, unless the peer is a proxy the operator listed with
//!   `--trusted-proxy`: then it is the nearest address in `X-Forwarded-For` that is not itself a
//!   trusted proxy. A client cannot pick its own source by sending that header directly.
//!
//! Refusals here are counted through [`crate::audit::refusals`] like refused credentials. This
//! module does not authenticate (see `auth::middleware`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::audit::bound::bound_str;
use crate::audit::event::{Deny, Event};
use crate::audit::refusals::{Class, Refusals};
use crate::service::Service;

/// An IP network, `ADDR/PREFIX` or a single address. (Hand-written: a prefix compare is a few
/// lines, and this keeps the lockfile as it is.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an IP address or ADDR/PREFIX network (for example 10.0.0.0/8 or 2001:db8::/32)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = prefix % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// What the guard allows; shared by every request.
pub struct Guard {
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub refusals: Arc<Refusals>,
    pub exec: Arc<Service>,
}

/// When the router is dropped (the server stopped serving), the interval's counts are written,
/// so a summary is never lost at shutdown.
impl Drop for Guard {
    fn drop(&mut self) {
        flush_refusals(&self.exec, &self.refusals, true);
    }
}

/// The client address of a request: see the module doc.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    // Walk X-Forwarded-For from the right (nearest hop first), skipping trusted proxies. The
    // header may be split over several lines; hyper keeps them in order.
    let hops = headers.get_all("x-forwarded-for").iter().rev().filter_map(|v| v.to_str().ok()).flat_map(|v| v.rsplit(',')).map(str::trim);
    for hop in hops.take(32) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|c| c.contains(ip)) => continue,
            Ok(ip) => return canonical(ip),
            // An unparsable hop: stop at the last address we could trust, the proxy itself.
            Err(_) => return peer,
        }
    }
    peer
}

/// The client address of `req` (its `ConnectInfo` peer, or loopback when served without one,
/// as in tests of the router alone).
pub fn request_client(req: &Request, trusted: &[Cidr]) -> IpAddr {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    client_ip(peer, req.headers(), trusted)
}

fn norm_host(h: &str) -> String {
    h.trim_matches('[').trim_matches(']').to_ascii_lowercase()
}

/// `(host, port)` of an allowed-host entry (`name`, `name:port`, `[v6]:port` or a bare v6).
fn parse_authority(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    match axum::http::uri::Authority::try_from(s) {
        Ok(a) => Some((norm_host(a.host()), a.port_u16())),
        Err(_) => Some((norm_host(s), None)),
    }
}

/// Whether the request's `Host` (or HTTP/2 `:authority`) names an allowed host. The same rule
/// as rmcp's check on `/mcp`: the name must match, and the port too when the entry gives one.
pub fn host_allowed(uri: &Uri, headers: &HeaderMap, allowed: &[String]) -> bool {
    let host = match headers.get(header::HOST) {
        Some(v) => match v.to_str().ok().and_then(|s| axum::http::uri::Authority::try_from(s).ok()) {
            Some(a) => (norm_host(a.host()), a.port_u16()),
            None => return false,
        },
        None => match uri.authority() {
            Some(a) => (norm_host(a.host()), a.port_u16()),
            None => return false,
        },
    };
    allowed.iter().filter_map(|a| parse_authority(a)).any(|(h, p)| h == host.0 && p.is_none_or(|p| host.1 == Some(p)))
}

/// The loopback origins allowed by default, any port, http or https.
pub fn default_origins() -> Vec<String> {
    let mut out = Vec::new();
    for scheme in ["http", "https"] {
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            out.push(format!("{scheme}://{host}:*"));
        }
    }
    out
}

/// `(scheme, host, port)` of an origin; the port defaults by scheme.
fn parse_origin(s: &str) -> Option<(String, String, Option<u16>)> {
    let uri: Uri = s.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let a = uri.authority()?;
    // An origin is scheme://host[:port] only.
    if uri.path() != "/" && !uri.path().is_empty() || a.as_str().contains('@') {
        return None;
    }
    let port = a.port_u16().or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    });
    Some((scheme, norm_host(a.host()), port))
}

/// Checks an `--allowed-origin` entry (for clap): `scheme://host[:port]`, `scheme://host:*` or
/// `null`.
pub fn origin_entry(s: &str) -> Result<String, String> {
    let base = s.trim().strip_suffix(":*").unwrap_or(s.trim());
    if s.trim().eq_ignore_ascii_case("null") || parse_origin(base).is_some() {
        Ok(s.trim().to_string())
    } else {
        Err(format!("{s:?} is not an origin: write scheme://host[:port] or scheme://host:* (for example https://app.example.com)"))
    }
}

/// Whether an `Origin` value is allowed. Entries are `scheme://host[:port]`, `scheme://host:*`
/// (any port), or `null` (the literal opaque origin, never allowed unless listed).
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim();
    if origin.eq_ignore_ascii_case("null") {
        return allowed.iter().any(|a| a.trim().eq_ignore_ascii_case("null"));
    }
    let Some((scheme, host, port)) = parse_origin(origin) else { return false };
    allowed.iter().any(|a| {
        let a = a.trim();
        let (base, any_port) = match a.strip_suffix(":*") {
            Some(b) => (b, true),
            None => (a, false),
        };
        match parse_origin(base) {
            Some((s, h, p)) => s == scheme && h == host && (any_port || p == port),
            None => false,
        }
    })
}

/// The axum layer: Host and Origin checks on every route.
pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let refusal = if !host_allowed(req.uri(), req.headers(), &g.allowed_hosts) {
        Some((Class::Host, "Forbidden: the Host header is not allowed (pass --allowed-host NAME to serve under another name)\n"))
    } else {
        match req.headers().get(header::ORIGIN) {
            None => None,
            Some(o) => match o.to_str() {
                Ok(o) if origin_allowed(o, &g.allowed_origins) => None,
                _ => Some((
                    Class::Origin,
                    "Forbidden: the Origin header is not allowed (pass --allowed-origin ORIGIN to allow a browser origin)\n",
                )),
            },
        }
    };
    let Some((class, message)) = refusal else { return next.run(req).await };
    let source = request_client(&req, &g.trusted_proxies);
    g.exec.metrics.refuse(class.as_str());
    let header_value = |name| req.headers().get(name).map(|v| bound_str(&String::from_utf8_lossy(v.as_bytes()), 128).into_owned());
    tracing::warn!(%source, reason = class.as_str(), host = ?header_value(header::HOST), origin = ?header_value(header::ORIGIN), "refused a request");
    let event = Event::HttpRefused {
        result: Deny,
        reason: class.as_str(),
        source: source.to_string(),
        host: header_value(header::HOST),
        origin: header_value(header::ORIGIN),
        path: bound_str(req.uri().path(), 128).into_owned(),
    };
    record_refusal(&g.exec, &g.refusals, source, class, event);
    (StatusCode::FORBIDDEN, message).into_response()
}

/// Counts one refusal and writes what [`Refusals`] says to write: a pending interval summary,
/// and this refusal's own line if it is one of the interval's samples.
pub fn record_refusal(exec: &Service, refusals: &Refusals, source: IpAddr, class: Class, event: Event) {
    let noted = refusals.note(source, class, Instant::now());
    let audit = exec.audit_log();
    if let Some(summary) = noted.summary {
        let _ = audit.record(&Event::RefusalSummary(summary));
    }
    if noted.write_sample {
        let _ = audit.record(&event);
    }
}

/// Writes the summary of the current interval, if due (`force`: whatever its age).
pub fn flush_refusals(exec: &Service, refusals: &Refusals, force: bool) {
    let summary = if force { refusals.flush_now() } else { refusals.flush_due(Instant::now()) };
    if let Some(s) = summary {
        let _ = exec.audit_log().record(&Event::RefusalSummary(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert!(one.contains("192.0.2.1".parse().unwrap()) && !one.contains("192.0.2.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/33".parse().unwrap();
        assert!(v6.contains("2001:db8:7fff::1".parse().unwrap()) && !v6.contains("2001:db8:8000::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.0.0.2".parse().unwrap());
        let lb: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &lb), "198.51.100.4".parse::<IpAddr>().unwrap(), "the nearest untrusted hop");
        assert_eq!(client_ip(peer, &h, &[]), peer, "no trusted proxy: the header is ignored");
        let stranger: IpAddr = "192.0.2.50".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &lb), stranger, "a client that is not a trusted proxy cannot pick its source");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(peer, &h, &lb), peer);
    }

    #[test]
    fn hosts_and_origins() {
        let hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), "example.com:8443".into()];
        let uri: Uri = "/mcp".parse().unwrap();
        let with_host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            m
        };
        assert!(host_allowed(&uri, &with_host("127.0.0.1:3000"), &hosts));
        assert!(host_allowed(&uri, &with_host("[::1]:3000"), &hosts));
        assert!(host_allowed(&uri, &with_host("example.com:8443"), &hosts));
        assert!(!host_allowed(&uri, &with_host("example.com:80"), &hosts));
        assert!(!host_allowed(&uri, &with_host("evil.test"), &hosts));
        let origins = default_origins();
        assert!(origin_allowed("http://localhost:5173", &origins));
        assert!(origin_allowed("http://[::1]:8080", &origins));
        assert!(origin_allowed("https://127.0.0.1", &origins));
        assert!(!origin_allowed("https://evil.test", &origins));
        assert!(!origin_allowed("http://localhost.evil.test", &origins));
        assert!(!origin_allowed("null", &origins));
        assert!(!origin_allowed("http://user@localhost:1", &origins));
        let extra = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed("https://app.example.com:443", &extra));
        assert!(!origin_allowed("https://app.example.com:8443", &extra));
        assert!(!origin_allowed("http://app.example.com", &extra));
    }
}
