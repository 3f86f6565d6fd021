//! The same server over streamable HTTP: health endpoints, execution, isolation between clients,
//! graceful shutdown.

use std::time::Duration;

use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};

use crate::harness::*;

async fn connect(url: &str) -> Client {
    connect_http(url, None).await
}

#[tokio::test]
async fn http_serves_health_tools_and_executions() {
    let files = ServerFiles::new();
    let server = start_http(&files, None, &[]).await;
    let health: serde_json::Value = reqwest::get(format!("{}/healthz", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let ready = reqwest::get(format!("{}/readyz", server.base)).await.unwrap();
    assert_eq!(ready.status(), 200);

    let client = connect(&server.url).await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 8);
    let (_, s) = exec(&client, py("print('over http')")).await;
    assert_eq!(s["stdout"], "over http\n");
    let (_, s) = exec(&client, js("console.log(1 + 1)")).await;
    assert_eq!(s["stdout"], "2\n");
    let (r, s) = exec(&client, py("open('h.txt', 'w').write('via http')")).await;
    assert_eq!(s["outcome"], "ok");
    let link = r.content.iter().find_map(|c| c.as_resource_link()).unwrap();
    client.read_resource(ReadResourceRequestParams::new(link.uri.clone())).await.unwrap();
}

#[tokio::test]
async fn ending_an_http_session_answers_no_content_and_ends_it() {
    let files = ServerFiles::new();
    let server = start_http(&files, None, &[]).await;
    let (status, headers, _) = post_initialize(&server.url, &[]).await;
    assert_eq!(status, 200);
    let id = headers.get("mcp-session-id").expect("a session id").to_str().unwrap().to_string();
    let delete = |id: String| {
        let url = server.url.clone();
        async move {
            reqwest::Client::new()
                .delete(url)
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", "2025-06-18")
                .send()
                .await
                .unwrap()
        }
    };
    let first = delete(id.clone()).await;
    assert_eq!(first.status(), 204, "the clients read 200 or 204 as success");
    assert!(first.text().await.unwrap().is_empty());
    // The session is gone: ending it again is an unknown session, not a second success.
    let again = delete(id).await;
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn tool_schemas_use_only_standard_json_schema_formats() {
    let files = ServerFiles::new();
    let server = start_http(&files, None, &[]).await;
    let client = connect(&server.url).await;
    fn formats(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(f)) = o.get("format") {
                    out.push(f.clone());
                }
                o.values().for_each(|v| formats(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
            _ => {}
        }
    }
    let tools = client.list_all_tools().await.unwrap();
    let mut found = Vec::new();
    for t in &tools {
        formats(&serde_json::to_value(&*t.input_schema).unwrap(), &mut found);
        formats(&serde_json::to_value(t.output_schema.as_deref()).unwrap(), &mut found);
    }
    assert!(found.is_empty(), "schemars-only formats such as uint64 confuse client validators: {found:?}");
    let out = serde_json::to_value(tools[0].output_schema.as_deref().unwrap()).unwrap();
    // The range the dropped format stood for is still stated.
    assert_eq!(out["properties"]["duration_ms"]["type"], "integer", "{out:#}");
    assert_eq!(out["properties"]["duration_ms"]["minimum"], 0, "{out:#}");
}

#[tokio::test]
async fn http_clients_cannot_reach_each_others_sessions() {
    let files = ServerFiles::new();
    let server = start_http(&files, None, &[]).await;
    let alice = connect(&server.url).await;
    let bob = connect(&server.url).await;
    let r = call(&alice, "create_session", json!({"language": "python"})).await.unwrap();
    let id = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    exec(&alice, json!({"language": "python", "code": "v = 'alice'", "session_id": id})).await;
    let e = tool_error(call(&bob, "execute_code", json!({"language": "python", "code": "print(v)", "session_id": id})).await);
    assert!(e.contains("unknown session_id"), "{e}");
    let (_, s) = exec(&alice, json!({"language": "python", "code": "print(v)", "session_id": id})).await;
    assert_eq!(s["stdout"], "alice\n");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_removes_workspaces() {
    let files = ServerFiles::new();
    let mut server = start_http(&files, None, &[]).await;
    let client = connect(&server.url).await;
    let r = call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    let id = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    exec(&client, json!({"language": "python", "code": "open('x', 'w').write('1')", "session_id": id})).await;
    let running = start_call(&client, "execute_code", py("import time\ntime.sleep(0.8)\nprint('finished')")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = server.child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let r = call_result(running.await_response().await.expect("in-flight call completes"));
    assert_eq!(r.structured_content.unwrap()["stdout"], "finished\n");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status}");
    let dir = crate::common::home().workspaces().join(format!("pid-{pid}-"));
    let leftovers: Vec<_> = std::fs::read_dir(crate::common::home().workspaces())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("pid-{pid}-")))
        .collect();
    assert!(leftovers.is_empty(), "workspaces left behind under {dir:?}: {leftovers:?}");
    // The session was suspended to the snapshot store, not lost: two replicas sharing that store
    // get a call for it at once, and exactly one resumes it.
    let suspended = audit_events(&files, "session.suspend", 1, Duration::from_secs(1)).await;
    assert_eq!(suspended[0]["reason"], "shutdown");
    assert_eq!(suspended[0]["session_id"], id.as_str());
    // Each replica has its own audit log; they share the store.
    let store = files.snapshot_dir();
    let shared = ["--snapshot-dir", store.to_str().unwrap()];
    let (files_b, files_c) = (ServerFiles::new(), ServerFiles::new());
    let (b, c) = (start_http(&files_b, None, &shared).await, start_http(&files_c, None, &shared).await);
    let (b, c) = (connect(&b.url).await, connect(&c.url).await);
    let probe = json!({"language": "python", "code": "print(open('x').read())", "session_id": id});
    let (rb, rc) = tokio::join!(call(&b, "execute_code", probe.clone()), call(&c, "execute_code", probe.clone()));
    let (rb, rc) = (rb.unwrap(), rc.unwrap());
    let won: Vec<_> = [&rb, &rc].into_iter().filter(|r| r.is_error != Some(true)).collect();
    assert_eq!(won.len(), 1, "exactly one replica resumes it: {rb:?} {rc:?}");
    assert_eq!(won[0].structured_content.as_ref().unwrap()["stdout"], "1\n");
    let lost = [&rb, &rc].into_iter().find(|r| r.is_error == Some(true)).unwrap();
    assert!(text_of(lost).contains("unknown session_id") || text_of(lost).contains("another server"), "{}", text_of(lost));
    let resumes = |f: &ServerFiles| std::fs::read_to_string(f.audit_log()).unwrap().matches("\"session.resume\"").count();
    assert_eq!(resumes(&files_b) + resumes(&files_c), 1);
}

#[tokio::test]
async fn log_format_json_writes_every_record_as_one_json_object_executors_too() {
    let files = ServerFiles::new();
    let server = Server { log: Some("info".into()), ..Server::default() };
    let http = start_http_of(&server, &files, None, &["--log-format", "json"]).await;
    let r = stateless_call(&http.url, "none", "execute_code", py("print(1)")).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "1\n", "{r}");
    let ready = http.log_line(&["executor ready"], Duration::from_secs(10)).await.expect("an executor logged");
    let record: Value = serde_json::from_str(&ready).expect("the executor's record is JSON");
    assert_eq!(record["target"], "warden::executor::process", "{record}");
    let lines = http.log_lines();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
}

/// The metric line `name` (labels included) and its value, if the server exports it.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn fresh_calls_and_first_session_turns_run_on_guests_prepared_ahead() {
    let files = ServerFiles::new();
    // One executor, so every call meets the same pool.
    let server = start_http(&files, None, &["--executors", "1"]).await;
    let client = connect(&server.url).await;
    let draw = "import random, os\nprint(random.random(), os.environ.get('WARDEN_X'), sorted(os.listdir('.')))";
    let mut seen = std::collections::HashSet::new();
    for i in 0..6 {
        let (_, s) = exec(&client, py(draw)).await;
        assert_eq!(s["outcome"], "ok", "{s}");
        let out = s["stdout"].as_str().unwrap().to_string();
        assert!(out.ends_with(" None []\n"), "no environment or files of another call: {out}");
        assert!(seen.insert(out.clone()), "call {i} repeated a random stream: {out}");
        // The pool refills on a thread of its own; give it time, as an agent's think time does.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A session's first turn may claim one too; its state then stays across turns as always.
    let r = call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    let sid = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    let (_, s) = exec(&client, json!({"language": "python", "code": "x = 41\nopen('kept.txt', 'w').write('k')", "session_id": sid})).await;
    assert_eq!(s["outcome"], "ok", "{s}");
    let (_, s) = exec(&client, json!({"language": "python", "code": "print(x + 1, open('kept.txt').read())", "session_id": sid})).await;
    assert_eq!(s["stdout"], "42 k\n", "{s}");
    let text = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    let prepared = metric(&text, r#"warden_guest_starts_total{language="python",guest="prepared"}"#).unwrap_or(0);
    let new = metric(&text, r#"warden_guest_starts_total{language="python",guest="new"}"#).unwrap_or(0);
    // The first call of its kind starts its own guest; once the pool holds some, calls claim them.
    assert!(new >= 1 && prepared >= 5, "prepared {prepared}, new {new}:\n{text}");

    // With the pool off, every call starts its own.
    let files = ServerFiles::new();
    let server = start_http(&files, None, &["--executors", "1", "--guest-pool", "0"]).await;
    let client = connect(&server.url).await;
    for _ in 0..3 {
        exec(&client, py("print(1)")).await;
    }
    let text = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, r#"warden_guest_starts_total{language="python",guest="new"}"#), Some(3), "{text}");
    assert_eq!(metric(&text, r#"warden_guest_starts_total{language="python",guest="prepared"}"#), None, "{text}");
}
