//! Tool packages end to end: validation at load, schema checks, limits, isolation, code mode,
//! and the example tools built with the guest SDK.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/harness.rs"]
mod harness;
#[path = "../common/packages.rs"]
mod packages;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use harness::*;
use packages::*;

fn tools_list_json(dirs: &Path, policy: &Path) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["tools", "list", "--json", "--policy", policy.to_str().unwrap(), dirs.to_str().unwrap()])
        .env("WARDEN_HOME", crate::common::home().root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn bad_packages_are_refused_with_reasons_and_the_rest_load() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    let echo = fixture("echo");
    package(&root, "a-echo", "echo", &echo, ECHO_SCHEMA, "");
    package(&root, "b-echo-again", "echo", &echo, ECHO_SCHEMA, "");
    package(&root, "bad-name", "bad name!", &echo, OBJECT, "");
    package(&root, "reserved", "execute_code", &echo, OBJECT, "");
    let d = package(&root, "digest", "digest", &echo, OBJECT, "");
    std::fs::write(d.join("tool.wasm"), fixture("spin")).unwrap();
    package(&root, "garbage", "garbage", b"\0asm not really", OBJECT, "");
    package(&root, "schema", "schema", &echo, r#"{"type": "string"}"#, "");
    package(&root, "reactor", "reactor", &fixture("reactor"), OBJECT, "");
    package(&root, "sneaky", "sneaky", &fixture("sneaky"), OBJECT, "");
    let policy = tool_policy(&files, &["echo"], 0, &[]);
    let listed = tools_list_json(&root, &policy);
    let names: Vec<&str> = listed["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo"]);
    let refused: Vec<(String, String)> = listed["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string(), r["reason"].as_str().unwrap().to_string()))
        .collect();
    let reason = |dir: &str| {
        refused.iter().find(|(d, _)| d == dir).map(|(_, r)| r.clone()).unwrap_or_else(|| panic!("{dir} not refused: {refused:?}"))
    };
    assert!(reason("b-echo-again").contains("already taken"));
    assert!(reason("bad-name").contains("name"));
    assert!(reason("reserved").contains("warden's own"));
    assert!(reason("digest").contains("sha256"));
    assert!(reason("garbage").contains("not a valid module"));
    assert!(reason("schema").contains("input_schema"));
    assert!(reason("reactor").contains("not a WASI command"));
    assert!(reason("sneaky").contains("host.call"));

    let client = serve_tools(&files, &policy, &[&root]).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert!(names.contains(&"echo".to_string()) && names.contains(&"execute_code".to_string()), "{names:?}");
    assert_eq!(names.len(), 9, "{names:?}");
}

#[tokio::test]
async fn a_package_asking_beyond_its_grant_is_not_served() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    let extra = "[capabilities]\nenv = [\"API_KEY\"]\n[[capabilities.mounts]]\nguest = \"/data\"\nmode = \"rw\"\n";
    package(&root, "greedy", "greedy", &fixture("echo"), OBJECT, extra);
    let policy = tool_policy(&files, &["greedy"], 0, &[]);
    let listed = tools_list_json(&root, &policy);
    let t = &listed["tools"][0];
    assert!(t["granted"].is_null());
    assert!(t["refused_by_profile"].as_str().unwrap().contains("API_KEY"), "{t:#}");
    let client = serve_tools(&files, &policy, &[&root]).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().all(|t| t.name != "greedy"));
    let e = call(&client, "greedy", json!({})).await.unwrap_err();
    assert_eq!(error_code(&e), -32602);
}

#[tokio::test]
async fn tool_calls_are_schema_checked_and_return_structured_results() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(
        &root,
        "echo",
        "echo",
        &fixture("echo"),
        ECHO_SCHEMA,
        "[annotations]\nread_only = true\ndestructive = false\nidempotent = true\nopen_world = false\n",
    );
    let policy = tool_policy(&files, &["echo"], 0, &[]);
    let client = serve_tools(&files, &policy, &[&root]).await;
    let tools = client.list_all_tools().await.unwrap();
    let echo = tools.iter().find(|t| t.name == "echo").unwrap();
    assert_eq!(serde_json::to_value(&*echo.input_schema).unwrap()["required"], json!(["x"]));
    assert_eq!(echo.annotations.as_ref().unwrap().read_only_hint, Some(true));
    let r = call(&client, "echo", json!({"x": 5})).await.unwrap();
    assert_eq!(r.is_error, Some(false));
    assert_eq!(r.structured_content, Some(json!({"x": 5})));
    let meta = &r.meta.as_ref().unwrap().0["warden"];
    assert_eq!(meta["outcome"], "ok");
    assert_eq!(meta["audit"]["tool"], "echo");
    for bad in [json!({"x": "five"}), json!({}), json!({"x": 1, "y": 2})] {
        let e = tool_error(call(&client, "echo", bad.clone()).await);
        assert!(e.to_string().contains("input schema"), "{e}");
    }
    let ends = audit_events(&files, "execution", 1, Duration::from_secs(2)).await;
    assert_eq!(ends.iter().filter(|e| e["tool"] == "echo").count(), 1, "only the valid call ran: {ends:?}");
}

#[tokio::test]
async fn misbehaving_tools_hit_their_limits() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(&root, "spin", "spin", &fixture("spin"), OBJECT, "[capabilities.limits]\ntimeout_ms = 300\n");
    package(&root, "hog", "hog", &fixture("hog"), OBJECT, "[capabilities.limits]\nmemory_mb = 32\n");
    package(&root, "flood", "flood", &fixture("flood"), OBJECT, "");
    let policy = tool_policy(&files, &["spin", "hog", "flood"], 0, &[]);
    let client = serve_tools(&files, &policy, &[&root]).await;
    for (tool, outcome) in [("spin", "timeout"), ("hog", "memory_limit"), ("flood", "output_limit")] {
        let r = call(&client, tool, json!({})).await.unwrap();
        assert_eq!(r.is_error, Some(true), "{tool}");
        let meta = &r.meta.as_ref().unwrap().0["warden"];
        assert_eq!(meta["outcome"], outcome, "{tool}: {meta:#}");
    }
    let r = call(&client, "spin", json!({})).await.unwrap();
    let meta = &r.meta.as_ref().unwrap().0["warden"];
    assert!(meta["duration_ms"].as_u64().unwrap() < 800, "the tool's own lower limit applies: {meta}");
    let (_, s) = exec(&client, py("print('still here')")).await;
    assert_eq!(s["stdout"], "still here\n");
}

#[tokio::test]
async fn a_tool_sees_neither_host_files_nor_its_callers_workspace() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(&root, "probe", "probe", &fixture("probe"), OBJECT, "");
    let policy = tool_policy(&files, &["probe"], 4, &[]);
    let client = serve_tools(&files, &policy, &[&root]).await;
    let r = call(&client, "probe", json!({})).await.unwrap();
    assert_eq!(r.structured_content, Some(json!({"etc": "E", "secret": "E"})));
    let (_, s) = exec(&client, py("open('secret.txt', 'w').write('mine')\nfrom host import tools\nprint(tools.probe())")).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    assert_eq!(s["stdout"], "{'etc': 'E', 'secret': 'E'}\n");
}

#[tokio::test]
async fn python_code_calls_tools_under_the_same_checks_and_audit() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(&root, "echo", "echo", &fixture("echo"), ECHO_SCHEMA, "");
    package(&root, "spin", "spin", &fixture("spin"), OBJECT, "");
    let policy = tool_policy(&files, &["echo"], 2, &[]);
    let client = serve_tools(&files, &policy, &[&root]).await;
    let code = r#"
from host import tools
out = [tools.echo(x=41)['x'] + 1]
try:
    tools.echo(x='nope')
except Exception as e:
    out.append(type(e).__name__)
try:
    tools.spin()
except Exception as e:
    out.append(type(e).__name__)
try:
    tools.echo(x=3)
except Exception as e:
    out.append(type(e).__name__)
print(out)
"#;
    let (_, s) = exec(&client, py(code)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    assert_eq!(s["stdout"], "[42, 'ToolArgumentError', 'AttributeError', 'ToolBudgetExceeded']\n", "{s:#}");
    let calls = audit_events(&files, "tool.call", 1, Duration::from_secs(2)).await;
    assert_eq!(calls.len(), 1, "one nested call ran: {calls:?}");
    assert_eq!(calls[0]["tool"], "echo");
    assert_eq!(calls[0]["via"], "code");
    assert_eq!(calls[0]["parent_call_id"], s["audit"]["call_id"]);
    assert_eq!(calls[0]["outcome"], "ok");
}

#[tokio::test]
async fn code_mode_is_off_unless_the_profile_allows_it() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(&root, "echo", "echo", &fixture("echo"), ECHO_SCHEMA, "");
    let policy = tool_policy(&files, &["echo"], 0, &[]);
    let client = serve_tools(&files, &policy, &[&root]).await;
    let (_, s) =
        exec(&client, py("try:\n    from host import tools\n    tools.echo(x=1)\nexcept ImportError as e:\n    print('no tools:', e)"))
            .await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    assert!(s["stdout"].as_str().unwrap().starts_with("no tools:"), "{s:#}");
    assert!(audit_events(&files, "tool.call", 0, Duration::ZERO).await.is_empty());
}

/// The example tools, built by `scripts/test` with `warden tools build`.
fn examples() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    for t in ["csv_summary", "markdown_to_html", "json_query"] {
        assert!(
            dir.join(t).join("package/tool.toml").is_file(),
            "examples/{t}/package is missing: build it with `warden tools build examples/{t}` (scripts/test does)"
        );
    }
    dir
}

#[tokio::test]
async fn the_example_tools_work_end_to_end() {
    let files = ServerFiles::new();
    let dir = examples();
    let client = serve_tools(&files, Path::new("tool-runner"), &[&dir]).await;
    let names: Vec<String> = client.list_all_tools().await.unwrap().iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["csv_summary", "json_query", "markdown_to_html"], "tool-runner offers tools only");
    let r = call(&client, "csv_summary", json!({"csv": "city,pop\nParis,2100000\nLyon,520000\nNice,\n"})).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let s = r.structured_content.unwrap();
    assert_eq!(s["rows"], 3);
    let pop = s["columns"].as_array().unwrap().iter().find(|c| c["name"] == "pop").unwrap();
    assert_eq!(pop["numeric"], true);
    assert_eq!(pop["max"], 2100000.0);
    let r = call(&client, "markdown_to_html", json!({"markdown": "# Hi\n\n*x* <script>alert(1)</script>"})).await.unwrap();
    let html = r.structured_content.unwrap()["html"].as_str().unwrap().to_string();
    assert!(html.contains("<h1>Hi</h1>") && html.contains("<em>x</em>") && !html.contains("<script>"), "{html}");
    let r = call(&client, "json_query", json!({"document": {"a": [{"b": 1}, {"b": 2}]}, "query": "$.a[*].b"})).await.unwrap();
    assert_eq!(r.structured_content, Some(json!({"matches": [1, 2], "count": 2})));
    let r = call(&client, "json_query", json!({"document": {}, "query": "$[?"})).await.unwrap();
    assert_eq!(r.is_error, Some(true), "a bad query is a tool error");
}

#[tokio::test]
async fn python_code_calls_the_example_tools() {
    let files = ServerFiles::new();
    let dir = examples();
    let policy = tool_policy(&files, &["csv_summary", "json_query", "markdown_to_html"], 10, &[]);
    let client = serve_tools(&files, &policy, &[&dir]).await;
    let code = "from host import tools\n\
                s = tools.csv_summary(csv='a,b\\n1,2\\n3,4\\n')\n\
                q = tools.json_query(document={'k': [5, 6]}, query='$.k[1]')\n\
                print(s['rows'], [c['mean'] for c in s['columns']], q['matches'])";
    let (_, s) = exec(&client, py(code)).await;
    assert_eq!(s["stdout"], "2 [2.0, 3.0] [6]\n", "{s:#}");
}

#[tokio::test]
async fn nested_tool_calls_spend_the_principals_rate() {
    // A code-mode call runs under its parent's execution slot, but it is work the principal asked
    // for: each one spends a call from the principal's per-minute budget, so nested calls cannot
    // multiply a principal's share of the server.
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    package(&root, "echo", "echo", &fixture("echo"), ECHO_SCHEMA, "");
    let policy = tool_policy(&files, &["echo"], 20, &[("calls_per_minute = 600", "calls_per_minute = 5")]);
    let client = serve_tools(&files, &policy, &[&root]).await;
    let code = r#"
from host import tools
ok, refused = 0, []
for i in range(8):
    try:
        tools.echo(x=i)
        ok += 1
    except Exception as e:
        refused.append(str(e))
print(ok, len(refused))
print(refused[0] if refused else '')
"#;
    let (_, s) = exec(&client, py(code)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    let out = s["stdout"].as_str().unwrap();
    // The outer call spent one of the five; four nested calls fit, the other four are refused.
    assert!(out.starts_with("4 4\n"), "{out}");
    assert!(out.contains("rate limited"), "{out}");
    assert_eq!(audit_events(&files, "tool.call", 4, Duration::from_secs(2)).await.len(), 4);
}
