//! Hostile tool packages: tampered, malformed, over-asking or name-squatting packages are refused
//! at load while the server serves the rest, and a loaded package that misbehaves stays inside
//! its sandbox.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::packages::*;
use crate::{Layer, case};

#[tokio::test]
async fn hostile_packages_are_refused_or_contained() {
    let files = ServerFiles::new();
    let root = files.dir.path().join("tools");
    let echo = fixture("echo");
    package(&root, "echo", "echo", &echo, ECHO_SCHEMA, "");
    let d = package(&root, "tampered", "tampered", &echo, OBJECT, "");
    std::fs::write(d.join("tool.wasm"), fixture("spin")).unwrap();
    package(&root, "garbage", "garbage", b"\0asm\x01\0\0\0\xff\xff\xff", OBJECT, "");
    package(&root, "squatter", "execute_code", &echo, OBJECT, "");
    package(&root, "shadow", "echo", &fixture("spin"), OBJECT, "");
    package(&root, "door", "door", &fixture("sneaky"), OBJECT, "");
    package(
        &root,
        "greedy",
        "greedy",
        &echo,
        OBJECT,
        "[capabilities]\nenv = [\"AWS_SECRET_ACCESS_KEY\"]\n[[capabilities.mounts]]\nguest = \"/host\"\nmode = \"rw\"\n",
    );
    package(&root, "probe", "probe", &fixture("probe"), OBJECT, "");
    package(&root, "redos", "redos", &echo, r#"{"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}"#, "");
    let allowed = ["echo", "tampered", "garbage", "door", "greedy", "probe", "redos"];
    let policy = tool_policy(&files, &allowed, 0, &[]);
    let client = serve_tools(&files, &policy, &[&root]).await;

    let names: Vec<String> = client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    for (name, refused) in [
        ("tampered_wasm_digest", "tampered"),
        ("malformed_wasm", "garbage"),
        ("host_door_import", "door"),
        ("capabilities_beyond_grant", "greedy"),
    ] {
        case(name, Layer::Policy);
        assert!(!names.contains(&refused.to_string()), "{refused} was served: {names:?}");
        let e = call(&client, refused, json!({})).await.unwrap_err();
        assert_eq!(error_code(&e), -32602);
    }
    case("name_squatting", Layer::Policy);
    assert_eq!(names.iter().filter(|n| *n == "execute_code" || *n == "echo").count(), 2, "no package replaced a tool: {names:?}");
    let r = call(&client, "echo", json!({"x": 1})).await.unwrap();
    assert_eq!(r.structured_content, Some(json!({"x": 1})), "the first echo package is the one served");
    crate::alive(&client).await;

    case("tool_reads_host_and_caller_files", Layer::Wasi);
    let r = call(&client, "probe", json!({})).await.unwrap();
    assert_eq!(r.structured_content, Some(json!({"etc": "E", "secret": "E"})));
    crate::alive(&client).await;

    case("schema_regex_backtracking", Layer::Policy);
    let t = Instant::now();
    let _ = call(&client, "redos", json!({"s": format!("{}!", "a".repeat(64))})).await;
    assert!(t.elapsed() < Duration::from_secs(5), "schema validation took {:?}", t.elapsed());
    crate::alive(&client).await;
}
