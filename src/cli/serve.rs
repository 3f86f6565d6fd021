//! `warden serve`: the MCP server, over stdio (default) or streamable HTTP.
//!
//! Startup order matters for the host confinement that follows (see the hardening module):
//! everything privileged happens first on the main thread, then the tokio runtime is built by
//! hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::audit::AuditLog;
use crate::executor::Executor;
use crate::home::{Home, process_workspaces};
use crate::policy::Policy;
use crate::runtime::Runtimes;
use crate::runtime::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use crate::sandbox::Sandbox;
use crate::transport::http::{Health, HttpOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Serve streamable HTTP at http://ADDR/mcp instead of stdio (port 0 picks a free port; the
    /// bound address is logged on stderr).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Isolation profile: an embedded name or a .toml path.
    #[arg(long, default_value = "default", env = "WARDEN_POLICY")]
    pub policy: String,
    /// Extra `Host` header values to accept over HTTP (loopback names are always accepted).
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
    /// On SIGTERM/SIGINT, how long running calls may finish before they are cancelled.
    #[arg(long, default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

pub fn run(home: &Home, args: ServeArgs) -> Result<(), Failure> {
    let policy = Policy::load(&args.policy)?;
    let f = &policy.file;
    let languages: Vec<_> = f.runtimes.allowed.clone();
    let engine = build_engine(EngineSettings {
        max_instances: f.limits.concurrent_executions + f.sessions.max + 4,
        parallel_compilation: false,
    })
    .map_err(|e| format!("building the engine: {e:#}"))?;
    let runtimes = Runtimes::load(home, &engine, &languages)?;
    let audit_path = std::env::var_os("WARDEN_AUDIT_LOG").map(std::path::PathBuf::from).unwrap_or_else(|| home.audit_log());
    let audit = Arc::new(AuditLog::open(&audit_path)?);
    let workspaces = process_workspaces(home)?;
    let listener = match args.http {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("warden-rt").build()?;
    let _ticker = spawn_epoch_ticker(&engine)?;
    let exec = Arc::new(Executor::new(Sandbox::new(Arc::new(runtimes)), policy, workspaces, audit));
    exec.audit_log().record(
        "server.start",
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "transport": if listener.is_some() { "http" } else { "stdio" },
            "profile": exec.policy().name(),
            "profile_sha256": exec.policy().sha256,
            "profile_source": exec.policy().source,
        }),
    )?;
    let grace = Duration::from_millis(args.shutdown_grace_ms);

    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(exec.clone(), shutdown.clone(), grace);
        let sweeper = {
            let exec = exec.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    exec.sweep();
                }
            })
        };
        let served = match listener {
            Some(l) => {
                let l = tokio::net::TcpListener::from_std(l)?;
                let addr = l.local_addr()?;
                let mut opts = HttpOptions::default();
                opts.allowed_hosts.extend(args.allowed_hosts);
                let app = crate::transport::http::router(exec.clone(), &opts, Health::default(), &shutdown);
                eprintln!("warden: serving MCP at http://{addr}/mcp (policy {})", exec.policy().name());
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
        let _ = exec.audit_log().record("server.stop", serde_json::json!({}));
        served
    })?;
    Ok(())
}

/// SIGTERM or SIGINT: stop taking calls, let running ones finish (up to `grace`), then stop the
/// transport.
fn spawn_signal_handler(exec: Arc<Executor>, shutdown: CancellationToken, grace: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("could not install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: shutting down");
        exec.shutdown(grace).await;
        shutdown.cancel();
    });
}
