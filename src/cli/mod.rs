//! The `warden` command line.
//!
//! Commands print results on stdout and everything else (progress, logs) on stderr. Exit status
//! is 0 when the command did its job, 1 for warden's own failures (with a message saying what to
//! do), 2 for bad usage.

mod exec;
mod runtimes;

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one program in a fresh sandbox and print the result as JSON.
    Exec(exec::ExecArgs),
    /// Install or inspect the language runtimes.
    Runtimes {
        #[command(subcommand)]
        command: runtimes::RuntimesCommand,
    },
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
    init_logging();
    let home = match Home::resolve(cli.home.clone()) {
        Ok(h) => h,
        Err(e) => return fail(Failure { message: e.to_string(), status: 1 }),
    };
    let result = match cli.command {
        Command::Exec(args) => exec::run(&home, args),
        Command::Runtimes { command } => runtimes::run(&home, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

fn fail(f: Failure) -> ExitCode {
    eprintln!("warden: {}", f.message);
    ExitCode::from(f.status)
}

/// Logs go to stderr only, so stdout stays clean for results (and for JSON-RPC in stdio mode).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
