//! `warden policy check|explain|diff`: what reviewers run on isolation profiles.

use clap::Subcommand;

use super::Failure;
use crate::home::{Home, OwnFiles};
use crate::policy::Policy;
use crate::policy::diff::{Direction, diff};
use crate::policy::explain::explain;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a profile; exits non-zero with the field (and line) of the first error. Mounts
    /// are also checked against the data directory and the audit log (WARDEN_HOME,
    /// WARDEN_AUDIT_LOG); `serve` and `exec` check the auth and tool files they are given too.
    Check {
        /// A .toml file or an embedded profile name.
        file: String,
    },
    /// Say in plain language what a profile lets a guest do, with its effective limits.
    Explain {
        /// An embedded profile name (default, strict, data-science, tool-runner) or a .toml file.
        profile: String,
    },
    /// Show what changing profile A into B widens and narrows.
    Diff {
        a: String,
        b: String,
        /// Exit with status 3 when anything widens (for CI gates).
        #[arg(long)]
        fail_on_widen: bool,
    },
}

pub fn run(home: &Home, cmd: PolicyCommand) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Check { file } => {
            let p = Policy::load(&file)?;
            let mut own = OwnFiles::of_home(home);
            let audit = std::env::var_os("WARDEN_AUDIT_LOG").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
            own.add("the audit log", &audit.unwrap_or_else(|| home.audit_log()));
            if !p.source.starts_with("embedded:") {
                own.add("the profile file", std::path::Path::new(&p.source));
            }
            p.check_own_files(&own)?;
            println!("{}: OK (profile {:?}, sha256 {})", p.source, p.name(), p.sha256);
            Ok(())
        }
        PolicyCommand::Explain { profile } => {
            print!("{}", explain(&Policy::load(&profile)?));
            Ok(())
        }
        PolicyCommand::Diff { a, b, fail_on_widen } => {
            let (pa, pb) = (Policy::load(&a)?, Policy::load(&b)?);
            let changes = diff(&pa, &pb);
            if changes.is_empty() {
                println!("no differences in what guests may do");
                return Ok(());
            }
            let widens = changes.iter().filter(|c| c.direction == Direction::Widens).count();
            let narrows = changes.iter().filter(|c| c.direction == Direction::Narrows).count();
            println!("{} -> {}: {widens} widening, {narrows} narrowing, {} other", pa.source, pb.source, changes.len() - widens - narrows);
            for c in &changes {
                println!("{:<8} {:<34} {} -> {}", c.direction.label(), c.field, c.from, c.to);
            }
            if fail_on_widen && widens > 0 {
                return Err(Failure { message: format!("{widens} change(s) widen what guests may do"), status: 3 });
            }
            Ok(())
        }
    }
}
