//! Hostile requests: malformed, huge and deeply nested JSON on both transports, hostile `files`
//! inputs and limits. Each is refused before anything runs, and the server keeps serving.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::*;
use crate::{Layer, case};

/// A raw stdio session: the server process with its pipes, past the handshake.
struct Raw {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Raw {
    async fn start(files: &ServerFiles) -> Raw {
        let mut cmd = server_command(files, None, &[]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut raw =
            Raw { stdin: child.stdin.take().unwrap(), stdout: BufReader::new(child.stdout.take().unwrap()).lines(), _child: child };
        raw.send(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}).to_string()).await;
        assert!(raw.recv().await.unwrap()["result"]["serverInfo"].is_object());
        raw.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
        raw
    }

    async fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next message, or None if none arrives within a second.
    async fn recv(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line()).await.ok()?.unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line:.200}")))
    }

    /// Sends a well-formed call and expects its correct answer: the server survived.
    async fn alive(&mut self, id: u64) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "execute_code", "arguments": {"language": "python", "code": "print(6 * 7)"}}}).to_string()).await;
        loop {
            let m = self.recv().await.expect("the server stopped answering");
            if m["id"] == id {
                assert_eq!(m["result"]["structuredContent"]["stdout"], "42\n", "{m}");
                return;
            }
        }
    }
}

#[tokio::test]
async fn malformed_and_hostile_json_rpc_over_stdio() {
    let files = ServerFiles::new();
    let mut raw = Raw::start(&files).await;
    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let deep_args = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"execute_code","arguments":{{"language":"python","code":"1","files":{}}}}}}}"#,
        nested
    );
    let huge_code = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "execute_code", "arguments": {"language": "python", "code": "#".repeat(8 << 20)}}}).to_string();
    let lines: [(&str, String); 6] = [
        ("garbage_line", "this is not json".to_string()),
        ("truncated_json", r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"#.to_string()),
        ("deeply_nested_json", nested.clone()),
        ("deeply_nested_arguments", deep_args),
        ("huge_code_string", huge_code),
        ("wrong_types", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":42,"arguments":"x"}}"#.to_string()),
    ];
    for (i, (name, line)) in lines.iter().enumerate() {
        case(name, Layer::Policy);
        raw.send(line).await;
        raw.alive(100 + i as u64).await;
    }
    // rmcp discards a stdio line over 16 MiB without an answer (it cannot know the id); the
    // server must survive it and go on reading.
    case("line_over_the_transport_limit", Layer::Policy);
    let huge = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "execute_code", "arguments": {"language": "python", "code": "#".repeat(20 << 20)}}}).to_string();
    raw.send(&huge).await;
    raw.alive(300).await;
    case("invalid_utf8_line", Layer::Policy);
    raw.stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"\xff\xfe\"}\n").await.unwrap();
    raw.alive(200).await;
}

#[tokio::test]
async fn hostile_files_and_limits_are_invalid_params() {
    let files = ServerFiles::new();
    let policy = files.policy(&[("workspace_bytes = 104_857_600", "workspace_bytes = 4_194_304")]);
    let client = stdio(&files, Some(&policy)).await;
    let file = |path: &str| json!({"language": "python", "code": "1", "files": [{"path": path, "content": "x"}]});
    let cases: Vec<(&str, Value)> = vec![
        ("files_dotdot_inside", file("a/../../b")),
        ("files_absolute", file("/workspace/../etc/x")),
        ("files_nul_byte", file("a\u{0}b")),
        ("files_empty_path", file("")),
        ("files_dot_path", file(".")),
        ("files_long_path", file(&"d/".repeat(3000))),
        (
            "files_invalid_base64",
            json!({"language": "python", "code": "1", "files": [{"path": "a", "content": "!!notbase64", "encoding": "base64"}]}),
        ),
        (
            "files_too_many",
            json!({"language": "python", "code": "1", "files": (0..2001).map(|i| json!({"path": format!("f{i}"), "content": ""})).collect::<Vec<_>>()}),
        ),
        (
            "files_duplicate_into_directory",
            json!({"language": "python", "code": "1", "files": [{"path": "a", "content": "x"}, {"path": "a/b", "content": "y"}]}),
        ),
        ("limits_above_policy", json!({"language": "python", "code": "1", "limits": {"fuel": u64::MAX}})),
        ("limits_zero", json!({"language": "python", "code": "1", "limits": {"timeout_ms": 0}})),
        ("limits_negative", json!({"language": "python", "code": "1", "limits": {"memory_mb": -1}})),
        ("stdin_over_cap", json!({"language": "python", "code": "1", "stdin": "s".repeat(5 << 20)})),
    ];
    for (name, args) in cases {
        case(name, Layer::Policy);
        let e = tool_error(call(&client, "execute_code", args).await);
        assert!(e.to_string().len() > 20, "{name}: the error says what is wrong: {e}");
        crate::alive(&client).await;
    }
}

#[tokio::test]
async fn hostile_bodies_over_http() {
    let files = ServerFiles::new();
    let server = start_http(&files, None, &[]).await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(&server.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    let nested = format!("{}{}", "{\"a\":".repeat(100_000), format!("1{}", "}".repeat(100_000)));
    let cases: [(&str, Vec<u8>); 4] = [
        ("http_garbage_body", b"\x00\x01not json".to_vec()),
        ("http_deeply_nested_body", nested.into_bytes()),
        ("http_huge_body", vec![b' '; 64 << 20]),
        (
            "http_batch_of_initializes",
            json!((0..1000).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "initialize", "params": {}})).collect::<Vec<_>>())
                .to_string()
                .into_bytes(),
        ),
    ];
    for (name, body) in cases {
        case(name, Layer::Policy);
        let status = match post(body).await {
            Ok(r) => r.status().as_u16(),
            // The server may close the connection on an oversized body: also a refusal.
            Err(e) => {
                assert!(e.is_request() || e.is_body() || e.is_connect() == false, "{name}: {e}");
                0
            }
        };
        assert!(status == 0 || (400..500).contains(&status), "{name}: status {status}");
        let client = connect_http(&server.url, None).await;
        crate::alive(&client).await;
    }
}
