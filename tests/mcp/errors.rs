//! Bad requests get invalid-params errors that say what is wrong, and the server keeps serving.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn bad_requests_are_invalid_params_and_the_server_survives() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let big = "x".repeat(1_048_577);
    let cases = [
        (json!({"language": "ruby", "code": "puts 1"}), "unknown variant"),
        (json!({"language": "python"}), "missing field `code`"),
        (json!({"language": "python", "code": "1", "extra": true}), "unknown field"),
        (json!({"language": "python", "code": big}), "at most"),
        (json!({"language": "python", "code": "1", "files": [{"path": "a", "content": "%%%", "encoding": "base64"}]}), "base64"),
        (json!({"language": "python", "code": "1", "files": [{"path": "../escape", "content": "x"}]}), ".."),
        (json!({"language": "python", "code": "1", "files": [{"path": "/etc/passwd", "content": "x"}]}), "absolute"),
        (json!({"language": "python", "code": "1", "limits": {"timeout_ms": 999_999_999}}), "or less"),
        (json!({"language": "python", "code": "1", "limits": {"memory_mb": 100_000}}), "memory_mb"),
        (json!({"language": "python", "code": "1", "session_id": "s-guessed"}), "unknown session_id"),
    ];
    for (args, needle) in cases {
        let e = tool_error(call(&client, "execute_code", args.clone()).await);
        let msg = e.to_string();
        assert!(msg.contains(needle), "{args}: {msg}");
    }
    // An unknown tool stays a protocol error (the spec lists it as one).
    let e = call(&client, "no_such_tool", json!({})).await.unwrap_err();
    assert_eq!(error_code(&e), -32602);
    let (_, s) = exec(&client, py("print('still serving')")).await;
    assert_eq!(s["stdout"], "still serving\n");
}

#[tokio::test]
async fn a_language_the_policy_forbids_is_refused() {
    let files = ServerFiles::new();
    let policy = files.policy(&[("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]")]);
    let client = stdio(&files, Some(&policy)).await;
    let e = tool_error(call(&client, "execute_code", js("1")).await);
    assert!(e.to_string().contains("not allowed"), "{e}");
}
