//! Host writes by `warden exec --artifacts-dir`: guest code chooses the names, the directory may
//! hold anything. Links planted at file and directory level are never followed, existing files
//! (`.git/config`, a file with the artifact's name) are never replaced, nothing lands outside the
//! directory, and dot-names are saved only with `--artifacts-dotfiles`. Every case checks the
//! host files byte for byte afterwards.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{Layer, case, common};

/// Runs `warden exec` with `code` and `--artifacts-dir dir`; returns (status, stdout, stderr).
fn exec_saving(language: &str, code: &str, dir: &Path, extra: &[&str], audit: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["exec", "-l", language, "-c", code, "--artifacts-dir"])
        .arg(dir)
        .args(extra)
        .env("WARDEN_HOME", common::home().root())
        .env("WARDEN_AUDIT_LOG", audit)
        .env_remove("WARDEN_POLICY")
        .output()
        .expect("run warden exec");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every path below `dir` (not following links), sorted, for "nothing changed" checks.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Python that writes each (name, content) under /workspace, creating directories.
fn py_writes(files: &[(&str, &str)]) -> String {
    let mut code = String::from("import os\n");
    for (name, content) in files {
        code.push_str(&format!("os.makedirs(os.path.dirname({name:?}) or '.', exist_ok=True)\nopen({name:?}, 'w').write({content:?})\n"));
    }
    code
}

#[test]
fn planted_links_are_never_followed_at_file_or_directory_level() {
    case("artifacts-dir planted symlinks", Layer::Policy);
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("secret.txt"), "host data").unwrap();
    let audit = tmp.path().join("audit.jsonl");
    let code = py_writes(&[("out.txt", "GUEST"), ("sub/x.txt", "GUEST"), ("a/b/c.txt", "GUEST")]);

    // File level: out.txt is a link to a host file.
    let t1 = tmp.path().join("t1");
    std::fs::create_dir(&t1).unwrap();
    std::os::unix::fs::symlink(victim.join("secret.txt"), t1.join("out.txt")).unwrap();
    // Directory level, first component: sub is a link to a host directory.
    let t2 = tmp.path().join("t2");
    std::fs::create_dir(&t2).unwrap();
    std::os::unix::fs::symlink(&victim, t2.join("sub")).unwrap();
    // Directory level, deeper: a is real, a/b is a link.
    let t3 = tmp.path().join("t3");
    std::fs::create_dir_all(t3.join("a")).unwrap();
    std::os::unix::fs::symlink(&victim, t3.join("a/b")).unwrap();
    // A dangling link where the file would go (O_CREAT would follow it and create the target).
    let t4 = tmp.path().join("t4");
    std::fs::create_dir(&t4).unwrap();
    std::os::unix::fs::symlink(victim.join("created-through-link"), t4.join("out.txt")).unwrap();

    for t in [&t1, &t2, &t3, &t4] {
        let before = listing(t);
        let (status, out, err) = exec_saving("python", &code, t, &[], &audit);
        assert_eq!(status, 1, "a planted link must make the save fail: {err}\n{out}");
        assert!(err.contains("symbolic link"), "{err}");
        assert!(out.is_empty(), "no result is printed as if saved: {out}");
        assert_eq!(listing(t), before, "nothing was written into {t:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(victim.join("secret.txt")).unwrap(), "host data");
    assert_eq!(listing(&victim), vec!["secret.txt".to_string()], "nothing was created through a link");

    // The directory itself being a link is refused too.
    let t5 = tmp.path().join("t5");
    std::os::unix::fs::symlink(&victim, &t5).unwrap();
    let (status, _, err) = exec_saving("python", &code, &t5, &[], &audit);
    assert_eq!(status, 1);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(listing(&victim), vec!["secret.txt".to_string()]);
}

#[test]
fn existing_files_and_git_config_are_never_replaced() {
    case("artifacts-dir existing files", Layer::Policy);
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit.jsonl");
    let t = tmp.path().join("checkout");
    std::fs::create_dir_all(t.join(".git")).unwrap();
    std::fs::write(t.join(".git/config"), "[core]\n\trepositoryformatversion = 0\n").unwrap();
    std::fs::write(t.join("report.txt"), "the operator's report").unwrap();
    let hostile = "[core]\n\tfsmonitor = touch /tmp/pwned\n";

    // A guest that produces .git/config: skipped without the flag, its other files saved.
    let code = py_writes(&[(".git/config", hostile), ("result.txt", "fine")]);
    let (status, out, err) = exec_saving("python", &code, &t, &[], &audit);
    assert_eq!(status, 0, "{err}");
    assert!(err.contains("not saved") && err.contains(".git/config"), "the skip is reported: {err}");
    assert_eq!(std::fs::read_to_string(t.join(".git/config")).unwrap(), "[core]\n\trepositoryformatversion = 0\n");
    assert_eq!(std::fs::read_to_string(t.join("result.txt")).unwrap(), "fine");
    let r: Value = serde_json::from_str(&out).unwrap();
    let saved: Vec<&Value> =
        r["artifacts"].as_array().unwrap().iter().filter(|a| a["uri"].as_str().unwrap().starts_with("file://")).collect();
    assert_eq!(saved.len(), 1, "only result.txt is on the host: {r:#}");

    // With the flag, dot-names are allowed but the existing .git/config is still not replaced,
    // and nothing else is saved either (the conflict is found before any write).
    let code = py_writes(&[(".git/config", hostile), ("fresh.txt", "new")]);
    let (status, _, err) = exec_saving("python", &code, &t, &["--artifacts-dotfiles"], &audit);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains(".git/config already exists") && err.contains("never replaces"), "{err}");
    assert_eq!(std::fs::read_to_string(t.join(".git/config")).unwrap(), "[core]\n\trepositoryformatversion = 0\n");
    assert!(!t.join("fresh.txt").exists(), "a refused save writes nothing");

    // An existing file with the artifact's name, from Python and from JavaScript.
    let (status, _, err) = exec_saving("python", &py_writes(&[("report.txt", "GUEST")]), &t, &[], &audit);
    assert_eq!(status, 1);
    assert!(err.contains("report.txt already exists"), "{err}");
    let js = "const f = std.open('report.txt', 'w'); f.puts('GUEST'); f.close();";
    let (status, _, err) = exec_saving("javascript", js, &t, &[], &audit);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("report.txt already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(t.join("report.txt")).unwrap(), "the operator's report");
    // A second run into the same directory conflicts with the first run's file.
    let (status, _, err) = exec_saving("python", &py_writes(&[("result.txt", "again")]), &t, &[], &audit);
    assert_eq!(status, 1);
    assert!(err.contains("result.txt already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(t.join("result.txt")).unwrap(), "fine");
}

#[test]
fn guest_chosen_names_stay_inside_and_dot_names_need_the_flag() {
    case("artifacts-dir guest names", Layer::Policy);
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit.jsonl");
    let t = tmp.path().join("out");
    let outside_before = listing(tmp.path());
    let code = r#"
import os
os.makedirs('.git', exist_ok=True)
open('.git/config', 'w').write('[core]\n\tfsmonitor = touch /tmp/pwned\n')
open('..x', 'w').write('dotdot')
open('...', 'w').write('dots')
open('.bashrc', 'w').write('evil')
os.makedirs('deep/.ssh', exist_ok=True)
open('deep/.ssh/authorized_keys', 'w').write('key')
os.makedirs('deep/ok', exist_ok=True)
open('deep/ok/data.csv', 'w').write('a,b\n1,2\n')
try:
    os.symlink('/etc/passwd', 'passwd-link')
except OSError:
    pass
print('done')
"#;
    let (status, out, err) = exec_saving("python", code, &t, &[], &audit);
    assert_eq!(status, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["stdout"], "done\n", "{r:#}");
    assert_eq!(listing(&t), vec!["deep", "deep/ok", "deep/ok/data.csv"], "only the plain name was saved: {err}");
    assert_eq!(std::fs::read_to_string(t.join("deep/ok/data.csv")).unwrap(), "a,b\n1,2\n");
    let mut outside_after = listing(tmp.path());
    outside_after.retain(|p| !p.starts_with("out") && p != "audit.jsonl");
    assert_eq!(outside_after, outside_before, "nothing appeared beside the directory");

    // With the flag, dot-names are saved, still inside, still as plain new files.
    let t2 = tmp.path().join("out2");
    let (status, _, err) = exec_saving("python", code, &t2, &["--artifacts-dotfiles"], &audit);
    assert_eq!(status, 0, "{err}");
    let saved = listing(&t2);
    for want in [".git/config", "..x", "...", ".bashrc", "deep/.ssh/authorized_keys", "deep/ok/data.csv"] {
        assert!(saved.iter().any(|p| p == want), "{want} missing from {saved:?}");
    }
    assert!(!saved.iter().any(|p| p.contains("passwd")), "a guest symlink is not an artifact: {saved:?}");
    assert!(std::fs::symlink_metadata(t2.join("..x")).unwrap().file_type().is_file());
    let mut outside_after = listing(tmp.path());
    outside_after.retain(|p| !p.starts_with("out") && p != "audit.jsonl");
    assert_eq!(outside_after, outside_before);
}
