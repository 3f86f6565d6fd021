//! `warden audit verify`: check an audit log's hash chain and say where it breaks.

use std::path::PathBuf;

use clap::Subcommand;

use super::Failure;
use crate::audit::verify::verify_reader;
use crate::home::Home;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify a log's hash chain over the exact bytes written: any byte changed, added or removed,
    /// deleted or reordered lines and a torn last line fail, with the line number. Lines from
    /// before warden wrote byte-exact hashes are reported as the old format.
    Verify {
        /// The log (default: $WARDEN_AUDIT_LOG, else the data directory's audit/audit.jsonl).
        file: Option<PathBuf>,
    },
}

pub fn run(home: &Home, cmd: AuditCommand) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Verify { file } => {
            let path = file.or_else(|| std::env::var_os("WARDEN_AUDIT_LOG").map(PathBuf::from)).unwrap_or_else(|| home.audit_log());
            let f = std::fs::File::open(&path).map_err(|e| format!("opening {path:?}: {e}"))?;
            let report = verify_reader(std::io::BufReader::new(f));
            match report.problem {
                None => {
                    println!("{}: OK, {} events, chain head {}", path.display(), report.lines, report.last_hash);
                    if report.legacy_lines > 0 {
                        println!(
                            "note: the first {} events are in the old format, whose hashes cover re-serialized JSON rather than the bytes written (an edit that keeps the parsed JSON the same, such as other spacing or a duplicate key, is not detected in them); later events are byte-exact",
                            report.legacy_lines
                        );
                    }
                    Ok(())
                }
                Some(problem) => {
                    Err(Failure { message: format!("{}: FAILED after {} good events: {problem}", path.display(), report.lines), status: 1 })
                }
            }
        }
    }
}
