//! The audit log against outsiders and editors: refused traffic cannot grow it beyond a stated
//! bound (while an authenticated principal keeps being served), no single line is unbounded,
//! the source of refusals behind a proxy is the forwarded client only when the proxy is
//! trusted, and any byte changed, added or removed in a real log fails verification with its
//! line number.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::edge::{ROLELESS_TOKEN, VICTIM_TOKEN, auth_server, victim_served};
use crate::harness::*;
use crate::{Layer, case};

/// Refused-traffic lines in a log: samples and interval summaries.
fn refusal_lines(files: &ServerFiles) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(files.audit_log()).unwrap();
    text.lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["kind"] == "auth" && v["result"] == "deny")
                || ["authz.deny", "http.deny", "auth.refused"].contains(&v["kind"].as_str().unwrap())
        })
        .map(|l| (serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string(), l.len() + 1))
        .collect()
}

/// A JWT whose header names a key id of `kid_bytes` bytes (the signature is never checked: the
/// key lookup fails first).
fn jwt_with_kid(kid_bytes: usize) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "K".repeat(kid_bytes)});
    format!("{}.{}.c2lnbmF0dXJl", b64(&header), b64(&json!({"sub": "x"})))
}

/// Bytes the refused traffic of one interval may add: the sample lines (each well under 1 KiB:
/// every caller-chosen value in them is cut to 256 bytes) and one summary line.
const REFUSAL_BOUND_BYTES: usize = warden::audit::refusals::SAMPLES_PER_SOURCE as usize * 1024 + 4096;

#[tokio::test]
async fn unauthenticated_floods_grow_the_audit_log_by_a_bounded_amount() {
    case("audit_growth_from_refused_requests", Layer::Limits);
    let files = ServerFiles::new();
    let mut s = auth_server(&files, &[]).await;
    let before = std::fs::metadata(files.audit_log()).unwrap().len();
    let huge_kid = jwt_with_kid(20_000);
    let kinds: Vec<Option<String>> =
        vec![None, Some("Bearer wrong-token".into()), Some(format!("Bearer {huge_kid}")), Some(format!("Bearer {ROLELESS_TOKEN}"))];
    const REQUESTS: usize = 2000;
    let started = Instant::now();
    // Eight attackers in parallel, while the victim keeps calling.
    let attackers: Vec<_> = (0..8)
        .map(|a| {
            let (url, kinds) = (s.url.clone(), kinds.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0..REQUESTS / 8 {
                    let auth = kinds[(a + i) % kinds.len()].clone();
                    let headers: Vec<(&str, &str)> = auth.as_deref().map(|v| vec![("authorization", v)]).unwrap_or_default();
                    let status = post_initialize(&url, &headers).await.0;
                    assert!(status == 401 || status == 403, "{status}");
                    refused += 1;
                }
                refused
            })
        })
        .collect();
    let victim = connect_http(&s.url, Some(VICTIM_TOKEN)).await;
    let mut victim_calls = 0;
    while !attackers.iter().all(|a| a.is_finished()) {
        let (_, r) = exec(&victim, py("print(6 * 7)")).await;
        assert_eq!(r["stdout"], "42\n", "the victim was not served during the flood: {r}");
        victim_calls += 1;
    }
    let mut refused = 0;
    for a in attackers {
        refused += a.await.unwrap();
    }
    assert_eq!(refused, REQUESTS);
    eprintln!("{REQUESTS} refused requests in {:?}; the victim made {victim_calls} calls meanwhile", started.elapsed());

    let lines = refusal_lines(&files);
    let bytes: usize = lines.iter().map(|(_, n)| n).sum();
    assert!(bytes <= 2 * REFUSAL_BOUND_BYTES, "refused traffic wrote {bytes} bytes in {} lines: {lines:?}", lines.len());
    let log = std::fs::read_to_string(files.audit_log()).unwrap();
    assert!(!log.contains(&"K".repeat(300)), "a caller-chosen key id reached the log unbounded");
    assert!(log.lines().all(|l| l.len() <= 64 * 1024 + 512), "every line is bounded");
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!(r#"warden_refusals_total{{reason="unauthenticated"}} {}"#, REQUESTS / 4 * 3)),
        "every refusal is still counted: {metrics}"
    );
    victim_served(&s.url).await;

    // At shutdown the interval's counts are written as one summary line.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(s.child.id().unwrap() as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(20), s.child.wait()).await.unwrap().unwrap();
    // (One interval normally; a very slow run may cross an interval boundary, giving two.)
    let summaries = audit_events(&files, "auth.refused", 1, Duration::from_secs(1)).await;
    assert!(!summaries.is_empty() && summaries.len() <= 2, "{summaries:?}");
    let sum = |f: &dyn Fn(&serde_json::Map<String, Value>) -> u64| summaries.iter().map(f).sum::<u64>();
    let written = sum(&|s| s["written"].as_u64().unwrap());
    assert!(written <= warden::audit::refusals::SAMPLES_PER_SOURCE as u64 * summaries.len() as u64);
    assert_eq!(sum(&|s| s["total"].as_u64().unwrap()), REQUESTS as u64, "{summaries:?}");
    assert!(summaries.iter().all(|s| s["sources"][0]["source"] == "127.0.0.1"), "{summaries:?}");
    assert_eq!(sum(&|s| s["sources"][0]["reasons"]["forbidden"].as_u64().unwrap_or(0)), (REQUESTS / 4) as u64, "{summaries:?}");
    let grown = std::fs::metadata(files.audit_log()).unwrap().len() - before;
    let refusal_bytes: usize = refusal_lines(&files).iter().map(|(_, n)| n).sum();
    eprintln!(
        "the log grew {grown} bytes in all, {refusal_bytes} of them for {REQUESTS} refused requests (bound {REFUSAL_BOUND_BYTES} per interval)"
    );
    assert!(refusal_bytes <= REFUSAL_BOUND_BYTES * summaries.len(), "{refusal_bytes}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden")).args(["audit", "verify"]).arg(files.audit_log()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn refusals_are_counted_by_the_forwarded_client_only_behind_a_trusted_proxy() {
    case("forged_x_forwarded_for", Layer::Policy);
    let forwarded = [("x-forwarded-for", "198.51.100.23")];
    // Not trusted: the header is ignored; the TCP peer is the source.
    let files = ServerFiles::new();
    let s = auth_server(&files, &[]).await;
    assert_eq!(post_initialize(&s.url, &forwarded).await.0, 401);
    let samples = audit_events(&files, "auth", 1, Duration::from_secs(2)).await;
    assert_eq!(samples[0]["source"], "127.0.0.1", "{samples:?}");
    victim_served(&s.url).await;

    // Trusted: the forwarded client is the source.
    let files = ServerFiles::new();
    let s = auth_server(&files, &["--trusted-proxy", "127.0.0.0/8"]).await;
    assert_eq!(post_initialize(&s.url, &forwarded).await.0, 401);
    let samples = audit_events(&files, "auth", 1, Duration::from_secs(2)).await;
    assert_eq!(samples[0]["source"], "198.51.100.23", "{samples:?}");
    victim_served(&s.url).await;
}

#[tokio::test]
async fn one_call_writes_a_bounded_audit_line() {
    case("audit_line_of_a_call_with_many_long_artifact_paths", Layer::Limits);
    let files = ServerFiles::new();
    let s = auth_server(&files, &[]).await;
    let client = connect_http(&s.url, Some(VICTIM_TOKEN)).await;
    // 1,500 artifacts with 200-byte names: about 400 KB of paths and digests in one record.
    let code = "import os\nfor i in range(1500):\n    open(f'{i:04d}' + 'p' * 196, 'w').write('x')\nprint('ok')";
    let (_, r) = exec(&client, py(code)).await;
    assert_eq!(r["outcome"], "ok", "{r}");
    let log = std::fs::read_to_string(files.audit_log()).unwrap();
    let line = log.lines().find(|l| l.contains("\"kind\":\"execution\"")).expect("the execution line");
    assert!(line.len() <= 64 * 1024 + 512, "one call wrote a {} byte line", line.len());
    let v: Value = serde_json::from_str(line).unwrap();
    let arts = v["artifacts"].as_array().expect("artifacts are still recorded, capped");
    assert!(arts.last().unwrap().as_str().is_some_and(|m| m.contains("more")), "the cap is marked: {:?}", arts.last());
    victim_served(&s.url).await;
}

/// A real log with several kinds of events: server start and stop, auth allow and deny, a
/// forbidden principal, executions (one failing), a session.
async fn real_log() -> (ServerFiles, Vec<u8>) {
    let files = ServerFiles::new();
    let mut s = auth_server(&files, &[]).await;
    assert_eq!(post_initialize(&s.url, &[]).await.0, 401);
    assert_eq!(post_initialize(&s.url, &[("authorization", &format!("Bearer {ROLELESS_TOKEN}"))]).await.0, 403);
    let client = connect_http(&s.url, Some(VICTIM_TOKEN)).await;
    exec(&client, py("print('é ünïcode')")).await;
    exec(&client, js("throw new Error('x')")).await;
    call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(s.child.id().unwrap() as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(20), s.child.wait()).await.unwrap().unwrap();
    let bytes = std::fs::read(files.audit_log()).unwrap();
    (files, bytes)
}

#[tokio::test]
async fn flipping_any_byte_of_a_real_log_fails_with_its_line_number() {
    case("audit_log_byte_edits", Layer::Policy);
    let (files, good) = real_log().await;
    let text = String::from_utf8(good.clone()).unwrap();
    let kinds: std::collections::BTreeSet<String> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string()).collect();
    for k in ["server.start", "auth", "authz.deny", "execution.start", "execution", "server.stop"] {
        assert!(kinds.contains(k), "the sample log has no {k} line: {kinds:?}");
    }
    let ok = warden::audit::verify::verify_reader(&good[..]);
    assert_eq!(ok.problem, None);
    assert_eq!(ok.legacy_lines, 0);
    let line_of = |i: usize| good[..i].iter().filter(|&&b| b == b'\n').count() + 1;
    let mut checked = 0;
    for i in 0..good.len() {
        for flip in [0x01u8, 0x20, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            let r = warden::audit::verify::verify_reader(&bad[..]);
            let problem = r.problem.unwrap_or_else(|| panic!("byte {i} ^ {flip:#x} (line {}) still verifies", line_of(i)));
            assert!(problem.starts_with(&format!("line {}:", line_of(i))), "byte {i} ^ {flip:#x}: {problem}");
            checked += 1;
        }
    }
    // A byte added or removed anywhere fails too (every 7th position, to keep this quick).
    for i in (0..good.len()).step_by(7) {
        let mut removed = good.clone();
        removed.remove(i);
        let p = warden::audit::verify::verify_reader(&removed[..]).problem.expect("a removed byte is found");
        assert!(p.starts_with(&format!("line {}:", line_of(i))), "removed byte {i}: {p}");
        let mut added = good.clone();
        added.insert(i, b' ');
        let p = warden::audit::verify::verify_reader(&added[..]).problem.expect("an added byte is found");
        assert!(p.starts_with(&format!("line {}:", line_of(i))), "added byte {i}: {p}");
    }
    eprintln!("{checked} single-byte flips of a {} byte, {} line log all failed on their line", good.len(), text.lines().count());

    // The command says the same, with the line number, for edits that keep the JSON equal.
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.iter().position(|l| l.contains("\"kind\":\"execution\"")).unwrap();
    let respaced = lines[n].replacen("\":", "\": ", 3);
    let duplicated = lines[n].replacen('{', "{\"outcome\":\"ok\",", 1);
    for edited in [respaced, duplicated] {
        let mut copy = lines.clone();
        copy[n] = &edited;
        let path = files.dir.path().join("edited.jsonl");
        std::fs::write(&path, copy.join("\n") + "\n").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden")).args(["audit", "verify"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("line {}: contents were edited", n + 1)), "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden")).args(["audit", "verify"]).arg(files.audit_log()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
