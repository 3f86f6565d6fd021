//! Host hardening, checked from outside and inside: the real binary, confined, still serves
//! everything; its threads all carry the seccomp filter; and a probe that applies the same code
//! proves reads outside the roots, sockets and exec are refused.
//!
//! Tests that need Landlock ABI 6 and seccomp print SKIPPED with the reason on a kernel without
//! them, and are counted as skipped in the suite's summary line (`harden: N passed, F failed, K
//! skipped`, printed at exit), so a kernel without them cannot make this suite look green.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/harness.rs"]
mod harness;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};

use harness::*;

/// Why hardening cannot be tested here, if it cannot.
fn unsupported() -> Option<String> {
    let abi = warden::harden::landlock::kernel_abi();
    if abi < warden::harden::landlock::TARGET_ABI as i32 {
        return Some(format!("the kernel's Landlock ABI is {abi}; these tests need 6 (Linux 6.12)"));
    }
    let seccomp = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !seccomp.contains("kill_process") {
        return Some("seccomp filters are not available in this kernel".into());
    }
    None
}

/// Announces the case (for the summary line) and skips it, counted, where hardening is missing.
macro_rules! require_hardening {
    () => {
        common::summary::case();
        if let Some(why) = unsupported() {
            common::skipped(&why);
            return;
        }
    };
}

fn warden(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warden")).args(args).env("WARDEN_HOME", common::home().root()).output().unwrap()
}

/// Seccomp mode and NoNewPrivs of every thread of `pid`, read from outside.
fn threads_of(pid: u32) -> Vec<(u32, u32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().parse::<u32>().unwrap();
            (field("Seccomp:"), field("NoNewPrivs:"))
        })
        .collect()
}

#[test]
fn the_probe_shows_reads_sockets_and_processes_refused_after_lockdown() {
    require_hardening!();
    let out = warden(&["__harden-probe", "contained"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "read_etc_passwd",
        "write_outside",
        "follow_planted_symlink",
        "blocking_pool_read",
        "new_thread_read",
        "socket_inet",
        "socket_unix",
        "connect",
        "early_thread_socket",
    ] {
        assert!(r[key].as_str().unwrap_or("").starts_with("refused"), "{key}: {}", r[key]);
    }
    if r["landlock_tsync"] == true {
        assert!(r["early_thread_read"].as_str().unwrap().starts_with("refused"));
    } else {
        common::summary::case();
        common::skipped(&format!(
            "(part) a thread created before lockdown escapes Landlock on ABI < 8 (read: {}); warden serve refuses to lock down while such a thread exists, which hardening_refuses_to_start_with_an_extra_thread checks",
            r["early_thread_read"]
        ));
    }
    assert_eq!(r["python"], "ok");
    assert_eq!(r["javascript"], "ok");
    assert_eq!(r["all_threads_filtered"], true);
    assert_eq!(r["landlock"]["status"], "full");
    assert_eq!(r["seccomp"]["status"], "enforced");
}

#[test]
fn exec_and_process_spawning_are_refused_or_fatal() {
    require_hardening!();
    let out = warden(&["__harden-probe", "exec"]);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "execve must trip the kill filter: {}", out.status);
    let out = warden(&["__harden-probe", "spawn"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.signal() == Some(libc::SIGSYS) || said.contains("refused"), "{} {said}", out.status);
}

#[test]
fn doctor_reports_the_kernel_and_passes_its_self_test() {
    require_hardening!();
    let out = warden(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["landlock_abi"].as_i64().unwrap() >= 6);
    assert_eq!(r["seccomp"], true);
    let checks = r["self_test"].as_array().unwrap();
    assert!(checks.len() >= 12);
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:#?}");
    // The executor path `serve` uses: a confined spawner, one confined executor running both
    // languages, and reads of the front's files refused from inside it.
    for needed in ["python runs in a confined executor process", "javascript runs in a confined executor process"] {
        assert!(checks.iter().any(|c| c["check"] == needed), "{needed}: {checks:#?}");
    }
    assert!(
        checks.iter().any(|c| c["check"].as_str().unwrap().ends_with("reading /etc/passwd is refused")
            && c["check"].as_str().unwrap().starts_with("executor ")),
        "{checks:#?}"
    );
    let tree = &r["processes"];
    assert_eq!(tree["spawner"]["hardening"]["landlock"]["status"], "full", "{tree:#}");
    let executors = tree["executors"].as_array().unwrap();
    assert_eq!(executors.len(), 1, "{tree:#}");
    assert!(executors[0]["pid"].as_u64().is_some_and(|p| p != tree["spawner"]["pid"].as_u64().unwrap()), "{tree:#}");
    assert_eq!(executors[0]["hardening"]["seccomp"]["status"], "enforced", "{tree:#}");
    let out = warden(&["doctor", "--no-self-test", "--policy", "strict"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hardening mode enforce") && text.contains("ENOSYS"), "{text}");
}

#[test]
fn hardening_refuses_to_start_with_an_extra_thread() {
    common::summary::case();
    // The ordering guard itself: Landlock must be applied while the process has one thread.
    let handle = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
    assert!(matches!(warden::harden::assert_single_threaded(), Err(warden::harden::HardenError::NotSingleThreaded(n)) if n >= 2));
    handle.join().unwrap();
}

#[tokio::test]
async fn an_enforced_server_still_serves_everything_and_every_thread_is_filtered() {
    require_hardening!();
    let files = ServerFiles::new();
    let policy = files.policy(&[
        ("mode = \"best-effort\"", "mode = \"enforce\""),
        ("[hardening]", "[tools]\nallowed = [\"csv_summary\"]\ncalls_per_execution = 2\n\n[hardening]"),
    ]);
    let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let server = start_http(&files, Some(&policy), &["--tools", examples.to_str().unwrap()]).await;
    let pid = server.child.id().unwrap();
    // The hardening report is in the server.start audit line (unauthenticated /healthz says
    // only its status).
    let start = audit_events(&files, "server.start", 1, Duration::from_secs(5)).await;
    assert_eq!(start[0]["hardening"]["mode"], "enforce");
    assert_eq!(start[0]["hardening"]["landlock"]["status"], "full");
    let health: Value = reqwest::get(format!("{}/healthz", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    let client = connect_http(&server.url, None).await;
    let (_, s) = exec(&client, py("import numpy as np\nprint(np.arange(5).sum())")).await;
    assert_eq!(s["stdout"], "10\n", "{s:#}");
    let (_, s) = exec(&client, js("console.log(await Promise.resolve('js ok'))")).await;
    assert_eq!(s["stdout"], "js ok\n");
    let r = call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    let sid = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    exec(&client, json!({"language": "python", "code": "k = 5", "session_id": sid})).await;
    let (_, s) = exec(&client, json!({"language": "python", "code": "print(k * 2)", "session_id": sid})).await;
    assert_eq!(s["stdout"], "10\n");
    let r = call(&client, "csv_summary", json!({"csv": "a\n1\n2\n"})).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["rows"], 2);
    let (_, s) = exec(&client, py("from host import tools\nprint(tools.csv_summary(csv='a\\n1\\n')['rows'])")).await;
    assert_eq!(s["stdout"], "1\n", "{s:#}");
    let (r, _) = exec(&client, py("open('out.txt', 'w').write('hardened')")).await;
    let link = r.content.iter().find_map(|c| c.as_resource_link()).unwrap();
    client.read_resource(ReadResourceRequestParams::new(link.uri.clone())).await.unwrap();

    let threads = threads_of(pid);
    assert!(threads.len() >= 4, "{threads:?}");
    assert!(threads.iter().all(|&(s, n)| s == 2 && n == 1), "every thread filtered: {threads:?}");
    let start = audit_events(&files, "server.start", 1, Duration::from_secs(1)).await;
    assert_eq!(start[0]["hardening"]["seccomp"]["status"], "enforced");
}

#[tokio::test]
async fn a_stdio_server_is_confined_too() {
    require_hardening!();
    let files = ServerFiles::new();
    let cmd = server_command(&files, None, &[]);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let pid = transport.id().unwrap();
    use rmcp::ServiceExt;
    let client = Recorder::default().serve(transport).await.expect("initialize");
    let (_, s) = exec(&client, py("print('stdio ok')")).await;
    assert_eq!(s["stdout"], "stdio ok\n");
    let threads = threads_of(pid);
    assert!(threads.iter().all(|&(s, n)| s == 2 && n == 1), "{threads:?}");
}

#[tokio::test]
async fn guest_planted_symlinks_do_not_lead_the_host_outside_the_workspace() {
    require_hardening!();
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let code = "import os\n\
                os.symlink('../../../../../../../../etc/passwd', 'passwd.txt')\n\
                os.symlink('../../../../../../../..', 'root')\n\
                open('real.txt', 'w').write('mine')";
    let (_, s) = exec(&client, py(code)).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    let arts: Vec<&str> = s["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(arts, ["real.txt"], "symlinks are never artifacts");
    let base = s["artifacts"][0]["uri"].as_str().unwrap().trim_end_matches("real.txt").to_string();
    for path in ["passwd.txt", "root/etc/passwd", "../../../../etc/passwd"] {
        assert!(client.read_resource(ReadResourceRequestParams::new(format!("{base}{path}"))).await.is_err(), "{path}");
    }
    let (_, s) = exec(&client, py("print('alive')")).await;
    assert_eq!(s["stdout"], "alive\n");
}

/// Parent pid of `pid`, from `/proc/PID/status`.
fn ppid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| ppid_of(p) == Some(pid))
        .collect()
}

/// The executor processes of server `front`: the children of its spawner (its one child).
fn executors_of(front: u32) -> Vec<u32> {
    let spawners = children_of(front);
    assert_eq!(spawners.len(), 1, "the front's only child is its spawner: {spawners:?}");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", spawners[0])).unwrap();
    assert!(cmdline.contains("spawner\0--fd"), "{cmdline:?}");
    children_of(spawners[0])
}

/// `(total virtual bytes mapped, whether any mapping is a file under `dir`)` of `pid`.
fn maps_of(pid: u32, dir: &std::path::Path) -> (u64, bool) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut total = 0u64;
    let mut under = false;
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        total += u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
        under |= line.contains(&*dir.to_string_lossy());
    }
    (total, under)
}

/// Two profiles with different mounts (so two executor groups), served with bearer tokens:
/// `token-a` gets profile `pa` (mount `a/` at /data), `token-b` profile `pb` (mount `b/`).
async fn two_group_server(files: &ServerFiles, extra: &[&str]) -> HttpServer {
    let dir = files.dir.path();
    for (name, sub) in [("pa", "a"), ("pb", "b")] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("secret.txt"), format!("only {name} may read this")).unwrap();
        let text = include_str!("../../policies/default.toml")
            .replace("name = \"default\"", &format!("name = \"{name}\""))
            .replace("mode = \"best-effort\"", "mode = \"enforce\"")
            + &format!("\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"ro\"\n", dir.join(sub).display().to_string());
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }
    let sha = |t: &str| warden::digest::sha256_hex(t.as_bytes());
    let auth = format!(
        "[[roles]]\nname = \"ra\"\nprofile = \"pa.toml\"\n\n[[roles]]\nname = \"rb\"\nprofile = \"pb.toml\"\n\n\
         [[tokens]]\nprincipal = \"a\"\nsha256 = {:?}\nroles = [\"ra\"]\n\n[[tokens]]\nprincipal = \"b\"\nsha256 = {:?}\nroles = [\"rb\"]\n",
        sha("token-a"),
        sha("token-b")
    );
    let auth_file = dir.join("auth.toml");
    std::fs::write(&auth_file, auth).unwrap();
    let mut args = vec!["--auth", auth_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let pa = dir.join("pa.toml");
    start_http(files, Some(&pa), &args).await
}

#[tokio::test]
async fn guests_run_in_confined_executor_processes_and_the_front_maps_no_guest_code() {
    require_hardening!();
    let files = ServerFiles::new();
    let server = two_group_server(&files, &["--executors", "1"]).await;
    let front = server.child.id().unwrap();
    for token in ["token-a", "token-b"] {
        let r = stateless_call(&server.url, token, "execute_code", py("print(open('/data/secret.txt').read())")).await;
        let s = &r["result"]["structuredContent"];
        assert_eq!(s["outcome"], "ok", "{r:#}");
    }

    // Two groups, one executor each: processes of their own, started by exec (their own
    // binary image) from the spawner, not threads or forks of the front.
    let executors = executors_of(front);
    assert_eq!(executors.len(), 2, "{executors:?}");
    let cache = common::home().cache();
    let (front_vm, front_maps_cache) = maps_of(front, &cache);
    assert!(!front_maps_cache, "the front maps no compiled module");
    assert!(front_vm < 16 << 30, "the front reserves no guest memory: {front_vm} bytes mapped");
    for &pid in &executors {
        let (vm, maps_cache) = maps_of(pid, &cache);
        assert!(maps_cache && vm > 16 << 30, "executor {pid} holds the compiled code and guest memory ({vm} bytes)");
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), std::fs::read_link(format!("/proc/{front}/exe")).unwrap());
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(cmdline.contains("executor\0--channel-fd"), "{cmdline:?}");
        let threads = threads_of(pid);
        assert!(threads.iter().all(|&(s, n)| s == 2 && n == 1), "every executor thread filtered: {threads:?}");
        let oom: i32 = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim().parse().unwrap();
        assert_eq!(oom, 1000, "the kernel's OOM killer picks executors first");
    }

    // From inside each executor: its own group's mount opens; the other group's, the audit log
    // and the auth file do not; no socket can be made.
    let health: Value =
        reqwest::Client::new().get(format!("{}/healthz", server.base)).bearer_auth("token-a").send().await.unwrap().json().await.unwrap();
    assert_eq!(health["pid"], front);
    let views = health["executors"].as_array().unwrap();
    assert_eq!(views.len(), 2, "{health:#}");
    let dir = files.dir.path().to_string_lossy().to_string();
    for v in views {
        assert!(executors.contains(&(v["pid"].as_u64().unwrap() as u32)), "{v:#}");
        assert_eq!(v["all_threads_filtered"], true, "{v:#}");
        assert_eq!(v["socket_refused"], true, "{v:#}");
        assert_eq!(v["hardening"]["landlock"]["status"], "full");
        let own = v["group"]["read_only"][0].as_str().unwrap().to_string();
        let opens = v["opens"].as_array().unwrap();
        for p in opens {
            let path = p["path"].as_str().unwrap();
            let expected = path == own;
            assert_eq!(p["opened"], expected, "executor of {own} opening {path}: {p:#}");
        }
        for needed in [format!("{dir}/a"), format!("{dir}/b"), format!("{dir}/auth.toml"), format!("{dir}/audit.jsonl")] {
            assert!(opens.iter().any(|p| p["path"] == needed.as_str()), "{needed} probed: {opens:#?}");
        }
    }
}

#[tokio::test]
async fn a_reload_retires_executors_no_profile_needs_and_refuses_mounts_they_cannot_reach() {
    require_hardening!();
    let files = ServerFiles::new();
    let server = two_group_server(&files, &["--executors", "1"]).await;
    let front = server.child.id().unwrap();
    let before = executors_of(front);
    assert_eq!(before.len(), 2, "{before:?}");
    let dir = files.dir.path().to_path_buf();
    let reloads = |n| audit_events(&files, "policy.reload", n, Duration::from_secs(10));
    let remount = |sub: &str| {
        let pb = dir.join("pb.toml");
        let text = std::fs::read_to_string(&pb).unwrap();
        let from = text.lines().find(|l| l.starts_with("host = ")).unwrap().to_string();
        std::fs::write(&pb, text.replace(&from, &format!("host = {:?}", dir.join(sub).display().to_string()))).unwrap();
    };

    // pb now mounts a/, like pa: one group is left, and b's executor is stopped and not replaced.
    remount("a");
    // SAFETY: a plain kill(2) of the server this test started.
    unsafe { libc::kill(front as i32, libc::SIGHUP) };
    let events = reloads(1).await;
    assert_eq!(events[0]["result"], "ok", "{:?}", events[0]);
    let started = std::time::Instant::now();
    let after = loop {
        let now = executors_of(front);
        if now.len() == 1 {
            break now;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the unused group's executor is still there: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(before.contains(&after[0]), "the survivor is one of the original executors: {before:?} {after:?}");
    let r = stateless_call(&server.url, "token-b", "execute_code", py("print(open('/data/secret.txt').read())")).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "only pa may read this\n", "{r:#}");

    // A mount the spawner was not given at start cannot be reached by any executor it starts:
    // the reload is refused and says to restart.
    std::fs::create_dir_all(dir.join("c")).unwrap();
    remount("c");
    // SAFETY: as above.
    unsafe { libc::kill(front as i32, libc::SIGHUP) };
    let events = reloads(2).await;
    assert_eq!(events[1]["result"], "error", "{:?}", events[1]);
    assert!(events[1]["error"].as_str().unwrap().contains("restart the server to add a mount"), "{:?}", events[1]);
    let r = stateless_call(&server.url, "token-b", "execute_code", py("print(open('/data/secret.txt').read())")).await;
    assert_eq!(r["result"]["structuredContent"]["stdout"], "only pa may read this\n", "{r:#}");
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warden_executor_restarts_total 0"), "a retired executor is no crash: {metrics}");
}

#[tokio::test]
async fn a_killed_executor_fails_only_its_own_calls_and_loses_only_its_sessions() {
    require_hardening!();
    let files = ServerFiles::new();
    // The replacement's ready moment is an info line.
    let logged = harness::Server { log: Some("warn,warden::service::executors=info".into()), ..Default::default() };
    let server = harness::start_http_of(&logged, &files, None, &["--executors", "2"]).await;
    let front = server.child.id().unwrap();
    let client = connect_http(&server.url, None).await;
    let r = call(&client, "create_session", json!({"language": "python"})).await.unwrap();
    let sid = r.structured_content.unwrap()["session_id"].as_str().unwrap().to_string();
    let (_, s) = exec(&client, json!({"language": "python", "code": "k = 5", "session_id": sid})).await;
    assert_eq!(s["outcome"], "ok");

    // Two slow calls at once: placement puts one on each executor.
    let slow = py("import time\ntime.sleep(3)\nprint('survived')");
    let (c1, c2) = (connect_http(&server.url, None).await, connect_http(&server.url, None).await);
    let (s1, s2) = (slow.clone(), slow.clone());
    let first = tokio::spawn(async move { exec(&c1, s1).await.1 });
    let second = tokio::spawn(async move { exec(&c2, s2).await.1 });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let executors = executors_of(front);
    assert_eq!(executors.len(), 2, "{executors:?}");
    let victim = executors[0];
    // SAFETY: a plain kill(2) of a process this test's server started.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let killed = std::time::Instant::now();
    let killed_at = chrono::Utc::now();
    let outcomes = [first.await.unwrap(), second.await.unwrap()];
    let crashed: Vec<&Value> = outcomes.iter().filter(|s| s["outcome"] == "crashed").collect();
    let fine: Vec<&Value> = outcomes.iter().filter(|s| s["outcome"] == "ok").collect();
    assert_eq!((crashed.len(), fine.len()), (1, 1), "exactly the victim's call failed: {outcomes:#?}");
    assert_eq!(fine[0]["stdout"], "survived\n");
    assert!(crashed[0]["message"].as_str().unwrap().contains("Retry"), "{:#}", crashed[0]);

    // The survivor keeps serving, and the victim is replaced within a bounded time.
    let (_, s) = exec(&client, py("print(6 * 7)")).await;
    assert_eq!(s["outcome"], "ok", "{s:#}");
    assert_eq!(s["stdout"], "42\n");
    let replaced = loop {
        let now = executors_of(front);
        if now.len() == 2 && !now.contains(&victim) {
            break now;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no replacement: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The restart time, from the kill to the replacement's ready (the front logs that moment).
    let ready = server.log_line(&["executor replaced"], Duration::from_secs(5)).await.expect("the replacement is logged");
    let ready_at = chrono::DateTime::parse_from_rfc3339(ready.split_whitespace().next().unwrap()).expect("a timestamped log line");
    let restart = (ready_at.with_timezone(&chrono::Utc) - killed_at).to_std().expect("ready after the kill");
    eprintln!("executor replaced and ready {restart:?} after the kill: {replaced:?}");
    assert!(restart < Duration::from_secs(30), "{restart:?}");
    let line = server.log_line(&["an executor ended", &format!("pid={victim}")], Duration::from_secs(5)).await;
    assert!(line.as_deref().is_some_and(|l| l.contains("killed by signal 9 (SIGKILL)")), "the log says how it ended: {line:?}");
    assert!(!std::path::Path::new(&format!("/proc/{victim}")).exists(), "the killed executor was reaped");
    // The session is either intact (it was on the survivor) or lost with a clear message.
    let turn = call(&client, "execute_code", json!({"language": "python", "code": "print(k)", "session_id": sid})).await;
    match turn {
        Ok(r) if r.is_error != Some(true) => assert_eq!(r.structured_content.unwrap()["stdout"], "5\n"),
        Ok(r) => assert!(text_of(&r).contains("was lost"), "{}", text_of(&r)),
        Err(e) => assert!(e.to_string().contains("was lost"), "{e}"),
    }

    // Each crashed call has its end in the audit log, and the chain verifies.
    let ends = audit_events(&files, "execution", 4, Duration::from_secs(5)).await;
    assert!(ends.iter().any(|e| e["outcome"] == "crashed"), "{ends:#?}");
    let out = Command::new(env!("CARGO_BIN_EXE_warden")).args(["audit", "verify"]).arg(files.audit_log()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warden_executor_restarts_total 1"), "{metrics}");
    // Nothing of the crashed call is left on disk.
    let root = process_workspaces(front).unwrap();
    let left: Vec<_> = walk_names(&root).into_iter().filter(|n| n.starts_with("call-")).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Every file and directory name under `dir`.
fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}
/// The spawner, which starts executors (after the macro above, which it uses).
mod spawner;
