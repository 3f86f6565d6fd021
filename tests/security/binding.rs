//! Sessions keep the profile they were made under: the same principal reaching the server under
//! another profile cannot use them, and a reload that changes their profile ends them, audited,
//! while other sessions and principals are served.

use std::time::Duration;

use serde_json::json;

use crate::harness::{ServerFiles, audit_events, call, connect_http, exec, start_http, stateless_call, tool_error};
use crate::{Layer, case};

#[tokio::test]
async fn sessions_are_bound_to_their_profile() {
    let files = ServerFiles::new();
    let sha = |t: &str| warden::digest::sha256_hex(t.as_bytes());
    // Two profiles from files, so a reload can change one of them.
    let default = include_str!("../../policies/default.toml");
    std::fs::write(files.dir.path().join("wide.toml"), default.replace("name = \"default\"", "name = \"wide\"")).unwrap();
    std::fs::write(files.dir.path().join("narrow.toml"), default.replace("name = \"default\"", "name = \"narrow\"")).unwrap();
    // Alice holds two tokens, one per profile; bob has the narrow one only.
    let auth = format!(
        "[[roles]]\nname = \"wide\"\nprofile = \"wide.toml\"\n\n[[roles]]\nname = \"narrow\"\nprofile = \"narrow.toml\"\n\n\
         [[tokens]]\nprincipal = \"alice\"\nsha256 = \"{}\"\nroles = [\"wide\"]\n\n\
         [[tokens]]\nprincipal = \"alice\"\nsha256 = \"{}\"\nroles = [\"narrow\"]\n\n\
         [[tokens]]\nprincipal = \"bob\"\nsha256 = \"{}\"\nroles = [\"narrow\"]\n",
        sha("alice-wide"),
        sha("alice-narrow"),
        sha("bob")
    );
    let auth_file = files.dir.path().join("auth.toml");
    std::fs::write(&auth_file, auth).unwrap();
    let server = start_http(&files, None, &["--auth", auth_file.to_str().unwrap()]).await;
    let bob = connect_http(&server.url, Some("bob")).await;

    // Stateless requests bind sessions to the principal alone, so alice reaches her session
    // with either token; the profile binding is what must refuse the second.
    case("session_used_under_another_profile", Layer::Policy);
    let url = server.url.clone();
    let r = stateless_call(&url, "alice-wide", "create_session", json!({"language": "python"})).await;
    let id = r["result"]["structuredContent"]["session_id"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let r = stateless_call(&url, "alice-wide", "execute_code", json!({"language": "python", "code": "x = 41", "session_id": id})).await;
    assert_eq!(r["result"]["structuredContent"]["outcome"], "ok", "{r}");
    let r = stateless_call(&url, "alice-narrow", "execute_code", json!({"language": "python", "code": "print(x)", "session_id": id})).await;
    let refusal = r.to_string();
    assert!(refusal.contains("created under profile") && refusal.contains("wide"), "{r}");
    assert!(r["result"]["structuredContent"]["stdout"].is_null(), "nothing ran: {r}");
    let r =
        stateless_call(&url, "alice-wide", "execute_code", json!({"language": "python", "code": "print(x + 1)", "session_id": id})).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "42\n", "the owner's session is intact: {r}");

    case("reload_changes_a_sessions_profile", Layer::Policy);
    let r = call(&bob, "create_session", json!({"language": "python"})).await.unwrap();
    let bobs = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    let narrow_file = files.dir.path().join("narrow.toml");
    let text = std::fs::read_to_string(&narrow_file).unwrap();
    std::fs::write(&narrow_file, text.replace("timeout_ms = 30_000", "timeout_ms = 20_000")).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.id().unwrap() as i32, libc::SIGHUP) };
    let reloads = audit_events(&files, "policy.reload", 1, Duration::from_secs(5)).await;
    assert_eq!(reloads[0]["result"], "ok", "{reloads:?}");
    let closes = audit_events(&files, "session.close", 1, Duration::from_secs(5)).await;
    assert!(closes.iter().any(|c| c["session_id"] == bobs.as_str() && c["reason"] == "profile_changed"), "{closes:?}");
    let e = tool_error(call(&bob, "execute_code", json!({"language": "python", "code": "1", "session_id": bobs})).await);
    assert!(e.contains("unknown session_id"), "{e}");
    // The session under the unchanged profile lives on; everyone is still served.
    let r = stateless_call(&url, "alice-wide", "execute_code", json!({"language": "python", "code": "print(x)", "session_id": id})).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "41\n", "{r}");
    let (_, s) = exec(&bob, json!({"language": "python", "code": "print(6 * 7)"})).await;
    assert_eq!(s["stdout"], "42\n", "{s}");
    assert_eq!(s["audit"]["limits"]["timeout_ms"], 20_000);
}
