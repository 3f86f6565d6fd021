//! Reaching host files: absolute paths, traversal, symlink and hardlink escapes, writes through
//! read-only mounts, and the kernel's pseudo-filesystems.

use std::path::Path;

use serde_json::json;

use crate::harness::*;
use crate::{Layer, all_blocked, attempt, js_probes, py_probes};

#[tokio::test]
async fn absolute_paths_and_traversal() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let probes = [
        ("etc_passwd", "open('/etc/passwd').read()"),
        ("root_listing", "__import__('os').listdir('/')"),
        ("home", "__import__('os').listdir('/root')"),
        ("workspace_parent", "open('/workspace/../../../../etc/passwd').read()"),
        ("relative_parent", "open('../../../etc/passwd').read()"),
        ("tmp_parent", "__import__('os').listdir('/tmp/..')"),
        ("stdlib_parent", "__import__('os').listdir('/usr/local/lib/..')"),
        ("chdir_up", "(__import__('os').chdir('..'), __import__('os').listdir('.'))"),
    ];
    all_blocked(&client, "python_absolute_paths_and_traversal", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("etc_passwd", "std.loadFile('/etc/passwd')"),
        ("workspace_parent", "std.loadFile('/workspace/../../etc/passwd')"),
        ("open_parent", "std.open('../../../etc/hostname', 'r')"),
        ("root_listing", "os.readdir('/')[1] === 0 ? 'listed' : null"),
        ("realpath_up", "os.realpath('/workspace/../..')[1] === 0 ? os.realpath('/workspace/../..')[0] : null"),
    ];
    all_blocked(&client, "javascript_absolute_paths_and_traversal", Layer::Wasi, js_probes(&probes), &probes).await;
}

#[tokio::test]
async fn symlink_and_hardlink_escapes() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let os = "__import__('os')";
    let probes = [
        ("absolute_target", format!("{os}.symlink('/etc/passwd', 'abs') or open('abs').read()")),
        ("relative_target", format!("{os}.symlink('../../../../../../etc/passwd', 'rel') or open('rel').read()")),
        ("chain", format!("({os}.symlink('hop2', 'hop1'), {os}.symlink('../..', 'hop2'), open('hop1/etc/passwd').read())")),
        ("via_tmp", format!("{os}.symlink('/tmp/../../etc', '/tmp/e') or {os}.listdir('/tmp/e')")),
    ];
    all_blocked(&client, "python_symlink_escapes", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("loop", format!("({os}.symlink('loop', 'loop'), open('loop').read())")),
        ("dangling", format!("({os}.symlink('nowhere', 'dangling'), open('dangling').read())")),
        ("trailing_slash", format!("({os}.symlink('..', 'up'), {os}.listdir('up/'))")),
        ("trailing_slash_dot", format!("({os}.symlink('.', 'here'), open('here/../../etc/passwd').read())")),
    ];
    all_blocked(&client, "python_symlink_loops_dangling_trailing_slash", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("host_file", format!("{os}.link('/etc/passwd', 'h1')")),
        ("stdlib_into_workspace", format!("{os}.link('/usr/local/lib/python315.zip', 'h2')")),
        ("tmp_to_parent", format!("(open('/tmp/a', 'w').close(), {os}.link('/tmp/a', '/tmp/../a'))")),
    ];
    all_blocked(&client, "python_hardlink_escapes", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("symlink_out", "os.symlink('/etc/passwd', '/workspace/l') === 0 ? std.loadFile('/workspace/l') : null"),
        ("symlink_up", "os.symlink('../../..', '/workspace/u') === 0 ? std.loadFile('/workspace/u/etc/passwd') : null"),
    ];
    all_blocked(&client, "javascript_symlink_escapes", Layer::Wasi, js_probes(&probes), &probes).await;
}

#[tokio::test]
async fn symlinks_left_in_the_workspace_are_not_followed_by_the_host() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    // The guest may link inside its own sandbox; the host must not read through a link when it
    // collects artifacts (a link swapped between the check and the read could lead out).
    let code = "import os\nopen('real.txt', 'w').write('real')\nos.symlink('real.txt', 'link.txt')\nos.symlink('missing', 'dangling')\nos.symlink('loop', 'loop')\nprint('planted')";
    let s = attempt(&client, "planted_symlinks_in_artifacts", Layer::Wasi, json!({"language": "python", "code": code})).await;
    assert_eq!(s["outcome"], "ok", "{s}");
    let paths: Vec<&str> = s["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"real.txt"), "{s}");
    for link in ["link.txt", "dangling", "loop"] {
        assert!(!paths.contains(&link), "a symlink was collected as an artifact: {s}");
    }
}

/// A policy granting a read-only mount at /data and a writable one at /out.
fn mount_policy(files: &ServerFiles, ro: &Path, rw: &Path) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(files.policy(&[])).unwrap();
    text.push_str(&format!(
        "\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"ro\"\n\n[[mounts]]\nhost = {:?}\nguest = \"/out\"\nmode = \"rw\"\n",
        ro.to_str().unwrap(),
        rw.to_str().unwrap()
    ));
    let path = files.dir.path().join("mounts.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn read_only_mounts_cannot_be_bypassed() {
    let files = ServerFiles::new();
    let (ro, rw) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(ro.path().join("f.txt"), "original").unwrap();
    let policy = mount_policy(&files, ro.path(), rw.path());
    let client = stdio(&files, Some(&policy)).await;
    let os = "__import__('os')";

    let s = attempt(
        &client,
        "read_only_mount_is_readable",
        Layer::Policy,
        json!({"language": "python", "code": "print(open('/data/f.txt').read())"}),
    )
    .await;
    assert_eq!(s["stdout"], "original\n", "{s}");

    let probes = [
        ("open_w", "open('/data/f.txt', 'w')".to_string()),
        ("open_a", "open('/data/f.txt', 'a')".to_string()),
        ("r_plus_truncate", "open('/data/f.txt', 'r+').truncate(0)".to_string()),
        ("os_truncate", format!("{os}.truncate('/data/f.txt', 0)")),
        ("utime", format!("{os}.utime('/data/f.txt', (0, 0))")),
    ];
    all_blocked(&client, "read_only_mount_write_and_truncate", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("o_creat", "open('/data/new.txt', 'x')".to_string()),
        ("o_creat_low_level", format!("{os}.open('/data/new2.txt', {os}.O_CREAT | {os}.O_WRONLY)")),
        ("mkdir", format!("{os}.mkdir('/data/d')")),
        ("unlink", format!("{os}.remove('/data/f.txt')")),
        ("symlink_in", format!("{os}.symlink('f.txt', '/data/l')")),
    ];
    all_blocked(&client, "read_only_mount_create_and_delete", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("rename_out_to_rw", format!("{os}.rename('/data/f.txt', '/out/f.txt')")),
        ("rename_out_to_workspace", format!("{os}.rename('/data/f.txt', '/workspace/f.txt')")),
        ("rename_in", format!("(open('/out/x', 'w').close(), {os}.rename('/out/x', '/data/x'))")),
        ("hardlink_into_rw", format!("{os}.link('/data/f.txt', '/out/f-link')")),
        ("rw_symlink_to_ro_then_write", format!("({os}.symlink('../data/f.txt', '/out/s'), open('/out/s', 'w').write('x'))")),
    ];
    all_blocked(&client, "read_only_mount_rename_and_link_into_writable", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("open_w", "std.open('/data/f.txt', 'w')"),
        ("remove", "os.remove('/data/f.txt') === 0 ? 'removed' : null"),
        ("rename_out", "os.rename('/data/f.txt', '/out/g.txt') === 0 ? 'renamed' : null"),
    ];
    all_blocked(&client, "javascript_read_only_mount", Layer::Wasi, js_probes(&probes), &probes).await;

    assert_eq!(std::fs::read_to_string(ro.path().join("f.txt")).unwrap(), "original");
    let left: Vec<_> = std::fs::read_dir(ro.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("f.txt")], "nothing was created in the read-only mount");
    let moved: Vec<_> = std::fs::read_dir(rw.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!moved.iter().any(|n| n.starts_with('f')), "nothing of /data reached the writable mount: {moved:?}");
}

#[tokio::test]
async fn kernel_pseudo_filesystems_are_absent() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let probes = [
        ("proc_environ", "open('/proc/self/environ').read()"),
        ("proc_maps", "open('/proc/self/maps').read()"),
        ("proc_parent_cmdline", "open('/proc/1/cmdline').read()"),
        ("sys", "__import__('os').listdir('/sys')"),
        ("dev_urandom", "open('/dev/urandom', 'rb').read(4)"),
        ("dev_tcp", "open('/dev/tcp/127.0.0.1/80', 'w')"),
    ];
    all_blocked(&client, "python_proc_sys_dev", Layer::Wasi, py_probes(&probes), &probes).await;
    let probes = [
        ("proc_maps", "std.loadFile('/proc/self/maps')"),
        ("proc_environ", "std.loadFile('/proc/self/environ')"),
        ("sys", "os.readdir('/sys')[1] === 0 ? 'listed' : null"),
        ("dev_mem", "std.open('/dev/mem', 'r')"),
    ];
    all_blocked(&client, "javascript_proc_sys_dev", Layer::Wasi, js_probes(&probes), &probes).await;
}
