//! `warden serve`: the MCP server, over stdio (default) or streamable HTTP.
//!
//! This process is the front: it holds connections, authentication, admission, sessions and
//! the audit log, and never loads an engine or runs guest code. Guests run in executor
//! processes (see [`crate::service::executors`]), one group per set of profile mounts.
//!
//! Startup order matters for the host confinement that follows (see the hardening module):
//! everything privileged happens first on the main thread (including starting the executor
//! processes, the last `execve` this process makes), then the tokio runtime is built by hand.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::audit::AuditLog;
use crate::audit::event::{AuthSource, Done, Event, Failed, ServerStart, ToolIdentity, ToolRefused};
use crate::auth::AuthConfig;
use crate::harden::landlock::{LandlockReport, LandlockStatus};
use crate::harden::seccomp::SeccompStatus;
use crate::harden::{HardenError, Plan, Report};
use crate::home::{Home, OwnFiles, process_workspaces};
use crate::policy::HardeningMode;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::server::{ExecutorPlan, default_per_group};
use crate::service::{Profile, Profiles, Service};
use crate::spawner::Spawner;
use crate::tools::ToolRegistry;
use crate::transport::http::{Health, HttpOptions, SharedAuth};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Serve streamable HTTP at http://ADDR/mcp instead of stdio (port 0 picks a free port; the
    /// bound address is logged on stderr).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Isolation profile for the local operator (stdio) and unauthenticated local HTTP: an
    /// embedded name or a .toml path.
    #[arg(long, default_value = "default", env = "WARDEN_POLICY")]
    pub policy: String,
    /// Who may call over HTTP and with which profile (bearer tokens, JWT, roles). Required to
    /// listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Extra `Host` header values to accept over HTTP (loopback names are always accepted).
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
    /// Extra browser `Origin` values to accept over HTTP, as scheme://host[:port] or
    /// scheme://host:* (loopback origins are always accepted; requests without Origin pass).
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_parser = crate::transport::guard::origin_entry)]
    pub allowed_origins: Vec<String>,
    /// A load balancer or proxy (IP or CIDR) whose X-Forwarded-For names the client when refused
    /// requests are counted per source. Default: none, the TCP peer is the source.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<crate::transport::guard::Cidr>,
    /// Directories of tool packages to serve (each package: tool.toml + tool.wasm). Which of them
    /// a caller may use is up to its profile's `[tools] allowed`.
    #[arg(long = "tools", value_name = "DIR")]
    pub tools: Vec<PathBuf>,
    /// On SIGTERM/SIGINT, how long running calls may finish before they are cancelled.
    #[arg(long, default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// The audit log, one per server (default: audit/audit.jsonl in the data directory).
    #[arg(long, value_name = "FILE", env = "WARDEN_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Host confinement of this process: enforce, best-effort or off. Default: the strictest
    /// that any loaded profile's `[hardening] mode` asks for; it may not be weaker than that.
    #[arg(long, value_name = "MODE", env = "WARDEN_HARDENING")]
    pub hardening: Option<HardeningMode>,
    /// Executor processes per group of profiles with the same mounts (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub executors: Option<u16>,
    /// Guests each executor keeps instantiated and readied ahead for fresh calls, per runtime and
    /// profile group (0 turns it off). Each claimed guest serves one call; its seeds, clock and
    /// environment are set when it is claimed.
    #[arg(long, value_name = "N", env = "WARDEN_GUEST_POOL", default_value_t = crate::executor::pool::DEFAULT_PER_KEY as u8,
          value_parser = clap::value_parser!(u8).range(0..=8))]
    pub guest_pool: u8,
    /// Write trace spans to FILE as OTLP-JSON lines (one export request per line, what the
    /// OpenTelemetry Collector's `otlpjsonfile` receiver reads). The file rotates by copy and
    /// truncate into FILE.1 at --otlp-file-max-bytes.
    #[arg(long, value_name = "FILE", env = "WARDEN_OTLP_FILE")]
    pub otlp_file: Option<PathBuf>,
    /// The size at which the trace file rotates (at least 1 MiB; at most about twice this is on disk).
    #[arg(long, value_name = "BYTES", default_value_t = crate::telemetry::file::DEFAULT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(crate::telemetry::file::MIN_MAX_BYTES..))]
    pub otlp_file_max_bytes: u64,
    /// Send trace spans over OTLP/HTTP (protobuf) to this collector, http://HOST[:PORT][/PATH]
    /// (default port 4318, path /v1/traces). A host name is resolved once, at start; the
    /// confined server may connect to that port and nowhere else.
    #[arg(long, value_name = "URL", env = "WARDEN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Where session snapshots are kept (default: WARDEN_HOME/snapshots). Replicas that share
    /// this directory restore one another's snapshots.
    #[arg(long, value_name = "DIR", env = "WARDEN_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
}

impl ServeArgs {
    /// Where traces go, the collector resolved.
    fn trace_settings(&self) -> Result<crate::telemetry::Settings, Failure> {
        let collector = match self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(e) => Some(crate::telemetry::collector::Collector::resolve(e)?),
            None => None,
        };
        let file = self
            .otlp_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|path| crate::telemetry::file::FileSettings { path, max_bytes: self.otlp_file_max_bytes });
        Ok(crate::telemetry::Settings { file, collector })
    }
}

/// What every profile this process serves must satisfy, now and after a reload: no mount reaches
/// warden's own files, and none asks for stronger host confinement than the process has.
#[derive(Clone)]
struct Guard {
    /// The data directory, audit log and tool packages; the auth and profile files are added per load.
    own: OwnFiles,
    mode: HardeningMode,
    /// The mounts (read-only, read-write) the spawner was given at start: executors it starts
    /// later inherit its Landlock domain, so a reloaded profile may mount only within these.
    /// `None` until the spawner exists.
    reach: Option<(Vec<PathBuf>, Vec<PathBuf>)>,
}

impl Guard {
    fn check(&self, profiles: &Profiles, auth: Option<&AuthConfig>) -> Result<(), Failure> {
        let mut own = self.own.clone();
        for f in auth.map(|a| a.files()).unwrap_or_default() {
            own.add("a file of the auth configuration (--auth, JWKS, role profiles)", &f);
        }
        for p in profiles.by_name.values() {
            if !p.policy.source.starts_with("embedded:") {
                own.add("a profile file", std::path::Path::new(&p.policy.source));
            }
        }
        for p in profiles.by_name.values() {
            p.policy.check_own_files(&own)?;
        }
        if let Some((read_only, read_write)) = &self.reach {
            for p in profiles.by_name.values() {
                for m in &p.policy.mounts {
                    let within = |roots: &[PathBuf]| roots.iter().any(|r| m.host.starts_with(r));
                    if !(within(read_write) || (!m.writable && within(read_only))) {
                        return Err(format!(
                            "profile {:?} mounts {} {}, which executors of this server cannot reach (they are confined to the mounts \
                             loaded at start); restart the server to add a mount",
                            p.policy.name(),
                            m.host.display(),
                            if m.writable { "read-write" } else { "read-only" },
                        )
                        .into());
                    }
                }
            }
        }
        hardening_mode(Some(self.mode), profiles).map(|_| ())
    }
}

/// The process's confinement: `requested` if given, else the strictest any profile asks for. A
/// profile that asks for more than that is refused, naming it.
fn hardening_mode(requested: Option<HardeningMode>, profiles: &Profiles) -> Result<HardeningMode, Failure> {
    let asked = |p: &Arc<Profile>| p.policy.file.hardening.mode;
    let strictest = profiles.by_name.values().map(asked).max_by_key(|m| m.strictness()).unwrap_or_default();
    let mode = requested.unwrap_or(strictest);
    let mut names: Vec<&String> = profiles.by_name.keys().collect();
    names.sort();
    if let Some(name) = names.into_iter().find(|n| asked(&profiles.by_name[*n]).strictness() > mode.strictness()) {
        return Err(format!(
            "profile {name:?} asks for host hardening {} ([hardening] mode), but this server runs with {mode}: pass --hardening {} (or restart with it), or lower the profile's mode",
            asked(&profiles.by_name[name]),
            asked(&profiles.by_name[name])
        )
        .into());
    }
    Ok(mode)
}

/// Loads the operator's profile and, with `--auth`, every profile a role names.
fn load_profiles(args: &ServeArgs) -> Result<(Profiles, Option<AuthConfig>), Failure> {
    let default = Policy::load(&args.policy)?;
    let mut by_name: HashMap<String, Arc<Profile>> = HashMap::new();
    let default_name = default.name().to_string();
    let mut sources: HashMap<String, String> = HashMap::from([(default_name.clone(), default.sha256.clone())]);
    by_name.insert(default_name.clone(), Arc::new(Profile::new(default)));
    let auth = match &args.auth {
        Some(path) => {
            let auth = AuthConfig::load(path)?;
            for (role, profile_ref) in auth.role_profiles() {
                let p = Policy::load(&profile_ref).map_err(|e| format!("role {role:?}: {e}"))?;
                if let Some(sha) = sources.get(p.name()) {
                    if *sha != p.sha256 {
                        return Err(format!("two different profiles are both named {:?}; give them distinct names", p.name()).into());
                    }
                    continue;
                }
                sources.insert(p.name().to_string(), p.sha256.clone());
                by_name.insert(p.name().to_string(), Arc::new(Profile::new(p)));
            }
            Some(auth)
        }
        None => None,
    };
    Ok((Profiles { default: default_name, by_name }, auth))
}

/// Tells the auth file which loaded profile each of its roles names.
fn role_names(auth: &mut AuthConfig, profiles: &Profiles) -> Result<(), Failure> {
    let mut names = std::collections::BTreeMap::new();
    for (role, profile_ref) in auth.role_profiles() {
        let name = Policy::load(&profile_ref)?.name().to_string();
        if !profiles.by_name.contains_key(&name) {
            return Err(format!("role {role:?}: profile {name:?} is not loaded").into());
        }
        names.insert(role, name);
    }
    auth.set_profile_names(names);
    Ok(())
}

fn languages(profiles: &Profiles) -> Vec<Language> {
    let set: BTreeSet<Language> = profiles.by_name.values().flat_map(|p| p.policy.file.runtimes.allowed.iter().copied()).collect();
    set.into_iter().collect()
}

fn describe(profiles: &Profiles) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, p) in &profiles.by_name {
        m.insert(name.clone(), json!({"sha256": p.policy.sha256, "source": p.policy.source}));
    }
    serde_json::Value::Object(m)
}

pub fn run(home: &Home, args: ServeArgs) -> Result<(), Failure> {
    let (profiles, mut auth) = load_profiles(&args)?;
    if let Some(a) = &mut auth {
        role_names(a, &profiles)?;
    }
    if let Some(addr) = args.http {
        if auth.is_none() && !addr.ip().is_loopback() {
            return Err(Failure {
                message: format!(
                    "refusing to serve {addr} without authentication: pass --auth FILE (see the README's Authentication section), or bind a loopback address"
                ),
                status: 2,
            });
        }
    }
    let audit_path = args.audit_log.clone().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| home.audit_log());
    let traces = args.trace_settings()?;
    let snapshot_dir = args.snapshot_dir.clone().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| home.root().join("snapshots"));
    let mut own = OwnFiles::of_home(home);
    own.add("the audit log", &audit_path);
    own.add("the snapshot store", &snapshot_dir);
    if let Some(f) = &traces.file {
        own.add("the trace file", &f.path);
        own.add("the rotated trace file", &crate::telemetry::file::rotated_path(&f.path));
    }
    for t in &args.tools {
        own.add("a tool package directory", t);
    }
    let mut guard = Guard { own, mode: hardening_mode(args.hardening, &profiles)?, reach: None };
    // Before anything is loaded or mapped: no mount may reach warden's own files.
    guard.check(&profiles, auth.as_ref())?;
    // The front never builds an engine: it checks tool packages by manifest and digest, and the
    // executors compile them.
    let mut tools = ToolRegistry::load(&args.tools, None);
    let audit = Arc::new(AuditLog::open(&audit_path)?);
    // Opened (and created) now: once confined, the front may write these two files and no
    // other in their directory.
    let trace_file = traces.file.as_ref().map(crate::telemetry::file::TraceFile::open).transpose()?;
    let workspaces = process_workspaces(home)?;
    let snapshots =
        crate::snapshots::SnapshotStore::open(&snapshot_dir).map_err(|e| format!("the snapshot store {}: {e}", snapshot_dir.display()))?;
    let listener = match args.http {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let mode = guard.mode;
    let per_group = args.executors.map(usize::from).unwrap_or_else(default_per_group);
    let plan =
        ExecutorPlan::new(home, &profiles, languages(&profiles), &args.tools, mode, per_group).with_guest_pool(args.guest_pool.into());
    // Executors are started, now and whenever one must be replaced, by the spawner: started
    // here, before this process gives up execve, and confined to what executors need.
    let launcher = Arc::new(Spawner::start(&std::env::current_exe()?, mode, &plan.spawner_plan(home, &workspaces))?);
    guard.reach = Some((
        plan.groups.iter().flat_map(|g| g.read_only.iter().cloned()).collect(),
        plan.groups.iter().flat_map(|g| g.read_write.iter().cloned()).collect(),
    ));

    // A collector opens TCP connect to its port, which only Landlock's network rules (ABI 4)
    // hold: with seccomp alone the front could connect anywhere.
    if traces.collector.is_some() && mode != HardeningMode::Off && crate::harden::landlock::kernel_abi() < 4 {
        return Err(format!(
            "--otlp-endpoint needs Landlock TCP rules (ABI 4, Linux 6.7) to hold this server to the collector's port, and this \
             kernel has Landlock ABI {}: write traces with --otlp-file for a Collector to read, or run with --hardening off",
            crate::harden::landlock::kernel_abi()
        )
        .into());
    }
    // Confinement: Landlock now, while single-threaded; seccomp once the runtime exists.
    let hplan = hardening_plan(&args, &[&workspaces, snapshots.root()], &audit_path, &traces, mode, listener.as_ref(), auth.as_ref());
    let landlock = if mode == HardeningMode::Off {
        LandlockReport { status: LandlockStatus::Off, ..Default::default() }
    } else {
        crate::harden::assert_single_threaded()?;
        crate::harden::landlock::restrict(&hplan)?
    };
    if mode == HardeningMode::Enforce && landlock.status != LandlockStatus::Full {
        return Err(HardenError::NotEnforced(format!("Landlock is {} ({})", landlock.status, landlock.gaps.join("; "))).into());
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("warden-rt").build()?;
    // After Landlock: the exporters' threads inherit it.
    let telemetry = crate::telemetry::Telemetry::start(&traces, trace_file, rt.handle())?;
    // What an executor must not open (the front's files, other groups' mounts) or may (its own
    // group's mounts), probed from inside each when an operator asks `/healthz`.
    let mut probe_paths = vec![audit_path.clone()];
    probe_paths.extend(auth.as_ref().map(|a| a.files()).unwrap_or_default());
    probe_paths.extend(profiles.by_name.values().flat_map(|p| p.policy.mounts.iter().map(|m| m.host.clone())));
    probe_paths.sort();
    probe_paths.dedup();
    let auth_event = auth.as_ref().map(auth_source);
    let multi_tenant = auth.is_some();
    let shared_auth: Option<SharedAuth> = auth.map(|a| Arc::new(RwLock::new(Arc::new(a))));
    let grace = Duration::from_millis(args.shutdown_grace_ms);

    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let executors = plan.start(launcher, workspaces, &mut tools).await.map_err(anyhow::Error::msg)?;
        report_tool_grants(&tools, &profiles);
        let start_event = ServerStart {
            version: env!("CARGO_PKG_VERSION"),
            transport: if listener.is_some() { "http" } else { "stdio" },
            default_profile: profiles.default.clone(),
            profiles: describe(&profiles),
            auth: auth_event,
            tools: tools
                .all()
                .map(|t| ToolIdentity {
                    name: t.name().to_string(),
                    version: t.manifest.version.clone(),
                    sha256: t.manifest.wasm_sha256.clone(),
                })
                .collect(),
            tools_refused: tools.refusals.iter().map(|r| ToolRefused { path: r.path.clone(), reason: r.reason.clone() }).collect(),
            hardening: Report::off(),
        };
        let exec = Arc::new(Service::new(executors, profiles, audit, Arc::new(tools)).with_telemetry(telemetry).with_snapshots(snapshots));
        // With authentication, callers are principals that must not starve one another.
        exec.set_multi_tenant(multi_tenant);
        // Everything that registers with the kernel (signal handlers, the listener's epoll
        // registration) happens before seccomp, which refuses rt_sigaction and friends.
        spawn_signal_handlers(exec.clone(), shutdown.clone(), grace, args.clone(), shared_auth.clone(), guard)?;
        let listener = listener.map(tokio::net::TcpListener::from_std).transpose()?;
        let seccomp = crate::harden::seccomp::install(&hplan)?;
        if mode == HardeningMode::Enforce && (seccomp.status != SeccompStatus::Enforced || !seccomp.all_threads_filtered) {
            return Err(HardenError::NotEnforced(format!(
                "seccomp is {} ({})",
                seccomp.status,
                seccomp.detail.clone().unwrap_or_default()
            ))
            .into());
        }
        if mode == HardeningMode::BestEffort && (landlock.status != LandlockStatus::Full || seccomp.status != SeccompStatus::Enforced) {
            tracing::warn!(landlock = %landlock.status, gaps = ?landlock.gaps, seccomp = %seccomp.status, "host hardening is incomplete");
        }
        let hardening = Report { mode, landlock, seccomp };
        exec.metrics.set_hardening(&hardening);
        let mut start_event = start_event;
        start_event.hardening = hardening.clone();
        exec.audit_log().record(&Event::ServerStart(Box::new(start_event)))?;

        let sweeper = {
            let exec = exec.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    exec.sweep();
                    exec.suspend_idle().await;
                }
            })
        };
        let served = match listener {
            Some(l) => {
                let addr = l.local_addr()?;
                let mut opts = HttpOptions::default();
                opts.allowed_hosts.extend(args.allowed_hosts.clone());
                opts.allowed_origins.extend(args.allowed_origins.clone());
                opts.trusted_proxies = args.trusted_proxies.clone();
                let health = Health { hardening: Some(hardening), probe_paths: probe_paths.clone() };
                let app = crate::transport::http::router(exec.clone(), &opts, health, &shutdown, shared_auth);
                let url = format!("http://{addr}/mcp");
                let policy = exec.profiles().default.clone();
                super::say("INFO", &format!("serving MCP at {url} (policy {policy})"), serde_json::json!({"url": url, "policy": policy}));
                tracing::info!(%addr, "listening");
                crate::transport::http::serve(l, app, shutdown.clone()).await.map_err(anyhow::Error::from)
            }
            None => {
                tracing::info!("serving MCP on stdio");
                crate::transport::serve_stdio(exec.clone(), shutdown.clone()).await
            }
        };
        sweeper.abort();
        // stdio ends when the client closes stdin: drain and clean up the same way.
        exec.shutdown(grace).await;
        let _ = exec.audit_log().record(&Event::ServerStop {});
        served
    })?;
    Ok(())
}

/// Everything the confined front must still reach: the profile and auth files (re-read on
/// SIGHUP), the workspaces, the snapshot store and the audit log.
fn hardening_plan(
    args: &ServeArgs,
    [workspaces, snapshots]: &[&std::path::Path; 2],
    audit_log: &std::path::Path,
    traces: &crate::telemetry::Settings,
    mode: HardeningMode,
    listener: Option<&std::net::TcpListener>,
    auth: Option<&AuthConfig>,
) -> Plan {
    use std::os::fd::AsRawFd;
    // No runtimes, module cache, tool packages or profile mounts: those are the executors'.
    let mut read_only = vec![crate::harden::own_tasks_dir()];
    // Profiles, the auth file and what it names are re-read on SIGHUP.
    let mut reread = vec![PathBuf::from(&args.policy)];
    reread.extend(auth.map(|a| a.files()).unwrap_or_default());
    read_only.extend(reread.iter().filter_map(|f| f.canonicalize().ok()));
    // The audit log itself (already open), not its directory: nothing else there is writable.
    // The workspaces: the front makes each call's directory, writes its inputs, reads its
    // artifacts and removes it. The snapshot store: the front alone writes and reads it.
    let mut read_write = vec![workspaces.to_path_buf(), snapshots.to_path_buf(), audit_log.to_path_buf()];
    // Likewise the trace file and its rotated copy (already open), not their directory.
    if let Some(f) = &traces.file {
        read_write.extend([f.path.clone(), crate::telemetry::file::rotated_path(&f.path)]);
    }
    read_only.sort();
    read_only.dedup();
    read_write.sort();
    read_write.dedup();
    let removable = workspaces.parent().map(|p| vec![p.to_path_buf()]).unwrap_or_default();
    Plan {
        mode,
        read_only,
        read_write,
        removable,
        listener_fd: listener.map(|l| l.as_raw_fd()),
        collector: traces.collector.as_ref().map(|c| c.addr),
    }
}

/// Logs, for each profile, the tools it lists that it will not serve and why.
fn report_tool_grants(tools: &ToolRegistry, profiles: &Profiles) {
    for p in profiles.by_name.values() {
        for name in &p.policy.file.tools.allowed {
            match tools.get(name) {
                None => tracing::warn!(profile = p.policy.name(), tool = %name, "the profile allows a tool that is not loaded"),
                Some(t) => {
                    if let Err(why) = crate::tools::grant(t, &p.policy) {
                        tracing::warn!(profile = p.policy.name(), tool = %name, %why, "tool refused for this profile");
                    }
                }
            }
        }
    }
}

/// Re-reads profiles and the auth file (SIGHUP). A reload that fails validation, or needs a
/// runtime this process did not load, changes nothing; either way the attempt is audited.
fn reload(exec: &Service, args: &ServeArgs, auth: &Option<SharedAuth>, guard: &Guard) {
    let loaded = load_profiles(args).and_then(|(profiles, mut new_auth)| {
        if let Some(a) = &mut new_auth {
            role_names(a, &profiles)?;
        }
        guard.check(&profiles, new_auth.as_ref())?;
        let missing: Vec<Language> = languages(&profiles).into_iter().filter(|l| !exec.executors().languages().contains(l)).collect();
        if !missing.is_empty() {
            return Err(format!("the new profiles need runtimes this process did not load ({missing:?}); restart instead").into());
        }
        if new_auth.is_some() != auth.is_some() {
            return Err("enabling or disabling --auth needs a restart".to_string().into());
        }
        Ok((profiles, new_auth))
    });
    match loaded {
        Ok((profiles, new_auth)) => {
            let event = Event::PolicyReloaded {
                result: Done,
                default_profile: profiles.default.clone(),
                profiles: describe(&profiles),
                auth: new_auth.as_ref().map(auth_source),
            };
            exec.replace_profiles(profiles);
            if let (Some(shared), Some(a)) = (auth, new_auth) {
                *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(a);
            }
            let _ = exec.audit_log().record(&event);
            tracing::info!("profiles reloaded");
        }
        Err(f) => {
            let _ = exec.audit_log().record(&Event::PolicyReloadFailed { result: Failed, error: f.message.clone() });
            tracing::error!(error = %f.message, "reload refused; the previous profiles stay in force");
        }
    }
}

/// SIGTERM or SIGINT: stop taking calls, let running ones finish (up to `grace`), then stop the
/// transport. SIGHUP: reload profiles.
///
/// The handlers are installed before this returns (and so before the server announces itself):
/// a signal that arrived before installation would take its default action and kill the process.
fn spawn_signal_handlers(
    exec: Arc<Service>,
    shutdown: CancellationToken,
    grace: Duration,
    args: ServeArgs,
    auth: Option<SharedAuth>,
    guard: Guard,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    reload(&exec, &args, &auth, &guard);
                    continue;
                }
            }
        }
        tracing::info!("signal received: shutting down");
        exec.shutdown(grace).await;
        shutdown.cancel();
    });
    Ok(())
}

/// Which auth file is in force, as the audit log names it.
fn auth_source(a: &crate::auth::AuthConfig) -> AuthSource {
    AuthSource { source: a.source.clone(), sha256: a.sha256.clone() }
}
