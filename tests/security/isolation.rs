//! Reaching other callers: guessed session ids, sessions and artifacts of another connection or
//! another principal, and tools that would widen a caller's own permissions.

use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};

use crate::harness::*;
use crate::{Layer, case};

async fn session(client: &Client) -> String {
    let r = call(client, "create_session", json!({"language": "python"})).await.expect("create_session");
    r.structured_content.expect("session")["session_id"].as_str().unwrap().to_string()
}

fn in_session(code: &str, id: &str) -> Value {
    json!({"language": "python", "code": code, "session_id": id})
}

/// Plants a secret in a session and a one-shot call of `owner`; returns (session id, URIs).
async fn plant(owner: &Client) -> (String, Vec<String>) {
    let id = session(owner).await;
    let (_, s) = exec(owner, in_session("secret = 'owner-only'\nopen('s.txt', 'w').write('session data')", &id)).await;
    let mut uris = vec![s["artifacts"][0]["uri"].as_str().unwrap().to_string()];
    let (_, s) = exec(owner, json!({"language": "python", "code": "open('c.txt', 'w').write('call data')"})).await;
    uris.push(s["artifacts"][0]["uri"].as_str().unwrap().to_string());
    (id, uris)
}

/// `other` can neither use, close nor read what `owner` planted; `owner` still can.
async fn refused_to(other: &Client, owner: &Client, id: &str, uris: &[String]) {
    let e = tool_error(call(other, "execute_code", in_session("print(secret)", id)).await);
    assert!(e.contains("unknown session_id"), "another client's session is unknown to this one: {e}");
    let e = tool_error(call(other, "close_session", json!({"session_id": id})).await);
    assert!(e.contains("unknown session_id"), "{e}");
    for uri in uris {
        assert!(other.read_resource(ReadResourceRequestParams::new(uri.clone())).await.is_err(), "{uri} was readable");
        owner.read_resource(ReadResourceRequestParams::new(uri.clone())).await.expect("the owner reads its artifact");
    }
    let (_, s) = exec(owner, in_session("print(secret)", id)).await;
    assert_eq!(s["stdout"], "owner-only\n", "the owner's session survived");
}

#[tokio::test]
async fn guessed_session_ids_and_artifact_uris() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let _mine = session(&client).await;
    for guess in ["00000000-0000-4000-8000-000000000000", "s-1", "../../etc", "", "%2e%2e"] {
        case("guessed_session_id", Layer::Policy);
        let e = tool_error(call(&client, "execute_code", in_session("1", guess)).await);
        assert!(e.contains("unknown session_id"), "{guess:?}: {e}");
    }
    for uri in [
        "warden://calls/00000000-0000-4000-8000-000000000000/out.txt",
        "warden://calls/../../etc/passwd",
        "warden://sessions/x/%2e%2e/%2e%2e/etc/passwd",
        "file:///etc/passwd",
    ] {
        case("guessed_artifact_uri", Layer::Policy);
        assert!(client.read_resource(ReadResourceRequestParams::new(uri.to_string())).await.is_err(), "{uri}");
    }
    crate::alive(&client).await;
}

#[tokio::test]
async fn another_connection_cannot_use_sessions_or_artifacts() {
    case("cross_connection_session_and_artifacts", Layer::Policy);
    let files = ServerFiles::new();
    let server = start_http(&files, None, &[]).await;
    let alice = connect_http(&server.url, None).await;
    let mallory = connect_http(&server.url, None).await;
    let (id, uris) = plant(&alice).await;
    refused_to(&mallory, &alice, &id, &uris).await;
    crate::alive(&mallory).await;
}

#[tokio::test]
async fn another_principal_cannot_use_sessions_or_artifacts() {
    case("cross_principal_session_and_artifacts", Layer::Policy);
    let files = ServerFiles::new();
    let sha = |t: &str| warden::digest::sha256_hex(t.as_bytes());
    let auth = format!(
        "[[roles]]\nname = \"analyst\"\nprofile = \"data-science\"\n\n[[tokens]]\nprincipal = \"alice\"\nsha256 = \"{}\"\nroles = [\"analyst\"]\n\n[[tokens]]\nprincipal = \"bob\"\nsha256 = \"{}\"\nroles = [\"analyst\"]\n",
        sha("token-alice"),
        sha("token-bob")
    );
    let auth_file = files.dir.path().join("auth.toml");
    std::fs::write(&auth_file, auth).unwrap();
    let server = start_http(&files, None, &["--auth", auth_file.to_str().unwrap()]).await;
    let alice = connect_http(&server.url, Some("token-alice")).await;
    let bob = connect_http(&server.url, Some("token-bob")).await;
    let (id, uris) = plant(&alice).await;
    refused_to(&bob, &alice, &id, &uris).await;

    case("unauthenticated_request", Layer::Policy);
    let r = reqwest::Client::new()
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    crate::alive(&bob).await;
}

#[tokio::test]
async fn no_tool_lets_a_caller_widen_its_own_permissions() {
    case("no_permission_tools", Layer::Policy);
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let tools: Vec<String> = client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        tools,
        [
            "execute_code",
            "create_session",
            "fork_session",
            "snapshot_session",
            "restore_session",
            "list_snapshots",
            "delete_snapshot",
            "close_session"
        ],
        "only the operator widens access"
    );
    // Nor can arguments: limits above the profile are refused, and there is no field for
    // mounts, environment, network or runtimes.
    for extra in [json!({"mounts": ["/"]}), json!({"env": {"A": "b"}}), json!({"network": true}), json!({"policy": "data-science"})] {
        let mut args = json!({"language": "python", "code": "1"});
        args.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let e = tool_error(call(&client, "execute_code", args.clone()).await);
        assert!(e.contains("unknown field"), "{args}: {e}");
    }
    crate::alive(&client).await;
}
