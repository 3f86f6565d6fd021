//! What a caller without credentials can see and do at the HTTP edge: `/healthz` says only its
//! status; `/healthz`, `/readyz`, `/metrics`, the OAuth metadata and `/mcp` all refuse a foreign
//! `Host`; a browser `Origin` that is not allowed gets 403 (no `Origin` passes). Each case also
//! checks that an authenticated principal is still served.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::harness::*;
use crate::{Layer, case};

/// The bearer token of the principal the attacks must not disturb.
pub const VICTIM_TOKEN: &str = "token-victim-5b1e";
/// A token that authenticates but holds no role (403).
pub const ROLELESS_TOKEN: &str = "token-roleless-77";

/// Writes an auth file: the victim (role `user`, default profile), a roleless principal, and
/// JWT validation against the test JWKS (so forged JWTs reach key lookup).
pub fn write_auth(files: &ServerFiles) -> PathBuf {
    let jwks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/jwks.json");
    let auth = format!(
        "[[roles]]\nname = \"user\"\nprofile = \"default\"\n\n\
         [[tokens]]\nprincipal = \"victim\"\nsha256 = \"{}\"\nroles = [\"user\"]\n\n\
         [[tokens]]\nprincipal = \"roleless\"\nsha256 = \"{}\"\nroles = []\n\n\
         [jwt]\njwks = {:?}\nissuer = \"https://idp.test\"\naudience = \"warden-test\"\n",
        warden::digest::sha256_hex(VICTIM_TOKEN.as_bytes()),
        warden::digest::sha256_hex(ROLELESS_TOKEN.as_bytes()),
        jwks.to_str().unwrap(),
    );
    let path = files.dir.path().join("auth.toml");
    std::fs::write(&path, auth).unwrap();
    path
}

/// `warden serve --http` with the auth file above, plus `extra` flags.
pub async fn auth_server(files: &ServerFiles, extra: &[&str]) -> HttpServer {
    let auth = write_auth(files);
    let mut args = vec!["--auth", auth.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_http(files, None, &args).await
}

/// The victim runs a call and gets the right answer.
pub async fn victim_served(url: &str) {
    let client = connect_http(url, Some(VICTIM_TOKEN)).await;
    let (_, s) = exec(&client, py("print(6 * 7)")).await;
    assert_eq!(s["stdout"], "42\n", "the authenticated principal was not served: {s}");
    assert_eq!(s["audit"]["principal"], "victim");
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn health_without_credentials_says_only_its_status() {
    case("healthz_details_without_credentials", Layer::Policy);
    let files = ServerFiles::new();
    let s = auth_server(&files, &[]).await;
    let home = crate::common::home().root().display().to_string();
    for headers in
        [vec![], vec![("authorization", "Bearer wrong")], vec![("authorization", format!("Bearer {ROLELESS_TOKEN}").leak() as &str)]]
    {
        let (status, body) = get(&format!("{}/healthz", s.base), &headers).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"status": "ok"}), "{headers:?}: {body}");
        assert!(!body.contains(&home) && !body.contains("audit") && !body.contains("landlock"), "{body}");
    }
    // With credentials that authenticate, the details are there.
    let (status, body) = get(&format!("{}/healthz", s.base), &[("authorization", &format!("Bearer {VICTIM_TOKEN}"))]).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert!(v["hardening"]["landlock"].is_object() && v["runtimes"].is_array(), "{body}");
    // Checking credentials for health wrote nothing: no auth line per probe.
    let denies = audit_events(&files, "auth", 0, std::time::Duration::ZERO).await;
    assert!(denies.is_empty(), "health checks must not reach the audit log: {denies:?}");
    victim_served(&s.url).await;

    // Without --auth (a loopback server), nobody gets the details over HTTP.
    let files = ServerFiles::new();
    let s = start_http(&files, None, &[]).await;
    let (_, body) = get(&format!("{}/healthz", s.base), &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn every_route_refuses_a_foreign_host() {
    case("dns_rebinding_host_on_every_route", Layer::Policy);
    let files = ServerFiles::new();
    let s = auth_server(&files, &[]).await;
    for path in ["/healthz", "/readyz", "/metrics", "/.well-known/oauth-protected-resource", "/mcp"] {
        let (status, body) = get(&format!("{}{path}", s.base), &[("host", "rebind.evil.test")]).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("Host header is not allowed"), "{path}: {body}");
        let (status, _) = get(&format!("{}{path}", s.base), &[("host", "localhost")]).await;
        assert_ne!(status, 403, "{path} with an allowed Host");
    }
    assert_eq!(post_initialize(&s.url, &[("host", "rebind.evil.test"), ("authorization", &format!("Bearer {VICTIM_TOKEN}"))]).await.0, 403);
    victim_served(&s.url).await;
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"warden_refusals_total{reason="bad_host"} 6"#), "{metrics}");

    // An operator's extra name is accepted on every route too.
    let files = ServerFiles::new();
    let s = auth_server(&files, &["--allowed-host", "warden.internal"]).await;
    let (status, _) = get(&format!("{}/healthz", s.base), &[("host", "warden.internal")]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_browser_origin_that_is_not_allowed_gets_403() {
    case("cross_origin_browser_request", Layer::Policy);
    let files = ServerFiles::new();
    let s = auth_server(&files, &["--allowed-origin", "https://app.example.com"]).await;
    let bearer = format!("Bearer {VICTIM_TOKEN}");
    let auth = ("authorization", bearer.as_str());
    for origin in ["https://evil.test", "http://localhost.evil.test", "null", "not an origin", "https://app.example.com:8443"] {
        assert_eq!(post_initialize(&s.url, &[auth, ("origin", origin)]).await.0, 403, "{origin}");
        let (status, _) = get(&format!("{}/healthz", s.base), &[("origin", origin)]).await;
        assert_eq!(status, 403, "{origin} on /healthz");
    }
    // Loopback origins, the operator's origin, and no Origin at all (non-browser clients) pass.
    for origin in [Some("http://localhost:5173"), Some("http://127.0.0.1:9"), Some("https://app.example.com"), None] {
        let mut headers = vec![auth];
        headers.extend(origin.map(|o| ("origin", o)));
        assert_eq!(post_initialize(&s.url, &headers).await.0, 200, "{origin:?}");
    }
    victim_served(&s.url).await;
    // The refusals were counted, with at most a few sample lines.
    let samples = audit_events(&files, "http.deny", 0, std::time::Duration::ZERO).await;
    assert!(!samples.is_empty() && samples.len() <= warden::audit::refusals::SAMPLES_PER_SOURCE as usize, "{samples:?}");
    assert!(samples.iter().all(|l| l["reason"] == "bad_origin" || l["reason"] == "bad_host"), "{samples:?}");
}
