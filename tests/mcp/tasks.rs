//! MCP tasks (the 2026-07-28 Tasks extension, SEP-2663) over HTTP: a call that outlasts a
//! second becomes a task that outlives the client process that made it; its owner fetches the
//! output and the result from a new connection, another principal cannot see or cancel it,
//! `tasks/cancel` stops it, and the caps hold per principal.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::packages::{OBJECT, fixture, package, tool_policy};

/// `tools/call` of `execute_code` with `code`, as a task-capable client.
async fn call_code(server: &HttpServer, who: &str, code: &str) -> Value {
    let params = json!({"name": "execute_code", "arguments": {"language": "python", "code": code}});
    tasks_rpc(&server.url, &format!("token-{who}"), "tools/call", params).await
}

async fn get(server: &HttpServer, who: &str, id: &str) -> Value {
    tasks_rpc(&server.url, &format!("token-{who}"), "tasks/get", json!({"taskId": id})).await
}

/// Polls `tasks/get` until the task is terminal, gathering the output its polls carried.
async fn wait_done(server: &HttpServer, who: &str, id: &str, within: Duration) -> (Value, String) {
    let started = Instant::now();
    let mut streamed = String::new();
    loop {
        let r = get(server, who, id).await;
        let result = r.get("result").unwrap_or_else(|| panic!("tasks/get failed: {r}"));
        if let Some(out) = result.pointer("/_meta/io.github.warden~1output/stdout").and_then(Value::as_str) {
            streamed.push_str(out);
        }
        if result["status"] != "working" {
            return (result.clone(), streamed);
        }
        assert!(started.elapsed() < within, "task {id} still working after {within:?}: {result}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn task_id(r: &Value) -> String {
    assert_eq!(r["result"]["resultType"], "task", "expected a task handle: {r}");
    r["result"]["taskId"].as_str().expect("taskId").to_string()
}

#[tokio::test]
async fn a_task_outlives_the_client_process_and_its_owner_fetches_the_result_anew() {
    let files = ServerFiles::new();
    let policy = files.policy(&[]);
    let server = start_tenants(&files, &policy, &["alice", "bob"]).await;
    let code = "import time\nprint('working')\nopen('out.txt', 'w').write('kept')\ntime.sleep(3)\nprint('done')";
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "execute_code", "arguments": {"language": "python", "code": code},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}}});
    // The client is a process of its own: it prints the answer, then holds on until killed.
    let client = r#"
import sys, time, urllib.request
url, body = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=body.encode(), headers={
    "authorization": "Bearer token-alice", "content-type": "application/json",
    "accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call", "mcp-name": "execute_code"})
with urllib.request.urlopen(req) as r:
    for line in r:
        line = line.decode().strip()
        if line.startswith("data: ") and '"id"' in line:
            print(line[6:], flush=True)
            break
time.sleep(600)
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", client, &server.url, &body.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the client");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut answer = String::new();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut answer))
        .await
        .expect("the client got an answer")
        .unwrap();
    let answered = started.elapsed();
    let id = task_id(&serde_json::from_str(&answer).unwrap());
    assert!(answered < Duration::from_secs(3), "answered with a task after {answered:?}, before the call's end");
    // The client dies mid-run (the guest sleeps for 3 s).
    child.kill().await.unwrap();

    // Another principal cannot see it, nor cancel it: the same answer as for no such task.
    for method in ["tasks/get", "tasks/cancel"] {
        let r = tasks_rpc(&server.url, "token-bob", method, json!({"taskId": id})).await;
        let msg = r["error"]["message"].as_str().unwrap_or_else(|| panic!("bob got {r}"));
        assert!(msg.contains("unknown task"), "{msg}");
        let r = tasks_rpc(&server.url, "token-bob", method, json!({"taskId": "no-such-task"})).await;
        assert_eq!(r["error"]["message"].as_str().unwrap().replace("no-such-task", &id), msg, "indistinguishable");
    }

    // Its owner follows it from new connections: output while it runs, then the result.
    let (done, streamed) = wait_done(&server, "alice", &id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["structuredContent"]["outcome"], "ok", "{result}");
    assert_eq!(result["structuredContent"]["stdout"], "working\ndone\n");
    assert_eq!(streamed, "working\ndone\n", "the polls carried the output in order, once");
    // Its artifacts are the owner's, readable from another connection.
    let uri = result["structuredContent"]["artifacts"][0]["uri"].as_str().expect("an artifact").to_string();
    let read = tasks_rpc(&server.url, "token-alice", "resources/read", json!({"uri": uri})).await;
    assert_eq!(read["result"]["contents"][0]["text"], "kept", "{read}");
    // The result stays retrievable.
    assert_eq!(get(&server, "alice", &id).await["result"]["status"], "completed");

    // Audited: the task's creation names its owner, and the call ran as alice.
    let created = audit_events(&files, "task.create", 1, Duration::from_secs(2)).await;
    assert_eq!((&created[0]["task_id"], &created[0]["principal"]), (&json!(id), &json!("alice")));
    let runs = audit_events(&files, "execution", 1, Duration::from_secs(2)).await;
    assert!(runs.iter().any(|e| e["principal"] == "alice" && e["outcome"] == "ok"), "{runs:?}");
    // The task and the call it ran share a trace id (made by the server: this client sent none).
    let trace = created[0]["trace_id"].as_str().expect("task.create has a trace id");
    assert!(runs.iter().any(|e| e["trace_id"] == trace), "the execution line carries the task's trace id: {runs:?}");
}

/// A package tool runs as a task like `execute_code`: a tool that never returns outlasts a
/// second, becomes a task, and ends at its deadline, the task and its execution sharing a trace.
#[tokio::test]
async fn a_package_tool_runs_as_a_task() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(&root, "spin", "spin", &fixture("spin"), OBJECT, "");
    let policy = tool_policy(&files, &["spin"], 0, &[("timeout_ms = 30_000", "timeout_ms = 2_500")]);
    let server = start_tenants_with(&files, &policy, &["alice"], &["--tools", root.to_str().unwrap()]).await;
    let r = tasks_rpc(&server.url, "token-alice", "tools/call", json!({"name": "spin", "arguments": {}})).await;
    let id = task_id(&r);
    let (done, _) = wait_done(&server, "alice", &id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], true, "{done}");
    assert!(done["result"]["content"][0]["text"].as_str().unwrap_or_default().contains("time"), "{done}");
    let created = audit_events(&files, "task.create", 1, Duration::from_secs(2)).await;
    assert_eq!((&created[0]["tool"], &created[0]["principal"]), (&json!("spin"), &json!("alice")));
    let runs = audit_events(&files, "execution", 1, Duration::from_secs(2)).await;
    assert_eq!((&runs[0]["tool"], &runs[0]["outcome"]), (&json!("spin"), &json!("timeout")), "{runs:?}");
    assert_eq!(runs[0]["trace_id"], created[0]["trace_id"]);
}

#[tokio::test]
async fn quick_calls_answer_at_once_tasks_cancel_stops_a_task_and_sessions_work_inside_tasks() {
    let files = ServerFiles::new();
    let policy = files.policy(&[]);
    let server = start_tenants(&files, &policy, &["alice"]).await;
    let r = call_code(&server, "alice", "print(6 * 7)").await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "42\n", "a quick call is no task: {r}");

    let id = task_id(&call_code(&server, "alice", "while True: pass").await);
    let r = tasks_rpc(&server.url, "token-alice", "tasks/cancel", json!({"taskId": id})).await;
    assert!(r.get("result").is_some(), "{r}");
    let (done, _) = wait_done(&server, "alice", &id, Duration::from_secs(5)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    audit_events(&files, "task.cancel", 1, Duration::from_secs(2)).await;
    let ends = audit_events(&files, "execution", 2, Duration::from_secs(2)).await;
    assert_eq!(ends.last().unwrap()["outcome"], "cancelled");
    // Sessions work the same inside tasks: state a task left is there for the next call.
    let r =
        tasks_rpc(&server.url, "token-alice", "tools/call", json!({"name": "create_session", "arguments": {"language": "python"}})).await;
    let session = r["result"]["structuredContent"]["session_id"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let in_session = |code: &str| json!({"name": "execute_code", "arguments": {"language": "python", "code": code, "session_id": session}});
    let r = tasks_rpc(&server.url, "token-alice", "tools/call", in_session("import time\nx = 41\ntime.sleep(1.5)")).await;
    let (done, _) = wait_done(&server, "alice", &task_id(&r), Duration::from_secs(10)).await;
    assert_eq!(done["result"]["structuredContent"]["outcome"], "ok", "{done}");
    let r = tasks_rpc(&server.url, "token-alice", "tools/call", in_session("print(x + 1)")).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "42\n", "{r}");
}

#[tokio::test]
async fn tasks_are_capped_per_principal_without_touching_another_principals() {
    let files = ServerFiles::new();
    let policy = files.policy(&[("max = 64", "max = 3"), ("max_per_principal = 8", "max_per_principal = 1")]);
    let server = start_tenants(&files, &policy, &["alice", "bob"]).await;
    let slow = "import time\ntime.sleep(2.5)\nprint('slow')";
    let first = task_id(&call_code(&server, "alice", slow).await);
    // Alice's share is taken: her next long call is not made a task, it ends on its request.
    let started = Instant::now();
    let r = call_code(&server, "alice", slow).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "slow\n", "it ran on its request: {r}");
    assert!(started.elapsed() >= Duration::from_millis(2400));
    // Bob's share is his own.
    let bobs = task_id(&call_code(&server, "bob", slow).await);
    wait_done(&server, "alice", &first, Duration::from_secs(10)).await;
    // Her finished task makes room for her next: it is dropped, and only hers.
    let third = task_id(&call_code(&server, "alice", slow).await);
    let gone = get(&server, "alice", &first).await;
    assert!(gone["error"]["message"].as_str().unwrap().contains("unknown task"), "{gone}");
    assert_eq!(wait_done(&server, "bob", &bobs, Duration::from_secs(10)).await.0["status"], "completed");
    assert_eq!(wait_done(&server, "alice", &third, Duration::from_secs(10)).await.0["status"], "completed");
}
