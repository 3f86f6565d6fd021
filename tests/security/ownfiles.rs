//! Mounts that would reach warden's own files, and native code rewritten behind warden's back.
//!
//! A mount (ro or rw, after resolving links) that contains or lies inside the data directory, the
//! audit log, the auth or JWKS files, a profile file or a tool package directory is refused by
//! `policy check`, `exec` and `serve`, naming the overlap. A compiled module whose bytes changed
//! after compilation (same size, one byte flipped) is refused before it is mapped, with the
//! instruction to run `warden runtimes install`; the test tampers a hard-linked copy of the data
//! directory, never the real one.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::harness::{ServerFiles, exec, stdio};
use crate::{Layer, alive, case, common};

fn warden(home: &Path, args: &[&str], envs: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(args).env("WARDEN_HOME", home).env_remove("WARDEN_POLICY").env_remove("WARDEN_AUDIT_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run warden");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The default profile with one mount of `host` at /data.
fn mount_profile(dir: &Path, name: &str, host: &Path, mode: &str) -> PathBuf {
    let text = format!(
        "{}\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"{mode}\"\n",
        include_str!("../../policies/default.toml"),
        host.display().to_string()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn mounts_reaching_the_data_directory_audit_log_or_credentials_are_refused() {
    case("mounts over warden's own files", Layer::Policy);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().canonicalize().unwrap();
    // An operator's home directory holding warden's data directory, as by default.
    let user_home = t.join("home/alice");
    let data = user_home.join(".local/share/warden");
    std::fs::create_dir_all(data.join("cache")).unwrap();
    let logs = t.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let audit = logs.join("audit.jsonl");
    let profiles = t.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::os::unix::fs::symlink(&user_home, t.join("alias")).unwrap();

    let cases: [(&str, PathBuf, &str, &str); 5] = [
        ("home-rw", user_home.clone(), "rw", "contains the data directory"),
        ("home-ro", user_home.clone(), "ro", "contains the data directory"),
        ("cache", data.join("cache"), "ro", "lies inside the data directory"),
        ("through-a-link", t.join("alias"), "rw", "contains the data directory"),
        ("audit-dir", logs.clone(), "ro", "contains the audit log"),
    ];
    let envs = [("WARDEN_AUDIT_LOG", audit.as_path())];
    for (name, host, mode, why) in &cases {
        let p = mount_profile(&profiles, name, host, mode);
        let p = p.to_str().unwrap();
        let (status, _, err) = warden(&data, &["policy", "check", p], &envs);
        assert_eq!(status, 1, "{name}: policy check must refuse: {err}");
        assert!(err.contains("mounts[0]") && err.contains(why), "{name}: {err}");
        let (status, out, err) = warden(&data, &["exec", "--policy", p, "-l", "python", "-c", "print(open('/data/x').read())"], &envs);
        assert_eq!(status, 1, "{name}: exec must refuse: {err}");
        assert!(out.is_empty() && err.contains(why), "{name}: {err}");
        let (status, _, err) = warden(&data, &["serve", "--policy", p], &envs);
        assert_eq!(status, 1, "{name}: serve must refuse to start: {err}");
        assert!(err.contains(why) && err.contains("mount a directory that neither contains nor lies inside"), "{name}: {err}");
    }

    // Files only `serve` knows: the auth file (and what it names), tool packages, profile files.
    let secrets = t.join("secrets");
    std::fs::create_dir_all(secrets.join("tools")).unwrap();
    let auth = secrets.join("auth.toml");
    std::fs::write(
        &auth,
        format!("[[roles]]\nname = \"user\"\nprofile = \"data-science\"\n\n[[tokens]]\nprincipal = \"p\"\nsha256 = \"{}\"\nroles = [\"user\"]\n", "ab".repeat(32)),
    )
    .unwrap();
    let p = mount_profile(&profiles, "secrets", &secrets, "ro");
    let (status, out, err) = warden(&data, &["policy", "check", p.to_str().unwrap()], &envs);
    assert_eq!(status, 0, "policy check cannot know the auth file: {err}");
    assert!(out.contains("OK"));
    let (status, _, err) =
        warden(&data, &["serve", "--policy", p.to_str().unwrap(), "--http", "127.0.0.1:0", "--auth", auth.to_str().unwrap()], &envs);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("auth configuration"), "{err}");
    std::fs::remove_file(&auth).unwrap();
    let (status, _, err) =
        warden(&data, &["serve", "--policy", p.to_str().unwrap(), "--tools", secrets.join("tools").to_str().unwrap()], &envs);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("tool package"), "{err}");
    let p = mount_profile(&profiles, "own-profile", &profiles, "rw");
    let (status, _, err) = warden(&data, &["exec", "--policy", p.to_str().unwrap(), "-l", "python", "-c", "1"], &envs);
    assert_eq!(status, 1, "a guest must not rewrite its own profile: {err}");
    assert!(err.contains("profile file"), "{err}");
}

#[tokio::test]
async fn a_server_with_a_mount_beside_its_files_still_serves() {
    case("mounts beside warden's own files", Layer::Policy);
    let files = ServerFiles::new();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("x.txt"), "mounted").unwrap();
    let policy = mount_profile(files.dir.path(), "beside", data.path(), "ro");
    let client = stdio(&files, Some(&policy)).await;
    let (_, s) = exec(&client, json!({"language": "python", "code": "print(open('/data/x.txt').read())"})).await;
    assert_eq!(s["stdout"], "mounted\n", "{s}");
    alive(&client).await;
}

/// Copies a data directory as hard links (same inodes, so the runtimes' install records still
/// match), except the workspaces and audit log, which are not copied.
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "workspaces" || name == "audit" {
            continue;
        }
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            link_tree(&e.path(), &to.join(&name));
        } else if ft.is_file() {
            std::fs::hard_link(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn a_rewritten_compiled_module_is_refused_before_it_is_mapped() {
    case("rewritten native code in the module cache", Layer::Policy);
    let real = common::home();
    // Hard links need the same filesystem: make the copy beside the real data directory.
    let parent = real.root().parent().expect("data directory has a parent");
    let tmp = tempfile::Builder::new().prefix("ownfiles-home-").tempdir_in(parent).unwrap();
    let home = tmp.path().join("warden");
    link_tree(real.root(), &home);
    let audit = tmp.path().join("audit.jsonl");
    let envs = [("WARDEN_AUDIT_LOG", audit.as_path())];

    let (status, out, err) = warden(&home, &["exec", "-l", "javascript", "-c", "print(6 * 7)"], &envs);
    assert_eq!(status, 0, "the untouched copy works: {err}");
    assert!(out.contains("\"stdout\": \"42\\n\""), "{out}");

    // Rewrite every compiled JavaScript module: same size, one byte flipped in the middle (in the
    // code, where deserialization checks nothing). The hard link is replaced by a new file first,
    // so the real cache is never written.
    let mut tampered = 0;
    for e in std::fs::read_dir(home.join("cache")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("javascript-") && name.ends_with(".cwasm")) {
            continue;
        }
        let original = real.cache().join(&name);
        let mut bytes = std::fs::read(&original).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::remove_file(e.path()).unwrap();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(e.path()).unwrap();
        f.write_all(&bytes).unwrap();
        assert_eq!(std::fs::metadata(e.path()).unwrap().len(), std::fs::metadata(&original).unwrap().len());
        tampered += 1;
    }
    assert!(tampered > 0, "no compiled JavaScript module in {:?}", home.join("cache"));

    let (status, out, err) = warden(&home, &["exec", "-l", "javascript", "-c", "print(6 * 7)"], &envs);
    assert_eq!(status, 1, "a rewritten module must not load: {out}\n{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("changed after compilation") && err.contains("warden runtimes install"), "{err}");
    let (status, _, err) = warden(&home, &["serve"], &envs);
    assert_eq!(status, 1, "serve must refuse to start: {err}");
    assert!(err.contains("changed after compilation") && err.contains("warden runtimes install"), "{err}");

    // The real cache is untouched: the real data directory still runs the same code.
    let (status, out, err) = warden(real.root(), &["exec", "-l", "javascript", "-c", "print(6 * 7)"], &envs);
    assert_eq!(status, 0, "{err}");
    assert!(out.contains("\"stdout\": \"42\\n\""), "{out}");
}
