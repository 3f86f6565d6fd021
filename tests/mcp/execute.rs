//! execute_code end to end over stdio: both languages, results, artifacts, progress,
//! cancellation and the concurrency cap.

use std::time::{Duration, Instant};

use rmcp::ClientServiceExt;
use rmcp::model::{ReadResourceRequestParams, ResourceContents};
use rmcp::service::ClientLifecycleMode;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn tools_are_listed_with_schemas_and_annotations() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().expect("server info").name, "warden");
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "execute_code",
            "create_session",
            "fork_session",
            "snapshot_session",
            "restore_session",
            "list_snapshots",
            "delete_snapshot",
            "close_session"
        ]
    );
    let exec = &tools[0];
    let schema = serde_json::to_value(&*exec.input_schema).unwrap();
    assert_eq!(schema["properties"]["language"]["enum"], json!(["python", "javascript"]), "{schema:#}");
    assert_eq!(schema["required"], json!(["language", "code"]));
    assert_eq!(schema["additionalProperties"], json!(false));
    let out = serde_json::to_value(exec.output_schema.as_deref().expect("output schema")).unwrap();
    for field in ["outcome", "exit_code", "stdout", "stderr", "truncated", "duration_ms", "fuel_used", "artifacts", "audit_id", "audit"] {
        assert!(out["properties"][field].is_object(), "outputSchema lacks {field}: {out:#}");
    }
    let a = exec.annotations.as_ref().expect("annotations");
    assert_eq!((a.read_only_hint, a.idempotent_hint, a.open_world_hint), (Some(false), Some(false), Some(false)));
    let d = exec.description.as_deref().unwrap();
    assert!(d.contains("numpy") && d.contains("/workspace") && d.contains("ms wall clock"), "{d}");
}

#[tokio::test]
async fn python_and_javascript_run_and_return_structured_results() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let (r, s) = exec(&client, py("print(6 * 7)")).await;
    assert_eq!(r.is_error, Some(false));
    assert_eq!(s["outcome"], "ok");
    assert_eq!(s["stdout"], "42\n");
    assert_eq!(s["exit_code"], 0);
    assert!(s["fuel_used"].as_u64().unwrap() > 0);
    assert!(text_of(&r).starts_with("ok (exit 0)"), "{}", text_of(&r));
    let (_, s) = exec(&client, js("console.log([1, 2].map(x => x * 2))")).await;
    assert_eq!(s["stdout"], "[ 2, 4 ]\n");
}

#[tokio::test]
async fn guest_failures_are_tool_errors_with_their_outcome() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let (r, s) = exec(&client, py("raise KeyError('k')")).await;
    assert_eq!(r.is_error, Some(true));
    assert_eq!(s["outcome"], "error");
    assert!(s["stderr"].as_str().unwrap().contains("KeyError"));
    let (r, s) = exec(&client, json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 300}})).await;
    assert_eq!(r.is_error, Some(true));
    assert_eq!(s["outcome"], "timeout");
}

#[tokio::test]
async fn each_result_carries_its_audit_event() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let (_, s) = exec(&client, py("print('audited')")).await;
    let audit = &s["audit"];
    assert_eq!(s["audit_id"], audit["id"]);
    assert_eq!(audit["kind"], "execution");
    assert_eq!(audit["principal"], "operator");
    assert_eq!(audit["profile"], "default");
    assert_eq!(audit["outcome"], "ok");
    assert_eq!(audit["code_sha256"], warden::digest::sha256_hex(b"print('audited')"));
    assert_eq!(audit["hash"].as_str().unwrap().len(), 64);
    let logged = audit_events(&files, "execution", 1, Duration::from_secs(1)).await;
    assert_eq!(Value::Object(logged[0].clone()), *audit, "the returned event is the logged one");
}

#[tokio::test]
async fn artifacts_come_back_as_images_and_readable_resource_links() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let code = "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n\
                plt.savefig('chart.png')\nopen('notes.txt', 'w').write('hello notes')\nopen('raw.bin', 'wb').write(bytes(range(8)))";
    let (r, s) = exec(&client, py(code)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    let image = r.content.iter().find_map(|c| c.as_image()).expect("an image block");
    assert_eq!(image.mime_type, "image/png");
    assert!(image.data.len() > 1000);
    let links: Vec<_> = r.content.iter().filter_map(|c| c.as_resource_link()).collect();
    assert_eq!(links.len(), 2, "{:?}", r.content);
    let notes = links.iter().find(|l| l.name == "notes.txt").unwrap();
    assert_eq!(notes.mime_type.as_deref(), Some("text/plain"));
    let read = client.read_resource(ReadResourceRequestParams::new(notes.uri.clone())).await.unwrap();
    match &read.contents[0] {
        ResourceContents::TextResourceContents { text, .. } => assert_eq!(text, "hello notes"),
        other => panic!("expected text: {other:?}"),
    }
    let raw = links.iter().find(|l| l.name == "raw.bin").unwrap();
    let read = client.read_resource(ReadResourceRequestParams::new(raw.uri.clone())).await.unwrap();
    match &read.contents[0] {
        ResourceContents::BlobResourceContents { blob, .. } => assert_eq!(blob, "AAECAwQFBgc="),
        other => panic!("expected a blob: {other:?}"),
    }
    let arts = s["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 3);
    assert!(arts.iter().all(|a| a["sha256"].as_str().unwrap().len() == 64 && a["uri"].as_str().unwrap().starts_with("warden://")));
    let listed = client.list_all_resources().await.unwrap();
    assert_eq!(listed.len(), 3);
}

#[tokio::test]
async fn input_files_and_stdin_reach_the_program() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let (_, s) = exec(
        &client,
        json!({
            "language": "python",
            "code": "import sys\nprint(open('in/a.txt').read(), open('b.bin', 'rb').read(), sys.stdin.read())",
            "files": [{"path": "in/a.txt", "content": "text file"}, {"path": "b.bin", "content": "AAE=", "encoding": "base64"}],
            "stdin": "from stdin",
        }),
    )
    .await;
    assert_eq!(s["stdout"], "text file b'\\x00\\x01' from stdin\n", "{s:#}");
    assert_eq!(s["artifacts"], json!([]), "inputs are not artifacts");
}

#[tokio::test]
async fn progress_is_reported_while_the_guest_runs() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let handle = start_call(&client, "execute_code", py("import time\ntime.sleep(1.3)\nprint('done')")).await;
    let r = call_result(handle.await_response().await.unwrap());
    assert_eq!(r.structured_content.unwrap()["outcome"], "ok");
    let progress = client.service().progress.lock().unwrap().clone();
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(progress.windows(2).all(|w| w[1].progress > w[0].progress), "progress must increase: {progress:?}");
    assert_eq!(progress[0].total, Some(30.0));
}

/// The output chunks a call's progress notifications carried so far, as (stdout, stderr) each.
fn streamed(client: &Client) -> Vec<(String, String)> {
    let progress = client.service().progress.lock().unwrap().clone();
    progress
        .iter()
        .filter_map(|p| {
            let out = p.meta.as_ref()?.0.get("io.github.warden/output")?;
            Some((out["stdout"].as_str().unwrap().to_string(), out["stderr"].as_str().unwrap().to_string()))
        })
        .collect()
}

fn joined(chunks: &[(String, String)]) -> (String, String) {
    (chunks.iter().map(|c| c.0.as_str()).collect(), chunks.iter().map(|c| c.1.as_str()).collect())
}

#[tokio::test]
async fn output_streams_in_progress_notifications_before_the_guest_finishes() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let cases = [
        py("import sys, time\nprint('first')\nprint('careful', file=sys.stderr)\ntime.sleep(1.5)\nprint('second')"),
        js("console.log('first'); console.error('careful');\nawait new Promise((r) => setTimeout(r, 1500));\nconsole.log('second');"),
    ];
    for args in cases {
        client.service().progress.lock().unwrap().clear();
        let started = Instant::now();
        let handle = start_call(&client, "execute_code", args.clone()).await;
        // The first line arrives while the guest still sleeps.
        let first_seen = loop {
            if joined(&streamed(&client)).0.contains("first") {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no output streamed for {args}: {:?}",
                client.service().progress.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let r = call_result(handle.await_response().await.unwrap());
        let finished = started.elapsed();
        let s = r.structured_content.unwrap();
        assert_eq!(s["outcome"], "ok", "{s:#}");
        assert!(
            finished >= first_seen + Duration::from_millis(1000),
            "the first chunk came at {first_seen:?}, the result at {finished:?}: not before the guest finished"
        );
        // Every chunk came before the result, in order, and they add up to the whole output.
        let chunks = streamed(&client);
        assert_eq!(joined(&chunks), ("first\nsecond\n".to_string(), "careful\n".to_string()), "{chunks:?}");
        assert_eq!((s["stdout"].as_str().unwrap(), s["stderr"].as_str().unwrap()), ("first\nsecond\n", "careful\n"));
        let progress = client.service().progress.lock().unwrap().clone();
        let with_first = progress.iter().find(|p| p.meta.is_some()).unwrap();
        assert_eq!(with_first.message.as_deref(), Some("first\ncareful\n"), "the message carries the text too");
        assert!(progress.windows(2).all(|w| w[1].progress > w[0].progress), "progress must increase: {progress:?}");
    }
}

#[tokio::test]
async fn streamed_output_is_bounded_per_notification_and_by_the_cap() {
    let files = ServerFiles::new();
    let policy = files.policy(&[("stdout_bytes = 1_048_576", "stdout_bytes = 100_000")]);
    let client = stdio(&files, Some(&policy)).await;
    // 60 000 bytes at once (more than one notification may carry), then 90 000 more, past the cap.
    let code = "import time\nprint('a' * 59_999)\ntime.sleep(0.5)\nprint('b' * 89_999)";
    let handle = start_call(&client, "execute_code", py(code)).await;
    let s = call_result(handle.await_response().await.unwrap()).structured_content.unwrap();
    assert_eq!((&s["outcome"], &s["truncated"]), (&json!("output_limit"), &json!(true)), "{}", s["message"]);
    let chunks = streamed(&client);
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|(o, e)| o.len() <= 16 << 10 && e.is_empty()), "{:?}", chunks.iter().map(|c| c.0.len()).collect::<Vec<_>>());
    let (out, _) = joined(&chunks);
    assert_eq!(out.len(), 100_000, "streamed no more than the cap");
    assert_eq!(out, s["stdout"].as_str().unwrap(), "and exactly what the result holds");
}

#[tokio::test]
#[allow(deprecated)]
async fn a_client_that_sets_a_log_level_is_told_how_each_call_ended() {
    use rmcp::model::{LoggingLevel, SetLevelRequestParams};
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let logs = || client.service().logs.lock().unwrap().clone();
    exec(&client, py("print(1)")).await;
    assert!(logs().is_empty(), "nothing before a level is set");
    client.peer().set_level(SetLevelRequestParams::new(LoggingLevel::Warning)).await.unwrap();
    exec(&client, py("print(1)")).await;
    exec(&client, py("raise ValueError('boom')")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = logs();
    assert_eq!(got.len(), 1, "only the failure passes a warning level: {got:?}");
    assert_eq!((got[0].level, got[0].logger.as_deref()), (LoggingLevel::Warning, Some("warden")));
    assert_eq!((got[0].data["tool"].as_str(), got[0].data["outcome"].as_str()), (Some("execute_code"), Some("error")), "{:?}", got[0]);
    client.peer().set_level(SetLevelRequestParams::new(LoggingLevel::Info)).await.unwrap();
    exec(&client, py("print(1)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = logs();
    assert_eq!((got.len(), got[1].level, got[1].data["outcome"].as_str()), (2, LoggingLevel::Info, Some("ok")), "{got:?}");
}

#[tokio::test]
async fn cancellation_stops_the_guest_within_100ms() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    for code in ["while True: pass", "import time\ntime.sleep(60)"] {
        let before = audit_events(&files, "execution", 0, Duration::ZERO).await.len();
        let handle = start_call(&client, "execute_code", py(code)).await;
        audit_events(&files, "execution.start", before + 1, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cancelled_at = Instant::now();
        handle.cancel(Some("test".into())).await.unwrap();
        let ends = audit_events(&files, "execution", before + 1, Duration::from_secs(2)).await;
        let stopped_after = cancelled_at.elapsed();
        let end = ends.last().expect("the call ended");
        assert_eq!(end["outcome"], "cancelled", "{end:?}");
        assert!(stopped_after < Duration::from_millis(100), "{code:?} stopped {stopped_after:?} after the cancel");
    }
    // The server still answers.
    let (_, s) = exec(&client, py("print('alive')")).await;
    assert_eq!(s["stdout"], "alive\n");
}

#[tokio::test]
async fn the_concurrency_cap_queues_then_refuses_with_busy() {
    let files = ServerFiles::new();
    let policy = files
        .policy(&[("concurrent_executions = 4", "concurrent_executions = 1"), ("queue_timeout_ms = 10_000", "queue_timeout_ms = 300")]);
    let client = stdio(&files, Some(&policy)).await;
    let long = start_call(&client, "execute_code", py("import time\ntime.sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = call(&client, "execute_code", py("print(1)")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited in the queue first");
    assert_eq!(r.is_error, Some(true));
    let text = text_of(&r);
    assert!(text.contains("busy") && text.contains("retry"), "{text}");
    assert_eq!(call_result(long.await_response().await.unwrap()).structured_content.unwrap()["outcome"], "ok");
    let (_, s) = exec(&client, py("print(2)")).await;
    assert_eq!(s["outcome"], "ok", "a slot is free again");
}

#[tokio::test]
async fn a_2026_07_28_client_without_initialize_works() {
    let files = ServerFiles::new();
    let transport = TokioChildProcess::new(server_command(&files, None, &[])).unwrap();
    let client = Recorder::default()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover { preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28] },
        )
        .await
        .expect("discover");
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 8);
    let (_, s) = exec(&client, js("console.log(await Promise.resolve('modern'))")).await;
    assert_eq!(s["stdout"], "modern\n");
}

#[tokio::test]
async fn stdout_carries_only_json_rpc() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let files = ServerFiles::new();
    let mut cmd = server_command(&files, None, &[]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let requests = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "execute_code", "arguments": {"language": "python", "code": "import sys\nprint('x' * 100)\nprint('to stderr', file=sys.stderr)"}}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "execute_code", "arguments": {"language": "nope", "code": ""}}}),
    ];
    for r in &requests {
        stdin.write_all(format!("{r}\n").as_bytes()).await.unwrap();
    }
    stdin.write_all(b"this is not json\n").await.unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().expect("a line");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("non-JSON on stdout: {line:?} ({e})"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        if let Some(id) = v.get("id").and_then(Value::as_i64) {
            ids.push(id);
        }
    }
    drop(stdin);
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            rest.push(l);
        }
        rest
    })
    .await
    .unwrap();
    for l in rest {
        serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("non-JSON on stdout: {l:?} ({e})"));
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "server exit: {status}");
}
