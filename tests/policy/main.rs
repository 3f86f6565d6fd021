//! Isolation profiles: every field is enforced, and `warden policy check|explain|diff` say what
//! reviewers need to know. Runs the real binary.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/harness.rs"]
mod harness;

mod fields;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn warden(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(args).env("WARDEN_HOME", common::home().root()).env_remove("WARDEN_POLICY").env_remove("WARDEN_AUDIT_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run warden");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A profile derived from the default one by text replacement, plus appended TOML.
fn profile(dir: &Path, edits: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut text = include_str!("../../policies/default.toml").to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "no {from:?}");
        text = text.replace(from, to);
    }
    text.push_str(extra);
    let path = dir.join(format!("p{}.toml", rand_suffix()));
    std::fs::write(&path, text).unwrap();
    path
}

fn rand_suffix() -> String {
    uuid_like()
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Runs Python under `policy` with `warden exec`; returns the result JSON.
fn exec_py(policy: &Path, code: &str, audit: &Path) -> Value {
    let (status, out, err) = warden(
        &["exec", "--policy", policy.to_str().unwrap(), "--language", "python", "--code", code],
        &[("WARDEN_AUDIT_LOG", audit.to_str().unwrap())],
    );
    assert_eq!(status, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn readonly_mounts_cannot_be_written_truncated_renamed_into_or_hardlinked() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    let rw = dir.path().join("rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("data.txt"), "original").unwrap();
    let extra = format!(
        "\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"ro\"\n\n[[mounts]]\nhost = {:?}\nguest = \"/out\"\nmode = \"rw\"\n",
        ro.display().to_string(),
        rw.display().to_string()
    );
    let p = profile(dir.path(), &[], &extra);
    let code = r#"
import os
results = {}
def attempt(name, f):
    try:
        f(); results[name] = 'ALLOWED'
    except OSError as e:
        results[name] = 'refused'
attempt('read', lambda: open('/data/data.txt').read())
attempt('write', lambda: open('/data/data.txt', 'w').write('x'))
attempt('append', lambda: open('/data/data.txt', 'a').write('x'))
attempt('truncate', lambda: os.truncate('/data/data.txt', 0))
attempt('create', lambda: open('/data/new.txt', 'x').write('x'))
attempt('mkdir', lambda: os.mkdir('/data/d'))
attempt('unlink', lambda: os.unlink('/data/data.txt'))
open('/out/mine.txt', 'w').write('rw ok')
attempt('rename_into_ro', lambda: os.rename('/out/mine.txt', '/data/mine.txt'))
attempt('rename_out_of_ro', lambda: os.rename('/data/data.txt', '/out/stolen.txt'))
def link_then_write():
    os.link('/data/data.txt', '/out/link.txt')
    open('/out/link.txt', 'w').write('through the link')
attempt('hardlink_then_write', link_then_write)
attempt('symlink_then_write', lambda: (os.symlink('/data/data.txt', '/out/sym.txt'), open('/out/sym.txt', 'w').write('x')))
print(results)
"#;
    let r = exec_py(&p, code, &dir.path().join("audit.jsonl"));
    assert_eq!(r["outcome"], "ok", "{r:#}");
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("'read': 'ALLOWED'"), "{out}");
    assert_eq!(out.matches("ALLOWED").count(), 1, "only reading may succeed: {out}");
    assert_eq!(std::fs::read_to_string(ro.join("data.txt")).unwrap(), "original", "the host file is untouched");
    assert_eq!(std::fs::read_to_string(rw.join("mine.txt")).unwrap(), "rw ok", "rw mounts are writable");
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1);
}

#[test]
fn only_listed_environment_variables_reach_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(
        dir.path(),
        &[("set = { LANG = \"C.UTF-8\" }", "set = { LANG = \"C.UTF-8\", GREETING = \"hi\" }\npass = [\"WARDEN_TEST_PASSED\"]")],
        "",
    );
    let (status, out, err) = warden(
        &["exec", "--policy", p.to_str().unwrap(), "--language", "python", "--code", "import os; print(sorted(os.environ))"],
        &[("WARDEN_TEST_PASSED", "yes"), ("WARDEN_TEST_SECRET", "no"), ("WARDEN_AUDIT_LOG", dir.path().join("a").to_str().unwrap())],
    );
    assert_eq!(status, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["stdout"], "['GREETING', 'HOME', 'LANG', 'TMPDIR', 'WARDEN_TEST_PASSED']\n", "{r:#}");
}

#[test]
fn a_runtime_the_profile_does_not_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(dir.path(), &[("allowed = [\"python\", \"javascript\"]", "allowed = [\"javascript\"]")], "");
    let (status, _, err) = warden(&["exec", "--policy", p.to_str().unwrap(), "-l", "python", "-c", "1"], &[]);
    assert_eq!(status, 2);
    assert!(err.contains("not allowed"), "{err}");
}

#[test]
fn limits_come_from_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let p = profile(
        dir.path(),
        &[
            ("timeout_ms = 30_000", "timeout_ms = 400"),
            ("stdout_bytes = 1_048_576", "stdout_bytes = 10"),
            ("fuel = 40_000_000_000", "fuel = 300_000_000"),
        ],
        "",
    );
    let r = exec_py(&p, "print('0123456789abcdef')", &audit);
    assert_eq!(r["outcome"], "output_limit");
    assert_eq!(r["stdout"], "0123456789");
    let r = exec_py(&p, "import time\ntime.sleep(5)", &audit);
    assert_eq!(r["outcome"], "timeout");
    assert!(r["duration_ms"].as_u64().unwrap() < 1000);
    let r = exec_py(&p, "while True: pass", &audit);
    assert_eq!(r["outcome"], "out_of_fuel");
    let p = profile(dir.path(), &[("memory_mb = 512", "memory_mb = 160")], "");
    let r = exec_py(&p, "b = bytearray(300 * 1024 * 1024)", &audit);
    assert_eq!(r["outcome"], "memory_limit");
}

#[test]
fn the_audit_log_is_a_server_setting_and_records_code_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("elsewhere/log.jsonl");
    // `audit.path` moved out of profiles: a profile that still sets it is refused, naming the flag.
    let old = profile(dir.path(), &[("record_code = false", &format!("record_code = false\npath = {:?}", log.display().to_string()))], "");
    for args in [vec!["policy", "check", old.to_str().unwrap()], vec!["exec", "--policy", old.to_str().unwrap(), "-l", "python", "-c", "1"]]
    {
        let (status, _, err) = warden(&args, &[]);
        assert_eq!(status, 1, "{err}");
        assert!(
            err.contains("audit.path") && err.contains("--audit-log") && err.contains("WARDEN_AUDIT_LOG") && err.contains("line"),
            "{err}"
        );
    }
    assert!(!log.exists());
    let p = profile(dir.path(), &[("record_code = false", "record_code = true")], "");
    let (status, _, err) = warden(
        &["exec", "--policy", p.to_str().unwrap(), "--audit-log", log.to_str().unwrap(), "-l", "python", "-c", "print('kept')"],
        &[],
    );
    assert_eq!(status, 0, "{err}");
    let events = warden::audit::read_lines(&log).unwrap();
    let end = events.iter().find(|e| e["kind"] == "execution").expect("an execution event");
    assert_eq!(end["code"], "print('kept')");
    // The default profile keeps only the hash.
    let other = dir.path().join("default.jsonl");
    let (status, _, _) = warden(&["exec", "-l", "python", "-c", "print('hashed')"], &[("WARDEN_AUDIT_LOG", other.to_str().unwrap())]);
    assert_eq!(status, 0);
    let events = warden::audit::read_lines(&other).unwrap();
    assert!(events.iter().all(|e| e.get("code").is_none()));
    assert_eq!(events.last().unwrap()["code_sha256"], warden::digest::sha256_hex(b"print('hashed')"));
    let (status, out, _) = warden(&["audit", "verify", other.to_str().unwrap()], &[]);
    assert_eq!(status, 0);
    assert!(out.contains("OK, 2 events"), "{out}");
}

#[test]
fn audit_verify_reports_tampering_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.jsonl");
    for _ in 0..2 {
        let (status, _, _) = warden(&["exec", "-l", "javascript", "-c", "1"], &[("WARDEN_AUDIT_LOG", log.to_str().unwrap())]);
        assert_eq!(status, 0);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let tampered = text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"error\"", 1);
    std::fs::write(&log, tampered).unwrap();
    let (status, _, err) = warden(&["audit", "verify", log.to_str().unwrap()], &[]);
    assert_eq!(status, 1);
    assert!(err.contains("line 2: contents were edited"), "{err}");
    // A server refuses to append to a damaged log: executions fail closed.
    let (status, _, err) = warden(&["exec", "-l", "javascript", "-c", "1"], &[("WARDEN_AUDIT_LOG", log.to_str().unwrap())]);
    assert_eq!(status, 1);
    assert!(err.contains("does not verify"), "{err}");
}

#[test]
fn policy_check_names_the_line_of_a_refused_value() {
    // Values that parse but are refused after deserialisation: the message names the file, the
    // line of the offending field (from toml's spans) and the field.
    let dir = tempfile::tempdir().unwrap();
    let check = |path: &Path| {
        let (status, out, err) = warden(&["policy", "check", path.to_str().unwrap()], &[]);
        assert_eq!(status, 1, "{out}{err}");
        err
    };
    let line = |text: &str, key: &str| text.lines().position(|l| l.starts_with(key)).unwrap() + 1;

    let over_cap = profile(dir.path(), &[("memory_mb = 512", "memory_mb = 1_000_000")], "");
    let text = std::fs::read_to_string(&over_cap).unwrap();
    let err = check(&over_cap);
    let want = format!("{} line {}: limits.memory_mb: at most 4096", over_cap.display(), line(&text, "memory_mb = "));
    assert!(err.contains(&want), "want {want:?} in: {err}");

    let share = profile(dir.path(), &[("max_per_principal = 4", "max_per_principal = 17")], "");
    let text = std::fs::read_to_string(&share).unwrap();
    let err = check(&share);
    let want = format!(
        "{} line {}: sessions.max_per_principal: must be between 1 and sessions.max (16)",
        share.display(),
        line(&text, "max_per_principal = ")
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");

    // The second of two mounts, in an array of tables: its own `[[mounts]]` line.
    let dup = profile(
        dir.path(),
        &[],
        "\n[[mounts]]\nhost = \"/tmp\"\nguest = \"/data\"\nmode = \"ro\"\n\n[[mounts]]\nhost = \"/tmp\"\nguest = \"/data/x\"\nmode = \"ro\"\n",
    );
    let text = std::fs::read_to_string(&dup).unwrap();
    let second = text.lines().enumerate().filter(|(_, l)| *l == "[[mounts]]").nth(1).unwrap().0 + 1;
    let err = check(&dup);
    assert!(err.contains(&format!("line {second}: mounts[1]: guest path /data/x overlaps another mount")), "line {second}: {err}");
}

#[test]
fn policy_check_validates_and_points_at_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["default", "strict", "data-science", "tool-runner"] {
        let (status, out, err) = warden(&["policy", "check", name], &[]);
        assert_eq!(status, 0, "{name}: {err}");
        assert!(out.contains("OK"), "{out}");
    }
    let line_of = |key: &str| {
        let text = include_str!("../../policies/default.toml");
        format!("line {}", text.lines().position(|l| l.starts_with(key)).unwrap() + 1)
    };
    let typo = profile(dir.path(), &[("fuel = 40", "fuell = 40")], "");
    let (status, _, err) = warden(&["policy", "check", typo.to_str().unwrap()], &[]);
    assert_eq!(status, 1);
    assert!(err.contains(&line_of("fuel = ")) && err.contains("fuell"), "{err}");
    let bad = profile(dir.path(), &[("memory_mb = 512", "memory_mb = 32")], "");
    let (status, _, err) = warden(&["policy", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(status, 1);
    assert!(err.contains("limits.memory_mb") && err.contains(&line_of("memory_mb = ")), "{err}");
    let mount = profile(dir.path(), &[], "\n[[mounts]]\nhost = \"/nonexistent/x\"\nguest = \"/data\"\nmode = \"ro\"\n");
    let (status, _, err) = warden(&["policy", "check", mount.to_str().unwrap()], &[]);
    assert_eq!(status, 1);
    assert!(err.contains("mounts[0]"), "{err}");
    let shadow = profile(dir.path(), &[], "\n[[mounts]]\nhost = \"/tmp\"\nguest = \"/workspace/x\"\nmode = \"rw\"\n");
    let (_, _, err) = warden(&["policy", "check", shadow.to_str().unwrap()], &[]);
    assert!(err.contains("overlaps /workspace"), "{err}");
}

#[test]
fn policy_explain_says_what_a_guest_can_and_cannot_do() {
    let (status, out, _) = warden(&["policy", "explain", "strict"], &[]);
    assert_eq!(status, 0);
    for needle in
        ["run python and javascript", "5 s of wall-clock time", "256 MiB of memory", "not keep sessions", "cannot", "no sockets", "enforce"]
    {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let (_, out, _) = warden(&["policy", "explain", "tool-runner"], &[]);
    assert!(out.contains("run nothing") && out.contains("call the tools csv_summary"), "{out}");
}

#[test]
fn policy_diff_shows_what_widens_and_narrows() {
    let (status, out, _) = warden(&["policy", "diff", "strict", "default"], &[]);
    assert_eq!(status, 0);
    assert!(out.contains("WIDENS   limits.timeout_ms") && out.contains("5000 -> 30000"), "{out}");
    assert!(out.contains("WIDENS   env.set") && out.contains("LANG=C.UTF-8"), "{out}");
    assert!(out.contains("WIDENS   hardening.mode") && out.contains("enforce -> best-effort"), "{out}");
    let (_, out, _) = warden(&["policy", "diff", "default", "strict"], &[]);
    assert!(out.contains("narrows  limits.memory_mb") && !out.contains("WIDENS"), "{out}");
    let (status, _, err) = warden(&["policy", "diff", "strict", "default", "--fail-on-widen"], &[]);
    assert_eq!(status, 3, "{err}");
    let (status, out, _) = warden(&["policy", "diff", "default", "default"], &[]);
    assert_eq!(status, 0);
    assert!(out.contains("no differences"));
}

/// Host hardening is one per process: a profile sets the least it needs, `serve` runs at the
/// strictest any profile asks for or at `--hardening`, and refuses (at start and on reload) a
/// profile that asks for more than the process has. The server keeps serving after a refusal.
#[tokio::test]
async fn hardening_is_a_server_setting_that_profiles_can_only_require() {
    use harness::{ServerFiles, connect_http, exec, start_http};
    let files = ServerFiles::new();
    // Asking for less than a profile requires is refused at start, naming the profile and flag.
    let (status, _, err) = warden(
        &["serve", "--policy", "strict", "--hardening", "best-effort"],
        &[("WARDEN_AUDIT_LOG", files.audit_log().to_str().unwrap())],
    );
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("profile \"strict\" asks for host hardening enforce") && err.contains("--hardening enforce"), "{err}");
    let (status, _, err) = warden(&["serve", "--hardening", "sometimes"], &[]);
    assert_eq!(status, 2, "{err}");

    // The mode in force is recorded; a reload that asks for more is refused and audited.
    let (status, _, err) = warden(&["serve", "--hardening", "off"], &[("WARDEN_AUDIT_LOG", files.audit_log().to_str().unwrap())]);
    assert_eq!(status, 1, "the default profile asks for best-effort: {err}");
    assert!(err.contains("--hardening best-effort"), "{err}");
    let policy = files.policy(&[("mode = \"best-effort\"", "mode = \"off\"")]);
    let mut server = start_http(&files, Some(&policy), &[]).await;
    let start = harness::audit_events(&files, "server.start", 1, std::time::Duration::from_secs(10)).await;
    assert_eq!(start[0]["hardening"]["mode"], "off", "{:?}", start[0]);
    let client = connect_http(&server.url, None).await;
    let (_, s) = exec(&client, serde_json::json!({"language": "python", "code": "print(6 * 7)"})).await;
    assert_eq!(s["stdout"], "42\n", "{s}");

    let pid = server.child.id().unwrap() as i32;
    let reloads = |n| harness::audit_events(&files, "policy.reload", n, std::time::Duration::from_secs(10));
    files.policy(&[("mode = \"best-effort\"", "mode = \"enforce\"")]);
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let events = reloads(1).await;
    assert_eq!(events.len(), 1, "no reload event");
    assert_eq!(events[0]["result"], "error", "{:?}", events[0]);
    assert!(events[0]["error"].as_str().unwrap().contains("asks for host hardening enforce"), "{:?}", events[0]);
    // A reload whose mount reaches the audit log is refused the same way.
    let mounted = files.dir.path().to_path_buf();
    let text = format!(
        "{}\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"ro\"\n",
        include_str!("../../policies/default.toml"),
        mounted.display().to_string()
    );
    std::fs::write(&policy, text).unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let events = reloads(2).await;
    assert_eq!(events.len(), 2, "no second reload event");
    assert_eq!(events[1]["result"], "error", "{:?}", events[1]);
    assert!(events[1]["error"].as_str().unwrap().contains("audit log"), "{:?}", events[1]);
    // Still serving, with the profile it started with.
    let (_, s) = exec(&client, serde_json::json!({"language": "python", "code": "import os; print(os.path.exists('/data'))"})).await;
    assert_eq!(s["stdout"], "False\n", "{s}");
    let _ = server.child.kill().await;
}
