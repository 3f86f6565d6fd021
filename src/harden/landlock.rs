//! Landlock: the filesystem paths and TCP ports the process can still reach after lockdown.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus as KernelStatus, NetPort, PathBeneath, PathFd,
    RestrictSelfAttr, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::{Deserialize, Serialize};

use super::{HardenError, Plan};
use crate::policy::HardeningMode;

/// The ABI whose guarantees warden asks for (filesystem incl. truncate and cross-directory
/// links, TCP bind/connect, abstract-socket and signal scoping). Tested on Linux 6.18.
pub const TARGET_ABI: ABI = ABI::V6;

/// How much of warden's ruleset the kernel enforces. Serialised as `"full"`, `"partial"`,
/// `"not_enforced"`, `"unavailable"` or `"off"`: the words of the `server.start` audit line,
/// authenticated `/healthz` and the hardening probe.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LandlockStatus {
    /// Every right warden asks for is enforced.
    Full,
    /// Some rights are enforced; the report's `gaps` say which are not.
    Partial,
    /// Landlock exists but enforced nothing.
    NotEnforced,
    /// The kernel has no Landlock (not built in, or not enabled at boot).
    Unavailable,
    /// Not attempted: hardening mode `off`.
    #[default]
    Off,
}

impl LandlockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LandlockStatus::Full => "full",
            LandlockStatus::Partial => "partial",
            LandlockStatus::NotEnforced => "not_enforced",
            LandlockStatus::Unavailable => "unavailable",
            LandlockStatus::Off => "off",
        }
    }

    /// What [`restrict`] can achieve on a kernel with this Landlock ABI, before trying: `Full`
    /// from [`TARGET_ABI`] on, `Partial` below it, `Unavailable` without Landlock.
    pub fn expected(kernel_abi: i32) -> LandlockStatus {
        if kernel_abi >= TARGET_ABI as i32 {
            LandlockStatus::Full
        } else if kernel_abi > 0 {
            LandlockStatus::Partial
        } else {
            LandlockStatus::Unavailable
        }
    }
}

impl std::fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LandlockReport {
    pub status: LandlockStatus,
    /// The kernel's Landlock ABI (0 when Landlock is not available).
    pub kernel_abi: i32,
    /// The ABI warden asked for.
    pub target_abi: i32,
    /// What the kernel could not enforce, in words.
    pub gaps: Vec<String>,
    pub read_only: Vec<String>,
    pub read_write: Vec<String>,
    /// Files that may also be executed (only the spawner has any; absent when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub execute: Vec<String>,
    /// The ruleset also binds threads that existed before (Landlock ABI 8).
    pub all_threads: bool,
    /// TCP ports the process may connect to (only the front's, to a trace collector the
    /// operator named; absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect_tcp: Vec<u16>,
}

/// The kernel's Landlock ABI version, or 0 (asks the kernel directly).
pub fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag only
    // returns the ABI version (or -1 with errno); it creates nothing.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION) };
    if v < 0 { 0 } else { v as i32 }
}

fn read_rights(path: &Path) -> BitFlags<AccessFs> {
    if path.is_dir() { AccessFs::ReadFile | AccessFs::ReadDir } else { AccessFs::ReadFile.into() }
}

fn write_rights(path: &Path) -> BitFlags<AccessFs> {
    if path.is_dir() {
        AccessFs::ReadFile
            | AccessFs::ReadDir
            | AccessFs::WriteFile
            | AccessFs::RemoveDir
            | AccessFs::RemoveFile
            | AccessFs::MakeDir
            | AccessFs::MakeReg
            | AccessFs::MakeSym
            | AccessFs::Refer
            | AccessFs::Truncate
    } else {
        AccessFs::ReadFile | AccessFs::WriteFile
    }
}

/// Read and execute: for the spawner's warden binary and dynamic loader, and nothing else.
fn execute_rights(_: &Path) -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::Execute
}

/// Restricts this thread (and every thread it creates later) to `plan`'s paths, with no TCP
/// bind, no TCP connect but to `plan`'s collector port, and nothing executable. Call it while
/// the process is single-threaded.
pub fn restrict(plan: &Plan) -> Result<LandlockReport, HardenError> {
    restrict_with_execute(plan, &[])
}

/// Like [`restrict`], and the files in `execute` may also be read and executed (the spawner's
/// warden binary and dynamic loader).
pub fn restrict_with_execute(plan: &Plan, execute: &[PathBuf]) -> Result<LandlockReport, HardenError> {
    let kernel = kernel_abi();
    let mut report = LandlockReport {
        kernel_abi: kernel,
        target_abi: TARGET_ABI as i32,
        read_only: plan.read_only.iter().map(|p| p.display().to_string()).collect(),
        read_write: plan.read_write.iter().map(|p| p.display().to_string()).collect(),
        execute: execute.iter().map(|p| p.display().to_string()).collect(),
        connect_tcp: plan.collector.iter().map(|a| a.port()).collect(),
        ..Default::default()
    };
    if plan.mode == HardeningMode::Off {
        report.status = LandlockStatus::Off;
        return Ok(report);
    }
    let level = if plan.mode == HardeningMode::Enforce { CompatLevel::HardRequirement } else { CompatLevel::BestEffort };
    let err = |e: landlock::RulesetError| HardenError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?;
    let removable = |_: &Path| AccessFs::ReadDir | AccessFs::RemoveDir;
    for (paths, rights) in [
        (plan.read_only.as_slice(), read_rights as fn(&Path) -> _),
        (&plan.read_write, write_rights),
        (&plan.removable, removable),
        (execute, execute_rights),
    ] {
        for p in paths {
            let fd = PathFd::new(p).map_err(|e| HardenError::Landlock(format!("{}: {e}", p.display())))?;
            ruleset = ruleset.add_rule(PathBeneath::new(fd, rights(p))).map_err(err)?;
        }
    }
    for port in &report.connect_tcp {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::ConnectTcp)).map_err(err)?;
    }
    // On kernels with Landlock ABI 8 the ruleset also binds threads that already exist; older
    // kernels ignore the request (warden asserts it is single-threaded anyway).
    let status = ruleset.set_compatibility(CompatLevel::BestEffort).all_threads(true).map_err(err)?.restrict_self().map_err(err)?;
    // Partial only for want of all-threads enforcement (ABI < 8) still means every right warden
    // asked for is enforced: the process is single-threaded when it restricts itself.
    let only_tsync_missing = status.ruleset == RulesetStatus::PartiallyEnforced && kernel >= TARGET_ABI as i32 && !status.all_threads;
    report.status = match (&status.landlock, status.ruleset) {
        (KernelStatus::NotEnabled | KernelStatus::NotImplemented, _) => LandlockStatus::Unavailable,
        (_, RulesetStatus::FullyEnforced) => LandlockStatus::Full,
        (_, RulesetStatus::PartiallyEnforced) if only_tsync_missing => LandlockStatus::Full,
        (_, RulesetStatus::PartiallyEnforced) => LandlockStatus::Partial,
        (_, RulesetStatus::NotEnforced) => LandlockStatus::NotEnforced,
    };
    report.all_threads = status.all_threads;
    if kernel < 4 {
        report.gaps.push("TCP bind/connect rules need Landlock ABI 4 (Linux 6.7)".into());
    }
    if kernel < 3 {
        report.gaps.push("truncate rules need Landlock ABI 3 (Linux 6.2)".into());
    }
    if kernel < 6 {
        report.gaps.push("abstract UNIX socket and signal scoping need Landlock ABI 6 (Linux 6.12)".into());
    }
    if kernel == 0 {
        report.gaps = vec!["the kernel has no Landlock (not built in, or not enabled at boot)".into()];
    }
    Ok(report)
}
