//! Sessions: state across calls, binding to their creator, limits, expiry.

use std::time::Duration;

use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};

use crate::harness::*;

async fn create(client: &Client, language: &str) -> String {
    let r = call(client, "create_session", json!({"language": language})).await.expect("create_session");
    let s = r.structured_content.expect("structured");
    assert!(s["expires_at"].as_str().unwrap().ends_with('Z'), "{s}");
    s["session_id"].as_str().unwrap().to_string()
}

fn in_session(code: &str, language: &str, id: &str) -> Value {
    json!({"language": language, "code": code, "session_id": id})
}

#[tokio::test]
async fn python_sessions_keep_variables_imports_and_files() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let id = create(&client, "python").await;
    let (_, s) = exec(&client, in_session("import numpy as np\nx = 41\nopen('state.txt', 'w').write('kept')", "python", &id)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    assert_eq!(s["session_id"], id);
    let (_, s) = exec(&client, in_session("print(x + 1, np.arange(3).sum(), open('state.txt').read())", "python", &id)).await;
    assert_eq!(s["stdout"], "42 3 kept\n", "{s:#}");
    // A failing turn does not end the session.
    let (_, s) = exec(&client, in_session("1/0", "python", &id)).await;
    assert_eq!(s["outcome"], "error");
    let (_, s) = exec(&client, in_session("x", "python", &id)).await;
    assert_eq!(s["stdout"], "41\n");
    // Artifacts of a session point into it and are readable.
    let (_, s) = exec(&client, in_session("open('report.csv', 'w').write('a,b\\n1,2\\n')", "python", &id)).await;
    let uri = s["artifacts"][0]["uri"].as_str().unwrap().to_string();
    assert!(uri.contains(&id), "{uri}");
    client.read_resource(ReadResourceRequestParams::new(uri)).await.expect("read session artifact");
    let r = call(&client, "close_session", json!({"session_id": id})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["closed"], true);
    let e = tool_error(call(&client, "execute_code", in_session("x", "python", &id)).await);
    assert!(e.contains("unknown session_id"), "{e}");
}

#[tokio::test]
async fn exit_ends_the_interpreter_but_not_the_session() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let id = create(&client, "python").await;
    exec(&client, in_session("y = 5\nopen('f', 'w').write('1')", "python", &id)).await;
    let (_, s) = exec(&client, in_session("exit(3)", "python", &id)).await;
    assert_eq!(s["exit_code"], 3);
    let (_, s) = exec(&client, in_session("import os\nprint('y' in globals(), os.path.exists('f'))", "python", &id)).await;
    assert_eq!(s["stdout"], "False True\n", "fresh interpreter, same files: {s:#}");
}

#[tokio::test]
async fn javascript_sessions_keep_interpreter_state_and_files() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let id = create(&client, "javascript").await;
    let first = "var n = 41;\nconst items = [1, 2];\nfunction add(a) { return a + 1 }\n\
                 globalThis.loaded = await new Promise(r => setTimeout(() => r('kept'), 5));\n\
                 const f = std.open('count.txt', 'w'); f.puts('1'); f.close()";
    let (_, s) = exec(&client, in_session(first, "javascript", &id)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    let (_, s) = exec(&client, in_session("console.log(add(n), items.length, loaded, std.loadFile('count.txt'))", "javascript", &id)).await;
    assert_eq!(s["stdout"], "42 2 kept 1\n", "{s:#}");
    // A failing turn, and an unhandled rejection, do not end the interpreter.
    let (_, s) = exec(&client, in_session("throw new TypeError('nope')", "javascript", &id)).await;
    assert_eq!(s["outcome"], "error");
    assert!(s["stderr"].as_str().unwrap().contains("TypeError: nope"), "{s:#}");
    let (_, s) = exec(&client, in_session("Promise.reject(new Error('later'))", "javascript", &id)).await;
    assert_eq!(s["outcome"], "error");
    assert!(s["stderr"].as_str().unwrap().contains("Uncaught (in promise) Error: later"), "{s:#}");
    let (_, s) = exec(&client, in_session("console.log(n, typeof add)", "javascript", &id)).await;
    assert_eq!(s["stdout"], "41 function\n", "{s:#}");
    // std.exit ends the interpreter; the next call starts a fresh one with the same files.
    let (_, s) = exec(&client, in_session("std.exit(3)", "javascript", &id)).await;
    assert_eq!(s["exit_code"], 3, "{s:#}");
    let (_, s) = exec(&client, in_session("console.log(typeof n, std.loadFile('count.txt'))", "javascript", &id)).await;
    assert_eq!(s["stdout"], "undefined 1\n", "fresh interpreter, same files: {s:#}");
    let e = tool_error(call(&client, "execute_code", in_session("print(1)", "python", &id)).await);
    assert!(e.contains("javascript"), "language must match the session: {e}");
}

#[tokio::test]
async fn another_client_cannot_use_a_session_or_its_artifacts() {
    let files = ServerFiles::new();
    let alice = stdio(&files, None).await;
    let id = create(&alice, "python").await;
    let (_, s) = exec(&alice, in_session("secret = 'alice'\nopen('s.txt', 'w').write('alice data')", "python", &id)).await;
    let session_file = s["artifacts"][0]["uri"].as_str().unwrap().to_string();
    let (_, s) = exec(&alice, py("open('one-shot.txt', 'w').write('x')")).await;
    let call_file = s["artifacts"][0]["uri"].as_str().unwrap().to_string();

    // A second server connection on the same stdio server is not possible, so the other client is
    // a second process sharing nothing but the id strings it was told.
    let bob_files = ServerFiles::new();
    let bob = stdio(&bob_files, None).await;
    let e = tool_error(call(&bob, "execute_code", in_session("print(secret)", "python", &id)).await);
    assert!(e.contains("unknown session_id"), "{e}");
    for uri in [&session_file, &call_file] {
        assert!(bob.read_resource(ReadResourceRequestParams::new(uri.clone())).await.is_err(), "{uri}");
    }
    let e = tool_error(call(&bob, "close_session", json!({"session_id": id})).await);
    assert!(e.contains("unknown session_id"), "{e}");
    let (_, s) = exec(&alice, in_session("print(secret)", "python", &id)).await;
    assert_eq!(s["stdout"], "alice\n", "alice's session survived bob's attempts");
}

#[tokio::test]
async fn session_count_is_capped_and_idle_sessions_expire() {
    let files = ServerFiles::new();
    let policy = files.policy(&[
        ("max = 16", "max = 2"),
        ("max_per_principal = 4", "max_per_principal = 2"),
        ("idle_seconds = 900", "idle_seconds = 2"),
        ("suspend_after_seconds = 120", "suspend_after_seconds = 0"),
    ]);
    let client = stdio(&files, Some(&policy)).await;
    let a = create(&client, "python").await;
    let _b = create(&client, "javascript").await;
    let r = call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("limit"), "{}", text_of(&r));
    let retry = r.meta.as_ref().and_then(|m| m.0.get("io.github.warden/retryAfterSeconds")).and_then(|v| v.as_u64());
    assert!(retry.is_some_and(|s| s > 0), "a full session table says when to retry: {:?}", r.meta);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let e = tool_error(call(&client, "execute_code", in_session("1", "python", &a)).await);
    assert!(e.contains("unknown session_id"), "an expired session is unknown: {e}");
    let closes = audit_events(&files, "session.close", 2, Duration::from_secs(3)).await;
    assert!(closes.iter().all(|c| c["reason"] == "expired"), "{closes:?}");
    create(&client, "python").await;
}

#[tokio::test]
async fn every_session_the_profile_allows_can_hold_a_live_interpreter() {
    // A live CPython guest holds two pool memory slots (its memory and, once it has thrown a
    // wasm exception, a GC heap); the pool must be sized for that.
    let files = ServerFiles::new();
    let policy = files.policy(&[("max = 16", "max = 12"), ("max_per_principal = 4", "max_per_principal = 12")]);
    let client = stdio(&files, Some(&policy)).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = create(&client, "python").await;
        let (_, s) = exec(&client, in_session(&format!("v = {i}"), "python", &id)).await;
        assert_eq!(s["outcome"], "ok", "session {i}: {s}");
        ids.push(id);
    }
    let (_, s) = exec(&client, in_session("print(v)", "python", &ids[11])).await;
    assert_eq!(s["stdout"], "11\n");
    let (_, s) = exec(&client, py("print('one-shot')")).await;
    assert_eq!(s["stdout"], "one-shot\n");
}

#[tokio::test]
async fn a_forked_session_has_the_same_state_and_files_and_goes_its_own_way() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let id = create(&client, "python").await;
    let setup = "import os, random\ntoken = os.urandom(16).hex()\nrows = list(range(100_000))\n\
                 open('effects.txt', 'a').write('x')";
    exec(&client, in_session(setup, "python", &id)).await;
    let r = call(&client, "fork_session", json!({"session_id": id})).await.expect("fork_session");
    let f = r.structured_content.expect("structured");
    assert_eq!(f["forked_from"], id);
    assert_eq!(f["language"], "python");
    assert_eq!(f["interpreter"], true, "{f}");
    let fork = f["session_id"].as_str().unwrap().to_string();
    assert_ne!(fork, id);
    // Same state, drawn once: the token from os.urandom is the same and the side effect ran once.
    let probe = "print(token, len(rows), open('effects.txt').read())";
    let (_, a) = exec(&client, in_session(probe, "python", &id)).await;
    let (_, b) = exec(&client, in_session(probe, "python", &fork)).await;
    assert_eq!(a["stdout"], b["stdout"], "{b:#}");
    assert!(b["stdout"].as_str().unwrap().ends_with(" 100000 x\n"), "{b:#}");
    // From here on they are independent, in variables, files and random streams.
    exec(&client, in_session("rows.clear()\nopen('effects.txt', 'a').write('y')", "python", &fork)).await;
    let (_, a) = exec(&client, in_session(probe, "python", &id)).await;
    assert!(a["stdout"].as_str().unwrap().ends_with(" 100000 x\n"), "the source is untouched: {a:#}");
    let draw = "print(random.random())";
    let (_, a) = exec(&client, in_session(draw, "python", &id)).await;
    let (_, b) = exec(&client, in_session(draw, "python", &fork)).await;
    assert_ne!(a["stdout"], b["stdout"], "forks never share a random stream");
    // A session with no interpreter yet forks to files only.
    let fresh = create(&client, "javascript").await;
    let r = call(&client, "fork_session", json!({"session_id": fresh})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["interpreter"], false);
    // Forks count as sessions: this principal's share (4) is used up.
    let e = tool_error(call(&client, "fork_session", json!({"session_id": id})).await);
    assert!(e.contains("your limit"), "{e}");
    // Closing the source leaves the fork working.
    call(&client, "close_session", json!({"session_id": id})).await.unwrap();
    let (_, b) = exec(&client, in_session("print(len(rows))", "python", &fork)).await;
    assert_eq!(b["stdout"], "0\n");
    // The audit trail records the fork and where it came from.
    let audit = std::fs::read_to_string(files.audit_log()).unwrap();
    let line = audit.lines().find(|l| l.contains("\"session.fork\"")).expect("a session.fork line");
    assert!(line.contains(&fork) && line.contains(&id) && line.contains("\"interpreter\":true"), "{line}");
}

#[tokio::test]
async fn nobody_else_can_fork_a_session() {
    let files = ServerFiles::new();
    let policy = files.policy(&[]);
    let server = start_tenants(&files, &policy, &["alice", "bob"]).await;
    let alice = connect_http(&server.url, Some("token-alice")).await;
    let bob = connect_http(&server.url, Some("token-bob")).await;
    let id = create(&alice, "python").await;
    exec(&alice, in_session("secret = 'alice'", "python", &id)).await;
    let e = tool_error(call(&bob, "fork_session", json!({"session_id": id})).await);
    assert!(e.contains("unknown session_id"), "the same answer as for an id that never existed: {e}");
    let e = tool_error(call(&bob, "fork_session", json!({"session_id": "s-nope"})).await);
    assert!(e.contains("unknown session_id"), "{e}");
    let r = call(&alice, "fork_session", json!({"session_id": id})).await.unwrap();
    let fork = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    let e = tool_error(call(&bob, "execute_code", in_session("print(secret)", "python", &fork)).await);
    assert!(e.contains("unknown session_id"), "the fork is alice's too: {e}");
    let (_, s) = exec(&alice, in_session("print(secret)", "python", &fork)).await;
    assert_eq!(s["stdout"], "alice\n");
}
