//! HTTP authentication and authorization against the real server: bearer tokens, JWTs, roles
//! mapping principals to profiles, rate limits, metrics, audited decisions, reload.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use harness::*;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "warden-test";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
}

fn sha(token: &str) -> String {
    warden::digest::sha256_hex(token.as_bytes())
}

/// Writes the auth file and a rate-limited profile for the `runner` role.
fn write_auth(files: &ServerFiles, runner_calls_per_minute: u32) -> PathBuf {
    let runner = include_str!("../../policies/strict.toml")
        .replace("name = \"strict\"", "name = \"runner\"")
        .replace("calls_per_minute = 60", &format!("calls_per_minute = {runner_calls_per_minute}"))
        .replace("mode = \"enforce\"", "mode = \"best-effort\"");
    std::fs::write(files.dir.path().join("runner.toml"), runner).unwrap();
    let auth = format!(
        r#"
[[roles]]
name = "analyst"
profile = "data-science"

[[roles]]
name = "runner"
profile = "runner.toml"

[[tokens]]
principal = "ci-bot"
sha256 = "{ci}"
roles = ["runner"]

[[tokens]]
principal = "stranger"
sha256 = "{stranger}"
roles = []

[jwt]
jwks = "{jwks}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_seconds = 5
"#,
        ci = sha("token-ci"),
        stranger = sha("token-stranger"),
        jwks = fixtures().join("jwks.json").display(),
    );
    let path = files.dir.path().join("auth.toml");
    std::fs::write(&path, auth).unwrap();
    path
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(alg: Algorithm, key_file: &str, kid: &str, claims: Value) -> String {
    let pem = std::fs::read(fixtures().join(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => unreachable!(),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "nbf": now() - 10, "roles": roles})
}

/// POSTs an MCP initialize with `token` and returns (status, headers, body).
async fn raw_initialize(url: &str, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    post_initialize(url, &headers).await
}

async fn server(files: &ServerFiles, calls_per_minute: u32) -> (HttpServer, PathBuf) {
    let auth = write_auth(files, calls_per_minute);
    let s = start_http(files, None, &["--auth", auth.to_str().unwrap()]).await;
    (s, auth)
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401_with_a_challenge() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 60).await;
    for token in [None, Some("wrong-token"), Some("a.b.c")] {
        let (status, headers, body) = raw_initialize(&s.url, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer ") && challenge.contains("/.well-known/oauth-protected-resource"), "{challenge}");
    }
    let meta: Value = reqwest::get(format!("{}/.well-known/oauth-protected-resource", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(meta["resource"], format!("{}/mcp", s.base));
    assert_eq!(meta["authorization_servers"], json!([ISSUER]));
    let denies = audit_events(&files, "auth", 3, Duration::from_secs(2)).await;
    assert!(denies.iter().filter(|e| e["result"] == "deny").count() >= 3, "{denies:?}");
}

#[tokio::test]
async fn bearer_tokens_map_through_roles_to_profiles() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 60).await;
    let (status, _, _) = raw_initialize(&s.url, Some("token-ci")).await;
    assert_eq!(status, 200);
    let (status, _, body) = raw_initialize(&s.url, Some("token-stranger")).await;
    assert_eq!(status, 403, "a principal without a role is forbidden: {body}");
    let client = connect_http(&s.url, Some("token-ci")).await;
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1, "the runner profile has no sessions: {tools:?}");
    let (_, r) = exec(&client, json!({"language": "python", "code": "print(1)"})).await;
    assert_eq!(r["audit"]["principal"], "ci-bot");
    assert_eq!(r["audit"]["profile"], "runner");
    assert_eq!(r["audit"]["limits"]["timeout_ms"], 5000, "the role's profile limits apply");
    let e = tool_error(call(&client, "execute_code", json!({"language": "python", "code": "1", "limits": {"timeout_ms": 6000}})).await);
    assert!(e.contains("timeout_ms") && e.contains("5000"), "no request can raise the profile's limits: {e}");
    let allows = audit_events(&files, "auth", 1, Duration::from_secs(2)).await;
    assert!(allows.iter().any(|e| e["result"] == "allow" && e["principal"] == "ci-bot" && e["method"] == "bearer"), "{allows:?}");
    let denied = audit_events(&files, "authz.deny", 1, Duration::from_secs(2)).await;
    assert!(denied.iter().any(|e| e["principal"] == "stranger"), "{denied:?}");
}

#[tokio::test]
async fn valid_jwts_of_each_algorithm_are_accepted() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 60).await;
    for (alg, key, kid) in
        [(Algorithm::RS256, "rsa.pem", "rsa-1"), (Algorithm::ES256, "ec.pem", "ec-1"), (Algorithm::EdDSA, "ed25519.pem", "ed-1")]
    {
        let token = jwt(alg, key, kid, claims("alice", &["analyst"]));
        let (status, _, body) = raw_initialize(&s.url, Some(&token)).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
    let token = jwt(Algorithm::ES256, "ec.pem", "ec-1", claims("alice", &["analyst"]));
    let client = connect_http(&s.url, Some(&token)).await;
    let (_, r) = exec(&client, json!({"language": "python", "code": "print(2)"})).await;
    assert_eq!(r["audit"]["principal"], format!("{ISSUER}#alice"));
    assert_eq!(r["audit"]["profile"], "data-science");
    let e = tool_error(call(&client, "execute_code", json!({"language": "javascript", "code": "1"})).await);
    assert!(e.contains("not allowed by policy \"data-science\""), "{e}");
}

#[tokio::test]
async fn bad_jwts_are_refused() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 60).await;
    let mut expired = claims("a", &["analyst"]);
    expired["exp"] = json!(now() - 120);
    let mut not_yet = claims("a", &["analyst"]);
    not_yet["nbf"] = json!(now() + 600);
    let mut wrong_aud = claims("a", &["analyst"]);
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("a", &["analyst"]);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_exp = claims("a", &["analyst"]);
    no_exp.as_object_mut().unwrap().remove("exp");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("a", &["analyst"])));
    // HS256 "signed" with the RSA public key as the secret (algorithm confusion).
    let jwks = std::fs::read_to_string(fixtures().join("jwks.json")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS256) },
        &claims("a", &["analyst"]),
        &EncodingKey::from_secret(jwks.as_bytes()),
    )
    .unwrap();
    let cases = [
        ("expired", jwt(Algorithm::RS256, "rsa.pem", "rsa-1", expired)),
        ("not yet valid", jwt(Algorithm::RS256, "rsa.pem", "rsa-1", not_yet)),
        ("wrong audience", jwt(Algorithm::RS256, "rsa.pem", "rsa-1", wrong_aud)),
        ("wrong issuer", jwt(Algorithm::RS256, "rsa.pem", "rsa-1", wrong_iss)),
        ("no exp", jwt(Algorithm::RS256, "rsa.pem", "rsa-1", no_exp)),
        ("wrong key", jwt(Algorithm::RS256, "other-rsa.pem", "rsa-1", claims("a", &["analyst"]))),
        ("unknown kid", jwt(Algorithm::RS256, "rsa.pem", "nope", claims("a", &["analyst"]))),
        ("alg none", alg_none),
        ("HS256 confusion", confused),
    ];
    for (name, token) in cases {
        let (status, _, body) = raw_initialize(&s.url, Some(&token)).await;
        assert_eq!(status, 401, "{name} must be refused: {body}");
    }
    let no_role = jwt(Algorithm::RS256, "rsa.pem", "rsa-1", claims("a", &["admin"]));
    assert_eq!(raw_initialize(&s.url, Some(&no_role)).await.0, 403);
}

#[tokio::test]
async fn per_principal_rate_limits_say_when_to_retry() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 3).await;
    let client = connect_http(&s.url, Some("token-ci")).await;
    for _ in 0..3 {
        let (r, _) = exec(&client, json!({"language": "javascript", "code": "1"})).await;
        assert_eq!(r.is_error, Some(false));
    }
    let r = call(&client, "execute_code", json!({"language": "javascript", "code": "1"})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    let text = text_of(&r);
    assert!(text.starts_with("rate limited") && text.contains("retry after"), "{text}");
    // The same wait, machine-readable: 3 calls a minute refill one every 20 s.
    let retry = r.meta.as_ref().and_then(|m| m.0.get("io.github.warden/retryAfterSeconds")).and_then(|v| v.as_u64());
    assert!(retry.is_some_and(|s| (1..=20).contains(&s)), "{:?}", r.meta);
    assert!(text.contains(&format!("retry after {} s", retry.unwrap())), "the text and the number agree: {text}");
    // Another principal is not affected.
    let other = connect_http(&s.url, Some(&jwt(Algorithm::EdDSA, "ed25519.pem", "ed-1", claims("bob", &["analyst"])))).await;
    let (r, _) = exec(&other, json!({"language": "python", "code": "1"})).await;
    assert_eq!(r.is_error, Some(false));
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"warden_refusals_total{reason="rate_limited"} 1"#), "{metrics}");
}

#[tokio::test]
async fn metrics_report_executions_sessions_and_denials() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 60).await;
    raw_initialize(&s.url, None).await;
    let token = jwt(Algorithm::RS256, "rsa.pem", "rsa-1", claims("m", &["analyst"]));
    let client = connect_http(&s.url, Some(&token)).await;
    exec(&client, json!({"language": "python", "code": "print(1)"})).await;
    exec(&client, json!({"language": "python", "code": "1/0"})).await;
    call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    let resp = reqwest::get(format!("{}/metrics", s.base)).await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let m = resp.text().await.unwrap();
    for needle in [
        r#"warden_executions_total{language="python",outcome="ok"} 1"#,
        r#"warden_executions_total{language="python",outcome="error"} 1"#,
        r#"warden_execution_duration_seconds_count{language="python"} 2"#,
        r#"warden_execution_fuel_count{language="python"} 2"#,
        "warden_sessions_active 1",
        "warden_executions_active 0",
        r#"warden_refusals_total{reason="unauthenticated"} 1"#,
        r#"warden_queue_wait_seconds_count 2"#,
        "warden_audit_write_failures_total 0",
        "warden_trace_export_failures_total 0",
        r#"warden_build_info{version=""#,
        r#"warden_hardening{layer="mode",state="#,
    ] {
        assert!(m.contains(needle), "missing {needle:?} in\n{m}");
    }
}

#[tokio::test]
async fn sighup_reloads_profiles_and_the_reload_is_audited() {
    let files = ServerFiles::new();
    let (s, _) = server(&files, 2).await;
    let runner = files.dir.path().join("runner.toml");
    let text = std::fs::read_to_string(&runner).unwrap();
    std::fs::write(&runner, text.replace("timeout_ms = 5_000", "timeout_ms = 4_000")).unwrap();
    let pid = s.child.id().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloads = audit_events(&files, "policy.reload", 1, Duration::from_secs(5)).await;
    assert_eq!(reloads[0]["result"], "ok", "{reloads:?}");
    let client = connect_http(&s.url, Some("token-ci")).await;
    let (_, r) = exec(&client, json!({"language": "javascript", "code": "1"})).await;
    assert_eq!(r["audit"]["limits"]["timeout_ms"], 4000);

    std::fs::write(&runner, "this is not a profile").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloads = audit_events(&files, "policy.reload", 2, Duration::from_secs(5)).await;
    assert_eq!(reloads[1]["result"], "error", "{reloads:?}");
    let (_, r) = exec(&client, json!({"language": "javascript", "code": "1"})).await;
    assert_eq!(r["audit"]["limits"]["timeout_ms"], 4000, "a failed reload keeps the profiles in force");
}

#[test]
fn non_loopback_http_without_auth_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--http", "0.0.0.0:0"])
        .env("WARDEN_HOME", common::home().root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without authentication"));
}
