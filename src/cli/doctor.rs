//! `warden doctor`: what this machine's kernel offers, what a profile would enforce, and a live
//! self-test of the confinement in child processes.
//!
//! The self-test has two parts. The executor path: a confined spawner starts a `warden
//! executor` exactly as `serve` does, Python and JavaScript run in it through the service, and
//! a probe from inside shows its confinement (the report's `processes` is the process tree).
//! And the in-process probe, `warden __harden-probe` (a hidden subcommand, also used by the
//! tests): it confines itself with the same code, then tries what must fail (reading outside
//! its roots, opening sockets, starting processes, from threads made before and after) and what
//! must still work (Python and JavaScript executions), and prints what happened as JSON.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::Failure;
use crate::api::ExecuteCodeArgs;
use crate::audit::AuditLog;
use crate::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use crate::harden::landlock::LandlockStatus;
use crate::harden::{Plan, landlock, seccomp};
use crate::home::{Home, process_workspaces};
use crate::policy::{HardeningMode, Policy};
use crate::runtime::Language;
use crate::sandbox::{CancelHandle, ExecSpec, Outcome, Sandbox, Workspace, on_guest_thread};
use crate::server::ExecutorPlan;
use crate::service::{Caller, Profiles, Service};
use crate::spawner::Spawner;
use crate::tools::ToolRegistry;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The profile whose hardening to report.
    #[arg(long, default_value = "default", env = "WARDEN_POLICY")]
    pub policy: String,
    /// Skip the live self-test.
    #[arg(long)]
    pub no_self_test: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// `contained` (try what must fail and what must work), or `exec` / `spawn` (must be killed).
    pub scenario: String,
}

fn seccomp_available() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").is_ok_and(|s| s.contains("kill_process") && s.contains("errno"))
}

pub fn run(home: &Home, args: DoctorArgs) -> Result<(), Failure> {
    let policy = Policy::load(&args.policy)?;
    let kernel_abi = landlock::kernel_abi();
    let (tripwire, allowed) = seccomp::check(None)?;
    let mut report = json!({
        "kernel": crate::harden::kernel_release(),
        "arch": std::env::consts::ARCH,
        "landlock_abi": kernel_abi,
        "landlock_target_abi": landlock::TARGET_ABI as i32,
        "landlock_tsync": kernel_abi >= 8,
        "seccomp": seccomp_available(),
        "profile": policy.name(),
        "mode": policy.file.hardening.mode,
        "would_enforce": {
            "landlock": match LandlockStatus::expected(kernel_abi) {
                LandlockStatus::Unavailable => "none",
                other => other.as_str(),
            },
            "read_only": [home.runtimes(), home.cache()],
            "read_write": ["<this process's workspaces>", "<the snapshot store: WARDEN_HOME/snapshots or --snapshot-dir>", std::env::var_os("WARDEN_AUDIT_LOG").filter(|v| !v.is_empty()).map(std::path::PathBuf::from).unwrap_or_else(|| home.audit_log())],
            "seccomp_tripwire_syscalls": tripwire,
            "seccomp_allowed_syscalls": allowed,
        },
    });
    let mut failures = Vec::new();
    if !args.no_self_test {
        let mut checks = self_test();
        match executor_self_test(home, &args.policy) {
            Ok((more, tree)) => {
                checks.as_array_mut().expect("an array").extend(more);
                report["processes"] = tree;
            }
            Err(e) => checks.as_array_mut().expect("an array").push(json!({
                "check": "the executor path runs", "ok": false, "detail": e.message,
            })),
        }
        for c in checks.as_array().into_iter().flatten() {
            if c["ok"] == false {
                failures.push(c["check"].as_str().unwrap_or("").to_string());
            }
        }
        report["self_test"] = checks;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kernel          {} ({})", report["kernel"].as_str().unwrap_or(""), report["arch"].as_str().unwrap_or(""));
        println!("landlock        ABI {kernel_abi} (warden asks for ABI {}; TSYNC needs 8)", landlock::TARGET_ABI as i32);
        println!(
            "seccomp         {}",
            if report["seccomp"] == true { "available (filters, kill_process, errno)" } else { "NOT available" }
        );
        println!("profile         {} (hardening mode {})", policy.name(), report["mode"].as_str().unwrap_or(""));
        println!(
            "would enforce   landlock {}; seccomp: {tripwire} syscalls kill the process, {allowed} allowed, the rest fail with ENOSYS",
            report["would_enforce"]["landlock"].as_str().unwrap_or("")
        );
        if let Some(tree) = report.get("processes") {
            println!(
                "processes       doctor {} -> spawner {} -> executor(s) {}",
                tree["doctor"]["pid"],
                tree["spawner"]["pid"],
                tree["executors"].as_array().into_iter().flatten().map(|e| e["pid"].to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        for c in report["self_test"].as_array().into_iter().flatten() {
            let mark = if c["ok"] == true { "PASS" } else { "FAIL" };
            println!("{mark}  {}: {}", c["check"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or(""));
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(format!("self-test failed: {}", failures.join(", ")).into()) }
}

/// Runs the probes in child processes and judges their results.
fn self_test() -> Value {
    let mut checks = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| checks.push(json!({"check": name, "ok": ok, "detail": detail}));
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("warden"));
    match Command::new(&exe).args(["__harden-probe", "contained"]).output() {
        Ok(out) if out.status.success() => match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(r) => {
                let refused = |k: &str| r[k].as_str().is_some_and(|s| s.starts_with("refused"));
                for (k, what) in [
                    ("read_etc_passwd", "reading /etc/passwd"),
                    ("write_outside", "writing outside the workspaces"),
                    ("follow_planted_symlink", "following a guest-planted ../.. symlink"),
                    ("blocking_pool_read", "reading /etc/passwd from the blocking pool"),
                    ("new_thread_read", "reading /etc/passwd from a thread created after lockdown"),
                    ("socket_inet", "creating a TCP socket"),
                    ("socket_unix", "creating a UNIX socket"),
                    ("connect", "connecting to 127.0.0.1"),
                    ("early_thread_socket", "creating a socket from a thread created before lockdown"),
                ] {
                    check(&format!("{what} is refused"), refused(k), r[k].as_str().unwrap_or("missing").to_string());
                }
                let early = r["early_thread_read"].as_str().unwrap_or("missing").to_string();
                if r["landlock_tsync"] == true {
                    check("reading /etc/passwd from a thread created before lockdown is refused", early.starts_with("refused"), early);
                } else {
                    check(
                        "a thread created before lockdown is outside Landlock (ABI < 8); warden refuses to lock down with such threads",
                        true,
                        early,
                    );
                }
                check("python runs after lockdown", r["python"] == "ok", r["python"].to_string());
                check("javascript runs after lockdown", r["javascript"] == "ok", r["javascript"].to_string());
                check("every thread has Seccomp 2 and NoNewPrivs 1", r["all_threads_filtered"] == true, r["threads"].to_string());
            }
            Err(e) => check("probe output", false, format!("not JSON: {e}")),
        },
        Ok(out) => check("probe", false, format!("exited {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => check("probe", false, e.to_string()),
    }
    for (scenario, what) in [("exec", "exec'ing a binary"), ("spawn", "starting a process (std::process::Command)")] {
        match Command::new(&exe).args(["__harden-probe", scenario]).output() {
            Ok(out) => {
                use std::os::unix::process::ExitStatusExt;
                let killed = out.status.signal() == Some(libc::SIGSYS);
                let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
                // exec must trip the kill; a spawn may also be refused before it gets that far.
                let refused = scenario == "spawn" && said.contains("refused");
                check(&format!("{what} is refused or kills the process"), killed || refused, format!("{} {said}", out.status));
            }
            Err(e) => check(scenario, false, e.to_string()),
        }
    }
    Value::Array(checks)
}

/// The path `serve` takes, live: a confined spawner starts one executor for the profile, Python
/// and JavaScript run in it through the same service an MCP call goes through, and a probe from
/// inside the executor shows its confinement. Returns the checks and the process tree.
fn executor_self_test(home: &Home, profile: &str) -> Result<(Vec<Value>, Value), Failure> {
    let policy = Policy::load(profile)?;
    // A profile that turns hardening off still gets its executor confined here: the self-test
    // is about what this kernel can enforce.
    let mode = if policy.file.hardening.mode == HardeningMode::Enforce { HardeningMode::Enforce } else { HardeningMode::BestEffort };
    let languages: Vec<Language> = policy.file.runtimes.allowed.clone();
    let profile = policy.name().to_string();
    let workspaces = process_workspaces(home)?;
    // The self-test's own audit trail, removed with its workspaces: doctor leaves the real log alone.
    let audit = Arc::new(AuditLog::open(&workspaces.join("doctor-audit.jsonl"))?);
    let profiles = Profiles::single(policy);
    let plan = ExecutorPlan::new(home, &profiles, languages.clone(), &[], mode, 1).with_guest_pool(0);
    let spawner = Spawner::start(&std::env::current_exe()?, mode, &plan.spawner_plan(home, &workspaces))?;
    let spawner_view = json!({"pid": spawner.pid(), "hardening": spawner.report()});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _enter = rt.enter();
    let mut tools = ToolRegistry::load(&[], None);
    let executors = rt.block_on(plan.start(Arc::new(spawner), workspaces.clone(), &mut tools))?;
    let service = Service::new(executors.clone(), profiles, audit, Arc::new(tools));

    let mut checks = Vec::new();
    let mut check = |name: String, ok: bool, detail: String| checks.push(json!({"check": name, "ok": ok, "detail": detail}));
    let caller = Caller::operator(Some(format!("doctor-{}", std::process::id())), &profile);
    for lang in languages {
        let code = match lang {
            Language::Python => "print(6 * 7)",
            Language::Javascript => "console.log(6 * 7)",
        };
        let request = ExecuteCodeArgs { language: lang, code: code.into(), session_id: None, files: Vec::new(), stdin: None, limits: None };
        let (ok, detail) = match rt.block_on(service.execute(&caller, request, CancelHandle::new(), None, crate::telemetry::Trace::none()))
        {
            Ok(r) => (r.outcome == Outcome::Ok && r.stdout == "42\n", format!("{}: {:?} {:?}", r.outcome, r.stdout, r.stderr)),
            Err(e) => (false, e.to_string()),
        };
        check(format!("{} runs in a confined executor process", lang.as_str()), ok, detail);
    }
    // From inside the executor: /etc/passwd and the audit log are outside its Landlock domain.
    let probes = [PathBuf::from("/etc/passwd"), home.audit_log()];
    let views = rt.block_on(executors.describe(&probes));
    for v in &views {
        let pid = v.pid.map(|p| p.to_string()).unwrap_or_else(|| "none".into());
        check(
            format!("executor {pid}: every thread has Seccomp 2 and NoNewPrivs 1"),
            v.all_threads_filtered == Some(true),
            format!("{:?}", v.all_threads_filtered),
        );
        check(
            format!("executor {pid}: creating a TCP socket is refused"),
            v.socket_refused == Some(true),
            format!("{:?}", v.socket_refused),
        );
        for p in &v.opens {
            // A missing audit log proves nothing about Landlock; only a denial counts.
            let denied = p.error.as_deref().is_some_and(|e| e.contains("denied"));
            let absent = p.error.as_deref().is_some_and(|e| e.contains("No such file"));
            if !absent {
                check(
                    format!("executor {pid}: reading {} is refused", p.path.display()),
                    denied,
                    p.error.clone().unwrap_or_else(|| "ALLOWED".into()),
                );
            }
        }
    }
    if views.is_empty() {
        check("an executor started".into(), false, "none is live".into());
    }
    let tree = json!({
        "doctor": {"pid": std::process::id()},
        "spawner": spawner_view,
        "executors": views,
    });
    rt.block_on(service.shutdown(Duration::ZERO));
    let _ = std::fs::remove_dir_all(&workspaces);
    Ok((checks, tree))
}

fn attempt(r: std::io::Result<impl Sized>) -> String {
    match r {
        Ok(_) => "ALLOWED".into(),
        Err(e) => format!("refused: {e}"),
    }
}

fn errno_of(ret: i32) -> String {
    if ret >= 0 {
        // SAFETY: closing the descriptor the probe just created.
        unsafe { libc::close(ret) };
        "ALLOWED".into()
    } else {
        format!("refused: {}", std::io::Error::last_os_error())
    }
}

/// `warden __harden-probe SCENARIO`.
pub fn probe(home: &Home, args: ProbeArgs) -> Result<(), Failure> {
    let engine = build_engine(EngineSettings { max_instances: 4, parallel_compilation: false }).map_err(|e| format!("{e:#}"))?;
    let sandbox = Sandbox::load(home, &engine, &Language::ALL)?;
    let workspaces = process_workspaces(home)?;
    let planted = workspaces.join("planted");
    std::fs::create_dir_all(&planted)?;
    std::os::unix::fs::symlink("../../../../../../../../..", planted.join("up"))?;

    // A thread that exists before lockdown, as a pre-lockdown rayon or logger thread would.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<(String, String)>();
    let early = std::thread::spawn(move || {
        let _ = go_rx.recv();
        // SAFETY: plain socket(2) call; the descriptor is closed by errno_of.
        let sock = errno_of(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) });
        let _ = res_tx.send((attempt(std::fs::read("/etc/passwd")), sock));
    });

    let tsync = landlock::kernel_abi() >= 8;
    let plan = Plan {
        mode: HardeningMode::BestEffort,
        read_only: vec![home.runtimes(), home.cache(), crate::harden::own_tasks_dir()],
        read_write: vec![workspaces.clone()],
        removable: Vec::new(),
        listener_fd: None,
        collector: None,
    };
    let ll = landlock::restrict(&plan)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let _ticker = spawn_epoch_ticker(&engine)?;
    let sc = rt.block_on(async { seccomp::install(&plan) })?;

    if args.scenario == "spawn" {
        // std falls back to fork(2) when clone is refused: the tripwire kills the process.
        println!("{}", json!({"spawn": attempt(Command::new("/bin/true").status())}));
        return Err("starting a process did not kill the probe".into());
    }
    if args.scenario == "exec" {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: execve with valid NUL-terminated arguments. The seccomp tripwire must kill the
        // process here; returning at all is the failure this probe exists to catch.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        println!("{}", json!({"exec": format!("returned: {}", std::io::Error::last_os_error())}));
        return Err("execve returned instead of killing the process".into());
    }

    let mut r = json!({
        "landlock": ll,
        "seccomp": sc,
        "landlock_tsync": tsync,
        "read_etc_passwd": attempt(std::fs::read("/etc/passwd")),
        "write_outside": attempt(std::fs::write(std::env::temp_dir().join(format!("warden-probe-{}", std::process::id())), b"x")),
        "follow_planted_symlink": attempt(std::fs::read(planted.join("up/etc/passwd"))),
        "blocking_pool_read": rt.block_on(async { tokio::task::spawn_blocking(|| attempt(std::fs::read("/etc/passwd"))).await.unwrap_or_default() }),
        "new_thread_read": std::thread::spawn(|| attempt(std::fs::read("/etc/passwd"))).join().unwrap_or_default(),
        // SAFETY: plain socket(2) calls; descriptors are closed by errno_of.
        "socket_inet": errno_of(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }),
        "socket_unix": errno_of(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) }),
        "connect": attempt(std::net::TcpStream::connect_timeout(&"127.0.0.1:9".parse().expect("address"), Duration::from_millis(200))),
    });
    let _ = go_tx.send(());
    if let Ok((read, sock)) = res_rx.recv_timeout(Duration::from_secs(5)) {
        r["early_thread_read"] = json!(read);
        r["early_thread_socket"] = json!(sock);
    }
    let _ = early.join();

    for (lang, code) in [(Language::Python, "print(6 * 7)"), (Language::Javascript, "console.log(6 * 7)")] {
        let policy = Policy::load("default")?;
        let spec =
            ExecSpec { language: lang, code: code.into(), stdin: Vec::new(), limits: policy.limits(), env: Vec::new(), mounts: Vec::new() };
        let (sb, root) = (sandbox.clone(), workspaces.clone());
        let outcome = on_guest_thread(move || {
            let ws = Workspace::create(&root, "probe-")?;
            sb.run_fresh(&spec, &ws, &CancelHandle::new(), None)
        })?;
        r[lang.as_str()] = match outcome {
            Ok(rep) if rep.outcome.as_str() == "ok" && rep.stdout == "42\n" => json!("ok"),
            Ok(rep) => json!(format!("{}: {} {}", rep.outcome, rep.stdout, rep.stderr)),
            Err(e) => json!(e.to_string()),
        };
    }
    r["all_threads_filtered"] = json!(crate::harden::all_threads_filtered());
    r["threads"] = json!(crate::harden::thread_states().len());
    println!("{r}");
    let _ = std::fs::remove_dir_all(&workspaces);
    Ok(())
}
