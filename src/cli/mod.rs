//! The `warden` command line.
//!
//! Commands print results on stdout and everything else (progress, logs) on stderr. Exit status
//! is 0 when the command did its job, 1 for warden's own failures (with a message saying what to
//! do), 2 for bad usage.

mod audit;
mod doctor;
mod exec;
mod policy;
mod runtimes;
mod save;
mod serve;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::home::Home;

#[derive(Parser, Debug)]
#[command(name = "warden", version, about = "Sandboxed code execution for AI agents, as an MCP server")]
pub struct Cli {
    /// Data directory (runtimes, module cache, workspaces, audit log).
    #[arg(long, env = "WARDEN_HOME", global = true)]
    pub home: Option<PathBuf>,

    /// Log records on stderr as plain text, or as one JSON object per line (for a log
    /// collector). Executors log in the same format.
    #[arg(long, env = LOG_FORMAT_ENV, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve MCP over stdio (default) or streamable HTTP.
    Serve(serve::ServeArgs),
    /// Run one program in a fresh sandbox and print the result as JSON.
    Exec(exec::ExecArgs),
    /// Check, explain or compare isolation profiles.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// List, build or create WASM tool packages.
    Tools {
        #[command(subcommand)]
        command: tools::ToolsCommand,
    },
    /// Report what the kernel offers for host hardening, and self-test it.
    Doctor(doctor::DoctorArgs),
    /// (internal) Confine the process like `serve` and probe the confinement; used by `doctor`
    /// and the tests.
    #[command(name = "__harden-probe", hide = true)]
    HardenProbe(doctor::ProbeArgs),
    /// Check the audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Install or inspect the language runtimes.
    Runtimes {
        #[command(subcommand)]
        command: runtimes::RuntimesCommand,
    },
    /// (internal) The spawner that starts executors for `serve`, on the socket it inherited as
    /// descriptor FD (see src/spawner.rs).
    #[command(hide = true)]
    Spawner {
        #[arg(long)]
        fd: i32,
    },
    /// (internal) An executor process, started by the spawner, talking to the front on the
    /// socket it inherited as descriptor CHANNEL_FD.
    #[command(hide = true)]
    Executor {
        #[arg(long)]
        channel_fd: i32,
        /// Names the executor in `ps` and logs.
        #[arg(long, default_value = "executor")]
        label: String,
    },
}

/// The environment variable that carries `--log-format` (to the spawner and executors too).
pub const LOG_FORMAT_ENV: &str = "WARDEN_LOG_FORMAT";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// An error already explained to the user; carries the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub status: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { message: format!("{e}"), status: 1 }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.log_format == LogFormat::Json {
        // The processes this one starts (spawner, executors) log alike: they inherit the
        // variable. SAFETY: nothing else runs yet (no threads), so nothing reads the
        // environment while it changes.
        unsafe { std::env::set_var(LOG_FORMAT_ENV, "json") };
    }
    init_logging(cli.log_format);
    // The internal processes read no data directory of their own choosing: the spawner needs
    // none, an executor learns everything, its data directory included, from the front.
    match cli.command {
        Command::Spawner { fd } => {
            return finish(crate::spawner::inherited_socket(fd).and_then(crate::spawner::serve).map_err(Failure::from));
        }
        Command::Executor { channel_fd, label: _ } => {
            return finish(executor(channel_fd));
        }
        _ => {}
    }
    let home = match Home::resolve(cli.home.clone()) {
        Ok(h) => h,
        Err(e) => return fail(Failure { message: e.to_string(), status: 1 }),
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(&home, args),
        Command::Exec(args) => exec::run(&home, args),
        Command::Runtimes { command } => runtimes::run(&home, command),
        Command::Audit { command } => audit::run(&home, command),
        Command::Policy { command } => policy::run(&home, command),
        Command::Tools { command } => tools::run(&home, command),
        Command::Doctor(args) => doctor::run(&home, args),
        Command::HardenProbe(args) => doctor::probe(&home, args),
        Command::Spawner { .. } | Command::Executor { .. } => unreachable!("handled above"),
    };
    finish(result)
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

/// The executor process's body, on the inherited channel descriptor.
fn executor(fd: i32) -> Result<(), Failure> {
    let fd = crate::spawner::inherited_socket(fd)
        .map_err(|e| Failure { message: format!("{e}; executors are started by `warden serve`"), status: 2 })?;
    crate::executor::process::main(fd).map_err(|e| Failure { message: format!("executor: {e:#}"), status: 1 })
}

fn fail(f: Failure) -> ExitCode {
    say("ERROR", &f.message, serde_json::json!({}));
    ExitCode::from(f.status)
}

/// A line for the operator that must appear whatever the log filter (the address served, a
/// fatal error): `warden: MESSAGE` as text, or in `--log-format json` a JSON record like the
/// log's, with `fields` beside the message.
pub fn say(level: &str, message: &str, fields: serde_json::Value) {
    if std::env::var(LOG_FORMAT_ENV).is_ok_and(|f| f == "json") {
        let mut all = serde_json::Map::new();
        all.insert("message".into(), format!("warden: {message}").into());
        if let serde_json::Value::Object(more) = fields {
            all.extend(more);
        }
        let line = serde_json::json!({"timestamp": crate::service::rfc3339(std::time::SystemTime::now()), "level": level, "fields": all, "target": "warden"});
        eprintln!("{line}");
    } else {
        eprintln!("warden: {message}");
    }
}

/// Logs go to stderr only, so stdout stays clean for results (and for JSON-RPC in stdio mode).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    // rmcp logs every error response at WARN; those are the caller's mistakes, not the server's.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rmcp::service=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => {
            builder.with_writer(crate::audit::bound::CappedStderr { json: false }).with_ansi(std::io::stderr().is_terminal()).try_init()
        }
        LogFormat::Json => builder.json().with_writer(crate::audit::bound::CappedStderr { json: true }).try_init(),
    };
}
