//! The spawner (src/spawner.rs): the real binary started as `warden spawner`, confined, starting
//! real `warden executor` processes that start up under what they inherit from it (loading a
//! runtime, confining themselves further) and answer the channel protocol, seen from outside
//! through /proc and from inside through the executor's confinement probe.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warden::channel::proto::{Init, Probe, Reply as ExecReply, Request as ExecRequest, VERSION};
use warden::policy::HardeningMode;
use warden::runtime::Language;
use warden::spawner::{MAX_FRAME, Reply, Spawned, Spawner, SpawnerPlan};

use super::{common, unsupported};

fn exe() -> PathBuf {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_warden")).unwrap()
}

/// A spawner in enforce mode with what an executor serving JavaScript needs: `/proc` (so it can
/// verify its own threads, see `SpawnerPlan`), the runtimes and the module cache.
fn start() -> Spawner {
    let home = common::home();
    let plan =
        SpawnerPlan { read_only: vec![PathBuf::from("/proc"), home.runtimes(), home.cache()], read_write: vec![std::env::temp_dir()] };
    Spawner::start(&exe(), HardeningMode::Enforce, &plan).expect("the spawner starts")
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_string()
}

fn send(stream: &mut UnixStream, msg: &ExecRequest) {
    let body = serde_json::to_vec(msg).unwrap();
    stream.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    stream.write_all(&body).unwrap();
}

fn recv(stream: &mut UnixStream) -> ExecReply {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Initialises an executor (JavaScript, enforce) and probes it from inside: its channel, and
/// what it reported ready and found.
fn ready_and_probe(s: &Spawned, workspaces: &Path) -> (UnixStream, warden::channel::proto::Ready, Probe) {
    let mut stream = UnixStream::from(s.channel.try_clone().unwrap());
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    send(&mut stream, &ExecRequest::Init(Box::new(init(workspaces.to_path_buf(), vec![Language::Javascript], 4, HardeningMode::Enforce))));
    let ExecReply::Ready(ready) = recv(&mut stream) else { panic!("the executor's first reply is ready") };
    send(&mut stream, &ExecRequest::Probe { id: 1, paths: vec![PathBuf::from("/etc/passwd"), common::home().runtimes()] });
    let ExecReply::Probed { id: 1, probe } = recv(&mut stream) else { panic!("a probe reply") };
    (stream, *ready, probe)
}

/// Polls `reaped()` until `pid` shows up; returns how it ended.
fn wait_reaped(spawner: &Spawner, pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((_, how)) = spawner.reaped().unwrap().into_iter().find(|(p, _)| *p == pid) {
            return how;
        }
        assert!(Instant::now() < deadline, "executor {pid} was never reaped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_spawner_is_confined_and_starts_confined_executors() {
    require_hardening!();
    let spawner = start();
    let r = spawner.report();
    assert_eq!(r.landlock.status.as_str(), "full", "{r:?}");
    assert_eq!(r.seccomp.status.as_str(), "enforced", "{r:?}");
    assert!(r.seccomp.all_threads_filtered);
    // Executable: the warden binary and the dynamic loader, nothing else.
    assert_eq!(r.landlock.execute.len(), 2, "{:?}", r.landlock.execute);
    assert_eq!(r.landlock.execute[0], exe().display().to_string());
    assert!(r.landlock.execute[1].contains("ld-linux"), "{:?}", r.landlock.execute);
    let sp = spawner.pid();
    assert_eq!((status_field(sp, "Seccomp:"), status_field(sp, "NoNewPrivs:")), ("2".into(), "1".into()));
    assert_eq!(std::fs::read_to_string(format!("/proc/{sp}/oom_score_adj")).unwrap().trim(), "1000");

    let started = Instant::now();
    let s = spawner.spawn("python-0").unwrap();
    let ws = tempfile::tempdir().unwrap();
    let (mut stream, ready, probe) = ready_and_probe(&s, ws.path());
    eprintln!("spawn to a loaded, confined executor's ready: {:?}", started.elapsed());
    // It started (loaded a compiled runtime, mapped it executable) under the spawner's inherited
    // filter and domain, then narrowed both itself.
    assert_eq!(ready.pid, s.pid);
    assert_eq!(ready.hardening.landlock.status.as_str(), "full", "{ready:?}");
    assert_eq!(ready.hardening.seccomp.status.as_str(), "enforced", "{ready:?}");
    assert!(ready.hardening.seccomp.all_threads_filtered, "{ready:?}");
    // From inside: a file outside its grants is refused, its runtimes are not, no socket.
    assert!(probe.opens[0].1.is_some(), "{probe:?}");
    assert!(probe.opens[1].1.is_none(), "{probe:?}");
    assert!(probe.socket.is_some(), "{probe:?}");
    assert!(probe.threads.iter().all(|&(_, s, n)| s == 2 && n == 1), "{probe:?}");

    let pid = s.pid;
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), exe());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    assert_eq!(&argv[1..], [&b"executor"[..], b"--channel-fd", b"3", b"--label", b"python-0"]);
    assert_eq!(status_field(pid, "PPid:"), sp.to_string(), "the spawner is the parent");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim(), "1000");
    // It did not inherit the spawner's socket to the front (what it opened itself since, its
    // event loop and mapped modules, is its own).
    let targets = |p: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .collect()
    };
    let front_socket = std::fs::read_link(format!("/proc/{sp}/fd/3")).unwrap().display().to_string();
    assert!(front_socket.starts_with("socket:"), "{front_socket}");
    assert!(!targets(pid).contains(&front_socket), "{:?}", targets(pid));

    // Still answering after all that.
    send(&mut stream, &ExecRequest::Probe { id: 2, paths: Vec::new() });
    assert!(matches!(recv(&mut stream), ExecReply::Probed { id: 2, .. }));
}

#[test]
fn the_spawner_refuses_bad_labels_foreign_pids_and_malformed_requests() {
    require_hardening!();
    let spawner = start();
    let err = spawner.spawn("Bad Label").unwrap_err();
    assert!(err.to_string().contains("bad executor label"), "{err}");
    // Its own check, not just the handle's.
    for frame in [
        r#"{"op":"spawn","label":"../../bin/sh"}"#,
        r#"{"op":"spawn","label":"ok","exe":"/bin/sh"}"#,
        r#"{"op":"spawn","label":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        r#"{"op":"exec","argv":["/bin/sh"]}"#,
        r#"{"op":"hello","version":1,"mode":"off","plan":{"read_only":["/"],"read_write":["/"]}}"#,
        "not json",
    ] {
        match spawner.exchange_raw(frame.as_bytes()).unwrap() {
            Reply::Refused { error } => eprintln!("{frame} -> {error}"),
            other => panic!("{frame}: {other:?}"),
        }
    }
    let huge = vec![b' '; MAX_FRAME + 1];
    assert!(matches!(spawner.exchange_raw(&huge).unwrap(), Reply::Refused { error } if error.contains("limit")));
    let own = std::process::id();
    let err = spawner.kill(own).unwrap_err();
    assert!(err.to_string().contains("not a running executor"), "{err}");
    let err = spawner.kill(spawner.pid()).unwrap_err();
    assert!(err.to_string().contains("not a running executor"), "{err}");
    // Still serving.
    let s = spawner.spawn("after-refusals").unwrap();
    assert!(Path::new(&format!("/proc/{}", s.pid)).exists());
}

#[test]
fn a_killed_executor_is_reaped_and_leaves_no_zombie() {
    require_hardening!();
    let spawner = start();
    let s = spawner.spawn("doomed").unwrap();
    let ws = tempfile::tempdir().unwrap();
    let _ = ready_and_probe(&s, ws.path());
    spawner.kill(s.pid).unwrap();
    assert_eq!(wait_reaped(&spawner, s.pid), "killed by signal 9 (SIGKILL)");
    assert!(!Path::new(&format!("/proc/{}", s.pid)).exists(), "no zombie left");
    let err = spawner.kill(s.pid).unwrap_err();
    assert!(err.to_string().contains("not a running executor"), "a reaped pid is refused: {err}");
    // An executor whose channel closes exits by itself.
    let s = spawner.spawn("quitter").unwrap();
    let (stream, _, _) = ready_and_probe(&s, ws.path());
    drop(stream);
    drop(s.channel);
    assert_eq!(wait_reaped(&spawner, s.pid), "exited with status 0");
}

#[test]
fn closing_the_front_end_stops_the_spawner_and_its_executors() {
    require_hardening!();
    let spawner = start();
    let pids: Vec<u32> = (0..2).map(|i| spawner.spawn(&format!("e-{i}")).unwrap()).map(|s| s.pid).collect();
    let spawner_pid = spawner.pid();
    let status = spawner.shutdown(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "{status}");
    for pid in pids.into_iter().chain([spawner_pid]) {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} is gone");
    }
}

#[test]
fn the_spawner_starts_without_hardening_too() {
    common::summary::case();
    let spawner = Spawner::start(&exe(), HardeningMode::Off, &SpawnerPlan::default()).unwrap();
    assert_eq!(spawner.report().seccomp.status.as_str(), "off");
    assert_eq!(status_field(spawner.pid(), "Seccomp:"), "0");
    let s = spawner.spawn("plain").unwrap();
    let mut stream = UnixStream::from(s.channel.try_clone().unwrap());
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    send(&mut stream, &ExecRequest::Init(Box::new(init(std::env::temp_dir(), Vec::new(), 1, HardeningMode::Off))));
    let ExecReply::Ready(ready) = recv(&mut stream) else { panic!("ready") };
    assert_eq!(ready.hardening.seccomp.status.as_str(), "off");
    send(&mut stream, &ExecRequest::Probe { id: 1, paths: vec![PathBuf::from("/etc/passwd")] });
    let ExecReply::Probed { probe, .. } = recv(&mut stream) else { panic!("probed") };
    // Unconfined all the way down.
    assert!(probe.opens[0].1.is_none(), "{probe:?}");
}

/// An executor's init for these tests: the tests' data directory, no tools, no mounts.
fn init(workspaces: std::path::PathBuf, languages: Vec<Language>, max_instances: u32, hardening: HardeningMode) -> Init {
    Init {
        version: VERSION,
        home: common::home().root().to_path_buf(),
        workspaces,
        tools: Vec::new(),
        languages,
        max_instances,
        guest_pool: 0,
        hardening,
        read_only: Vec::new(),
        read_write: Vec::new(),
    }
}
