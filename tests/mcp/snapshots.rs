//! Session snapshots over MCP: taken, forked, restored (rolled back, or reopened after the
//! server restarted), listed and deleted; owned by one principal; verified before use; held to
//! the profile's quota and retention.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

async fn create(client: &Client, language: &str) -> String {
    let r = call(client, "create_session", json!({"language": language})).await.expect("create_session");
    r.structured_content.expect("structured")["session_id"].as_str().unwrap().to_string()
}

fn in_session(code: &str, language: &str, id: &str) -> Value {
    json!({"language": language, "code": code, "session_id": id})
}

async fn run(client: &Client, code: &str, language: &str, id: &str) -> String {
    let (_, s) = exec(client, in_session(code, language, id)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    s["stdout"].as_str().unwrap().to_string()
}

async fn snapshot(client: &Client, id: &str, label: Option<&str>) -> Value {
    let mut args = json!({"session_id": id});
    if let Some(l) = label {
        args["label"] = json!(l);
    }
    let r = call(client, "snapshot_session", args).await.expect("snapshot_session");
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    r.structured_content.expect("structured")
}

/// The `data` files of every snapshot in a store.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(data_files(&p));
        } else if p.file_name().is_some_and(|n| n == "data") {
            out.push(p);
        }
    }
    out
}

const SETUP: &str = "import os, random\ntoken = os.urandom(16).hex()\nrows = list(range(50_000))\n\
                     effects = 0\ndef effect():\n    global effects\n    effects += 1\n    open('effects.txt', 'a').write('x')\neffect()";
const PROBE: &str = "print(token, len(rows), effects, open('effects.txt').read())";

#[tokio::test]
async fn a_snapshot_forks_and_rolls_back_with_the_same_state_and_new_seeds() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let id = create(&client, "python").await;
    run(&client, SETUP, "python", &id).await;
    let at_snapshot = run(&client, PROBE, "python", &id).await;
    let snap = snapshot(&client, &id, Some("before the change")).await;
    let snap_id = snap["snapshot_id"].as_str().unwrap().to_string();
    assert!(snap_id.starts_with("snap-"), "{snap}");
    assert_eq!(snap["session_id"], id);
    assert_eq!(snap["interpreter"], true, "{snap}");
    assert_eq!(snap["files"], 1);
    assert!(snap["bytes"].as_u64().unwrap() > 0);
    // The session goes on, and changes.
    run(&client, "rows.clear()\neffect()\nlater = 1", "python", &id).await;
    assert_ne!(run(&client, PROBE, "python", &id).await, at_snapshot);

    // A fork from the snapshot has the state as it was then; nothing was re-run (the side
    // effect counter and its file say once).
    let r = call(&client, "fork_session", json!({"snapshot_id": snap_id})).await.unwrap();
    let f = r.structured_content.expect("structured");
    assert_eq!(f["forked_from"], snap_id.as_str());
    assert_eq!(f["interpreter"], true, "{f}");
    let fork = f["session_id"].as_str().unwrap().to_string();
    assert_eq!(run(&client, PROBE, "python", &fork).await, at_snapshot);
    assert!(at_snapshot.ends_with(" 50000 1 x\n"), "{at_snapshot}");

    // Restoring rolls the session itself back, under its id.
    let r = call(&client, "restore_session", json!({"snapshot_id": snap_id})).await.unwrap();
    let back = r.structured_content.expect("structured");
    assert_eq!(back["session_id"], id);
    assert_eq!(back["rolled_back"], true, "{back}");
    assert_eq!(back["interpreter"], true);
    assert_eq!(run(&client, PROBE, "python", &id).await, at_snapshot);
    assert_eq!(run(&client, "print('later' in globals())", "python", &id).await, "False\n");
    // Both go on from the same state, with their own random streams.
    let draw = "print(random.random(), os.urandom(8).hex())";
    assert_ne!(run(&client, draw, "python", &id).await, run(&client, draw, "python", &fork).await);

    // Listed with its label; either argument of fork_session, not both.
    let r = call(&client, "list_snapshots", json!({})).await.unwrap();
    let list = r.structured_content.expect("structured");
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["snapshots"][0]["label"], "before the change");
    assert_eq!(list["used_bytes"], snap["bytes"]);
    let e = tool_error(call(&client, "fork_session", json!({"session_id": id, "snapshot_id": snap_id})).await);
    assert!(e.contains("exactly one"), "{e}");

    // Deleted, it is gone.
    let r = call(&client, "delete_snapshot", json!({"snapshot_id": snap_id})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["deleted"], true);
    let e = tool_error(call(&client, "fork_session", json!({"snapshot_id": snap_id})).await);
    assert!(e.contains("unknown snapshot_id"), "{e}");
    assert!(data_files(&files.snapshot_dir()).is_empty());

    let kinds: Vec<String> = std::fs::read_to_string(files.audit_log())
        .unwrap()
        .lines()
        .filter(|l| l.contains(&snap_id))
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["snapshot.create", "session.fork", "session.restore", "snapshot.delete"], "every step is audited");
}

#[tokio::test]
async fn sessions_survive_a_restart_and_come_back_from_their_snapshots() {
    let files = ServerFiles::new();
    let (py_id, js_id, py_snap, js_snap, at_snapshot) = {
        let client = stdio(&files, None).await;
        let py_id = create(&client, "python").await;
        let at_snapshot = run(&client, &format!("{SETUP}\n{PROBE}"), "python", &py_id).await;
        let js_id = create(&client, "javascript").await;
        let js = "globalThis.counter = 41; function bump() { return ++counter; }\nconst kept = 'kept';\nconsole.log(bump(), kept)";
        assert_eq!(run(&client, js, "javascript", &js_id).await, "42 kept\n");
        let py_snap = snapshot(&client, &py_id, None).await["snapshot_id"].as_str().unwrap().to_string();
        let js_snap = snapshot(&client, &js_id, None).await["snapshot_id"].as_str().unwrap().to_string();
        run(&client, "effect()", "python", &py_id).await;
        assert_eq!(run(&client, "console.log(bump())", "javascript", &js_id).await, "43\n");
        // The end of standard input stops the server gracefully: its sessions are suspended.
        client.cancel().await.unwrap();
        (py_id, js_id, py_snap, js_snap, at_snapshot.lines().last().unwrap().to_string() + "\n")
    };
    let suspended = audit_events(&files, "session.suspend", 2, Duration::from_secs(5)).await;
    assert!(suspended.iter().all(|s| s["reason"] == "shutdown" && s["interpreter"] == true), "{suspended:?}");
    // A new server process on the same store gives the operator its sessions back, as they were
    // when it stopped, under their ids, on their next call.
    let client = stdio(&files, None).await;
    let now = run(&client, PROBE, "python", &py_id).await;
    assert!(now.ends_with(" 50000 2 xx\n"), "{now}");
    assert_eq!(now.split(' ').next(), at_snapshot.split(' ').next(), "the same os.urandom token, drawn once");
    assert_eq!(run(&client, "console.log(bump(), kept)", "javascript", &js_id).await, "44 kept\n");
    let resumed = audit_events(&files, "session.resume", 2, Duration::from_secs(3)).await;
    assert!(resumed.iter().all(|r| r["interpreter"] == true), "{resumed:?}");
    // The snapshots taken before the restart roll them back...
    let r = call(&client, "restore_session", json!({"snapshot_id": py_snap})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["rolled_back"], true);
    assert_eq!(run(&client, PROBE, "python", &py_id).await, at_snapshot);
    // ...or reopen one that was closed.
    call(&client, "close_session", json!({"session_id": js_id})).await.unwrap();
    let r = call(&client, "restore_session", json!({"snapshot_id": js_snap})).await.unwrap();
    let back = r.structured_content.clone().unwrap_or_else(|| panic!("{}", text_of(&r)));
    assert_eq!(back["session_id"], js_id);
    assert_eq!(back["rolled_back"], false, "{back}");
    assert_eq!(run(&client, "console.log(bump(), kept)", "javascript", &js_id).await, "43 kept\n");
}

#[tokio::test]
async fn an_idle_session_moves_to_disk_keeps_its_slot_and_comes_back_on_its_next_call() {
    let files = ServerFiles::new();
    let policy =
        files.policy(&[("max_per_principal = 4", "max_per_principal = 1"), ("suspend_after_seconds = 120", "suspend_after_seconds = 1")]);
    let client = stdio(&files, Some(&policy)).await;
    let id = create(&client, "python").await;
    let before = run(&client, &format!("{SETUP}\n{PROBE}"), "python", &id).await;
    let suspended = audit_events(&files, "session.suspend", 1, Duration::from_secs(8)).await;
    assert_eq!(suspended[0]["reason"], "idle", "{suspended:?}");
    assert!(suspended[0]["bytes"].as_u64().unwrap() > 0);
    // Still the principal's one session: it holds its slot on disk.
    let e = tool_error(call(&client, "create_session", json!({"language": "python"})).await);
    assert!(e.contains("your limit"), "{e}");
    assert_eq!(run(&client, PROBE, "python", &id).await, before.lines().last().unwrap().to_string() + "\n");
    assert_eq!(audit_events(&files, "session.resume", 1, Duration::from_secs(2)).await.len(), 1);
    // Idle again, then closed while on disk: gone, and its slot free.
    audit_events(&files, "session.suspend", 2, Duration::from_secs(8)).await;
    let r = call(&client, "close_session", json!({"session_id": id})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["closed"], true);
    let e = tool_error(call(&client, "execute_code", in_session("1", "python", &id)).await);
    assert!(e.contains("unknown session_id"), "{e}");
    create(&client, "python").await;
}

#[tokio::test]
async fn nobody_else_can_see_or_use_a_snapshot() {
    let files = ServerFiles::new();
    let policy = files.policy(&[]);
    let server = start_tenants(&files, &policy, &["alice", "bob"]).await;
    let alice = connect_http(&server.url, Some("token-alice")).await;
    let bob = connect_http(&server.url, Some("token-bob")).await;
    let id = create(&alice, "python").await;
    run(&alice, "secret = 'alice'", "python", &id).await;
    let snap = snapshot(&alice, &id, None).await["snapshot_id"].as_str().unwrap().to_string();
    let r = call(&bob, "list_snapshots", json!({})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["snapshots"], json!([]));
    for (tool, args) in [
        ("fork_session", json!({"snapshot_id": snap})),
        ("restore_session", json!({"snapshot_id": snap})),
        ("delete_snapshot", json!({"snapshot_id": snap})),
    ] {
        let e = tool_error(call(&bob, tool, args).await);
        assert!(e.contains("unknown snapshot_id"), "{tool}: the same answer as for an id that never existed: {e}");
    }
    let e = tool_error(call(&bob, "snapshot_session", json!({"session_id": id})).await);
    assert!(e.contains("unknown session_id"), "{e}");
    let e = tool_error(call(&bob, "fork_session", json!({"snapshot_id": "snap-../../x"})).await);
    assert!(e.contains("unknown snapshot_id"), "{e}");
    let r = call(&alice, "fork_session", json!({"snapshot_id": snap})).await.unwrap();
    let fork = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    assert_eq!(run(&alice, "print(secret)", "python", &fork).await, "alice\n");
}

#[tokio::test]
async fn an_altered_or_truncated_snapshot_is_refused_and_audited() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let id = create(&client, "python").await;
    run(&client, "x = 7\nopen('f.txt', 'w').write('hello')", "python", &id).await;
    let snap = snapshot(&client, &id, None).await["snapshot_id"].as_str().unwrap().to_string();
    let data = data_files(&files.snapshot_dir()).pop().expect("the snapshot's data");
    let original = std::fs::read(&data).unwrap();
    let mut altered = original.clone();
    altered[2] ^= 1;
    std::fs::write(&data, &altered).unwrap();
    let e = tool_error(call(&client, "fork_session", json!({"snapshot_id": snap})).await);
    assert!(e.contains("integrity check") && e.contains("sha256"), "{e}");
    std::fs::write(&data, &original[..original.len() - 4096]).unwrap();
    let e = tool_error(call(&client, "restore_session", json!({"snapshot_id": snap})).await);
    assert!(e.contains("integrity check"), "{e}");
    let refused = audit_events(&files, "snapshot.refused", 2, Duration::from_secs(3)).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[1]["reason"].as_str().unwrap().contains("bytes"), "{refused:?}");
    // The session itself was never touched, and the intact snapshot works again.
    assert_eq!(run(&client, "print(x)", "python", &id).await, "7\n");
    std::fs::write(&data, &original).unwrap();
    let r = call(&client, "fork_session", json!({"snapshot_id": snap})).await.unwrap();
    let fork = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    assert_eq!(run(&client, "print(x, open('f.txt').read())", "python", &fork).await, "7 hello\n");
}

#[tokio::test]
async fn the_snapshot_quota_and_retention_hold() {
    let files = ServerFiles::new();
    let policy = files.policy(&[
        ("max_per_principal = 8\nmax_bytes_per_principal = 268_435_456", "max_per_principal = 2\nmax_bytes_per_principal = 300_000"),
        ("retention_seconds = 86_400", "retention_seconds = 3"),
    ]);
    let client = stdio(&files, Some(&policy)).await;
    // A live Python interpreter's image (what it changed of the runtime's memory, about 0.7 MB)
    // is over this principal's share.
    let py = create(&client, "python").await;
    run(&client, "x = 1", "python", &py).await;
    let e = tool_error(call(&client, "snapshot_session", json!({"session_id": py})).await);
    assert!(e.contains("max_bytes_per_principal"), "{e}");
    // Sessions with no interpreter yet snapshot to (empty) files: two fit, the third is over the count.
    let a = create(&client, "javascript").await;
    let first = snapshot(&client, &a, None).await;
    assert_eq!(first["interpreter"], false);
    snapshot(&client, &a, None).await;
    let e = tool_error(call(&client, "snapshot_session", json!({"session_id": a})).await);
    assert!(e.contains("max_per_principal"), "{e}");
    // Three seconds on, they have expired: unknown at once, deleted and audited by the sweep.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = call(&client, "list_snapshots", json!({})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["snapshots"], json!([]));
    let e = tool_error(call(&client, "fork_session", json!({"snapshot_id": first["snapshot_id"]})).await);
    assert!(e.contains("unknown snapshot_id"), "{e}");
    let gone = audit_events(&files, "snapshot.delete", 2, Duration::from_secs(8)).await;
    assert!(gone.len() == 2 && gone.iter().all(|g| g["reason"] == "expired"), "{gone:?}");
    assert!(data_files(&files.snapshot_dir()).is_empty());
    snapshot(&client, &a, None).await;
}
