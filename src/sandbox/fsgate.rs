//! The workspace quota at the point of use: shadows of every WASI preview1 call that can grow or
//! shrink what a guest stores, which check the [`Quota`] ledger before the call and correct it
//! from the kernel's `stat` after.
//!
//! The shadowed calls are `fd_write`, `fd_pwrite`, `fd_filestat_set_size`, `path_open` (create,
//! truncate), `path_create_directory`, `path_symlink`, `path_link`, `path_rename`,
//! `path_unlink_file`, `path_remove_directory`, `fd_close` (the close of an unlinked file frees
//! it) and `fd_renumber` (which closes its target). `fd_allocate` needs no shadow: wasmtime-wasi
//! refuses it. Each shadow runs wasmtime-wasi's own implementation for the real work, through the
//! ABI functions its `wiggle` bindings export, so the guest sees exactly the WASI semantics it
//! had; the only new answer is `EDQUOT` ("disk quota exceeded") for a change that would not fit,
//! and `EXDEV` for a rename or link between the workspace and a mount (so `shutil.move` falls back
//! to a copy, which is counted).
//!
//! Which descriptors are in the workspace is tracked per guest: the `/workspace` and `/tmp`
//! preopens, and every descriptor opened beneath them. Calls on other descriptors (stdio, the
//! runtime's read-only files, a profile's mounts) pass straight through.
//!
//! What this module does not do: it keeps no ledger of its own ([`super::quota`] does), and it
//! does not decide what happens to a guest that keeps hitting the quota beyond stopping it after
//! [`MAX_REFUSALS`] refused changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as abi, WasiSnapshotPreview1 as _};
use wasmtime_wasi::p1::{WasiP1Ctx, types};
use wasmtime_wasi::runtime::in_tokio;
use wiggle::{GuestMemory, GuestPtr};

use super::control::Stop;
use super::host::GuestState;
use super::quota::{BLOCK, Key, Quota, Seen, charge_of};

/// Refused changes after which a guest is stopped: it is not handling `EDQUOT`, only spinning on
/// it (a C `FILE*` that retries its flush on every write, for one).
pub const MAX_REFUSALS: u32 = 64;

/// Longest path the gate copies out of guest memory to look at. Longer paths are refused with
/// `ENAMETOOLONG` on workspace descriptors (the kernel's own limit is 4096).
const MAX_PATH: usize = 64 << 10;

const ERRNO_SUCCESS: i32 = 0;

fn errno(e: types::Errno) -> i32 {
    e as i32
}

/// The quota's view of one guest: its workspace descriptors, and the shared ledger.
pub struct FsGate {
    quota: Arc<Mutex<Quota>>,
    /// Guest descriptors beneath `/workspace` or `/tmp`, and the inode each is open on.
    fds: HashMap<u32, Key>,
}

impl Drop for FsGate {
    /// The guest's descriptors close with its store: release what they held open.
    fn drop(&mut self) {
        let mut q = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        for (_, key) in self.fds.drain() {
            q.closed(key, None);
        }
    }
}

impl FsGate {
    /// Adopts the `/workspace` and `/tmp` preopens of `wasi` as the guest's workspace.
    pub fn new(quota: Arc<Mutex<Quota>>, wasi: &mut WasiP1Ctx) -> FsGate {
        let mut gate = FsGate { quota, fds: HashMap::new() };
        // Host-side look-ups: enough fuel for a preopen's name (the bindings reset it per call).
        wasi.set_hostcall_fuel(1 << 16);
        // Preopens are numbered from 3 in order; stop at the first descriptor that is not one.
        for fd in 3u32.. {
            let mut scratch = [0u8; 16];
            let mut mem = GuestMemory::Unshared(&mut scratch);
            let Ok(types::Prestat::Dir(dir)) = wasi.fd_prestat_get(&mut mem, types::Fd::from(fd)) else { break };
            if dir.pr_name_len as usize > scratch.len() {
                continue;
            }
            let name_len = dir.pr_name_len;
            let mut mem = GuestMemory::Unshared(&mut scratch);
            if wasi.fd_prestat_dir_name(&mut mem, types::Fd::from(fd), GuestPtr::new(0), name_len).is_err() {
                continue;
            }
            let name = &scratch[..name_len as usize];
            if name == b"/workspace" || name == b"/tmp" {
                if let Ok(seen) = fstat(wasi, fd) {
                    gate.fds.insert(fd, seen.key);
                }
            }
        }
        gate
    }

    /// The limits of the run about to start.
    pub fn set_limits(&self, max_bytes: u64, max_files: u64) {
        self.ledger().set_limits(max_bytes, max_files);
    }

    /// Changes refused since the limits were last set.
    pub fn refused(&self) -> u32 {
        self.ledger().refused()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Quota> {
        self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tracks(&self, fd: i32) -> bool {
        self.fds.contains_key(&(fd as u32))
    }

    /// Checks that a change needing `bytes` and `files` more fits. `Ok(Some(errno))` refuses it;
    /// `Err` stops a guest that keeps trying.
    fn admit(&self, bytes: u64, files: u64) -> wasmtime::Result<Option<i32>> {
        let mut q = self.ledger();
        match q.admit(bytes, files) {
            Ok(()) => Ok(None),
            Err(_) if q.refused() > MAX_REFUSALS => Err(wasmtime::Error::new(Stop::WorkspaceQuota)),
            Err(_) => Ok(Some(errno(types::Errno::Dquot))),
        }
    }

    /// A descriptor was opened beneath the workspace.
    fn opened(&mut self, wasi: &mut WasiP1Ctx, fd: u32) {
        if let Ok(seen) = fstat(wasi, fd) {
            self.ledger().opened(seen);
            if let Some(old) = self.fds.insert(fd, seen.key) {
                self.ledger().closed(old, None);
            }
        }
    }

    /// Re-reads an inode after a change made through `fd`.
    fn refresh_fd(&self, wasi: &mut WasiP1Ctx, fd: i32) {
        if let Ok(seen) = fstat(wasi, fd as u32) {
            self.ledger().observe(seen);
        }
    }

    /// Re-reads the inode at `path` and the directory holding it, after an entry was added there.
    fn refresh_entry(&self, wasi: &mut WasiP1Ctx, dirfd: i32, path: &[u8]) {
        if let Ok(seen) = stat_at(wasi, dirfd, path, false) {
            self.ledger().observe(seen);
        }
        if let Ok(seen) = stat_at(wasi, dirfd, parent_of(path), true) {
            self.ledger().observe(seen);
        }
    }
}

/// `(dev, ino, size, nlink)` of an open descriptor, as WASI reports it.
fn fstat(wasi: &mut WasiP1Ctx, fd: u32) -> Result<Seen, types::Error> {
    let mut scratch = [0u8; 0];
    let mut mem = GuestMemory::Unshared(&mut scratch);
    let st = in_tokio(wasi.fd_filestat_get(&mut mem, types::Fd::from(fd)))?;
    Ok(seen_of(&st))
}

/// `stat` of `path` beneath `dirfd`.
fn stat_at(wasi: &mut WasiP1Ctx, dirfd: i32, path: &[u8], follow: bool) -> Result<Seen, types::Error> {
    let mut buf = path.to_vec();
    let len = buf.len() as u32;
    let mut mem = GuestMemory::Unshared(&mut buf);
    let flags = if follow { types::Lookupflags::SYMLINK_FOLLOW } else { types::Lookupflags::empty() };
    let st = in_tokio(wasi.path_filestat_get(&mut mem, types::Fd::from(dirfd as u32), flags, GuestPtr::new((0, len))))?;
    Ok(seen_of(&st))
}

fn seen_of(st: &types::Filestat) -> Seen {
    Seen { key: Key { dev: st.dev, ino: st.ino }, size: st.size, nlink: st.nlink, dir: st.filetype == types::Filetype::Directory }
}

/// The directory part of a WASI path, `.` when it has none.
fn parent_of(path: &[u8]) -> &[u8] {
    let trimmed = match path.iter().rposition(|&b| b != b'/') {
        Some(end) => &path[..=end],
        None => return b".",
    };
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &trimmed[..i],
        None => b".",
    }
}

/// Runs `f` with the guest's WASI context, its memory and its gate, as wasmtime-wasi's own
/// bindings do (including the hostcall fuel that bounds host-side copies).
///
/// The real call must start with the whole hostcall fuel, whatever the gate's own look-ups used:
/// each shadow's `real` closure sets it again.
fn with_parts<R>(
    caller: &mut Caller<'_, GuestState>,
    f: impl FnOnce(&mut WasiP1Ctx, &mut GuestMemory<'_>, &mut FsGate, usize) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(m)) = caller.get_export("memory") else {
        wasmtime::bail!("missing required memory export");
    };
    let (mem, state) = m.data_and_store_mut(caller);
    state.wasi.set_hostcall_fuel(fuel);
    let mut mem = GuestMemory::Unshared(mem);
    let Some(gate) = state.fsgate.as_mut() else {
        wasmtime::bail!("a guest without a workspace gate made a filesystem call");
    };
    f(&mut state.wasi, &mut mem, gate, fuel)
}

/// A path argument copied out of guest memory; `None` when it is out of bounds (the real call
/// then answers `EFAULT` itself).
enum PathArg {
    Ok(Vec<u8>),
    Fault,
    TooLong,
}

/// The guest's memory as bytes (this gate only builds unshared views: guests have no threads).
fn bytes<'m>(mem: &'m GuestMemory<'_>) -> &'m [u8] {
    match mem {
        GuestMemory::Unshared(b) => b,
        GuestMemory::Shared(_) => &[],
    }
}

fn read_path(mem: &GuestMemory<'_>, ptr: i32, len: i32) -> PathArg {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > MAX_PATH {
        return PathArg::TooLong;
    }
    match bytes(mem).get(ptr..ptr.saturating_add(len)) {
        Some(b) if ptr.checked_add(len).is_some() => PathArg::Ok(b.to_vec()),
        _ => PathArg::Fault,
    }
}

macro_rules! path_or_pass {
    ($mem:expr, $ptr:expr, $len:expr, $pass:expr) => {
        match read_path($mem, $ptr, $len) {
            PathArg::Ok(p) => p,
            PathArg::Fault => return $pass,
            PathArg::TooLong => return Ok(errno(types::Errno::Nametoolong)),
        }
    };
}

/// Length of the first non-empty buffer of a `ciovec` array: what wasmtime-wasi writes in one
/// `fd_write`. `None` when the array is out of bounds.
fn first_write_len(mem: &GuestMemory<'_>, iovs: i32, count: i32) -> Option<u64> {
    let data = bytes(mem);
    let (at, n) = (iovs as u32 as usize, count as u32 as usize);
    let end = at.checked_add(n.checked_mul(8)?)?;
    let arr = data.get(at..end)?;
    Some(arr.chunks_exact(8).map(|c| u32::from_le_bytes(c[4..8].try_into().expect("4 bytes"))).find(|&l| l > 0).unwrap_or(0).into())
}

/// Adds the shadows to `linker` (after WASI itself, with shadowing allowed).
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    linker.func_wrap(M, "fd_write", fd_write)?;
    linker.func_wrap(M, "fd_pwrite", fd_pwrite)?;
    linker.func_wrap(M, "fd_filestat_set_size", fd_filestat_set_size)?;
    linker.func_wrap(M, "fd_close", fd_close)?;
    linker.func_wrap(M, "fd_renumber", fd_renumber)?;
    linker.func_wrap(M, "path_open", path_open)?;
    linker.func_wrap(M, "path_create_directory", path_create_directory)?;
    linker.func_wrap(M, "path_symlink", path_symlink)?;
    linker.func_wrap(M, "path_link", path_link)?;
    linker.func_wrap(M, "path_rename", path_rename)?;
    linker.func_wrap(M, "path_unlink_file", path_unlink_file)?;
    linker.func_wrap(M, "path_remove_directory", path_remove_directory)?;
    Ok(())
}

/// Growth of the file behind `fd` if `len` bytes are written at `pos` (`None`: at its cursor).
fn write_growth(wasi: &mut WasiP1Ctx, gate: &FsGate, fd: i32, pos: Option<u64>, len: u64) -> Result<u64, types::Error> {
    let seen = fstat(wasi, fd as u32)?;
    let mut scratch = [0u8; 0];
    let mut mem = GuestMemory::Unshared(&mut scratch);
    let fdstat = in_tokio(wasi.fd_fdstat_get(&mut mem, types::Fd::from(fd as u32)))?;
    // Linux semantics, which wasmtime-wasi follows: an append-mode descriptor writes at the end
    // whatever offset `pwrite` names.
    let at = if fdstat.fs_flags.contains(types::Fdflags::APPEND) {
        seen.size
    } else {
        match pos {
            Some(p) => p,
            None => wasi.fd_tell(&mut mem, types::Fd::from(fd as u32))?,
        }
    };
    let new_size = seen.size.max(at.saturating_add(len));
    Ok(charge_of(new_size).saturating_sub(gate.ledger().charge_for(seen.key)))
}

fn fd_write(mut caller: Caller<'_, GuestState>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        if gate.tracks(fd) {
            if let Some(len) = first_write_len(mem, iovs, iovs_len).filter(|&l| l > 0) {
                if let Ok(growth) = write_growth(wasi, gate, fd, None, len) {
                    if let Some(e) = gate.admit(growth, 0)? {
                        return Ok(e);
                    }
                }
            }
        }
        wasi.set_hostcall_fuel(fuel);
        let r = in_tokio(abi::fd_write(wasi, mem, fd, iovs, iovs_len, nwritten))?;
        if gate.tracks(fd) {
            gate.refresh_fd(wasi, fd);
        }
        Ok(r)
    })
}

fn fd_pwrite(mut caller: Caller<'_, GuestState>, fd: i32, iovs: i32, iovs_len: i32, offset: i64, nwritten: i32) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        if gate.tracks(fd) {
            if let Some(len) = first_write_len(mem, iovs, iovs_len).filter(|&l| l > 0) {
                if let Ok(growth) = write_growth(wasi, gate, fd, Some(offset as u64), len) {
                    if let Some(e) = gate.admit(growth, 0)? {
                        return Ok(e);
                    }
                }
            }
        }
        wasi.set_hostcall_fuel(fuel);
        let r = in_tokio(abi::fd_pwrite(wasi, mem, fd, iovs, iovs_len, offset, nwritten))?;
        if gate.tracks(fd) {
            gate.refresh_fd(wasi, fd);
        }
        Ok(r)
    })
}

fn fd_filestat_set_size(mut caller: Caller<'_, GuestState>, fd: i32, size: i64) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        if gate.tracks(fd) {
            if let Ok(seen) = fstat(wasi, fd as u32) {
                let growth = charge_of(size as u64).saturating_sub(gate.ledger().charge_for(seen.key));
                if let Some(e) = gate.admit(growth, 0)? {
                    return Ok(e);
                }
            }
        }
        wasi.set_hostcall_fuel(fuel);
        let r = in_tokio(abi::fd_filestat_set_size(wasi, mem, fd, size))?;
        if gate.tracks(fd) {
            gate.refresh_fd(wasi, fd);
        }
        Ok(r)
    })
}

fn fd_close(mut caller: Caller<'_, GuestState>, fd: i32) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let before = gate.fds.get(&(fd as u32)).map(|&key| (key, fstat(wasi, fd as u32).ok().map(|s| s.nlink)));
        wasi.set_hostcall_fuel(fuel);
        let r = in_tokio(abi::fd_close(wasi, mem, fd))?;
        if r == ERRNO_SUCCESS {
            if let Some((key, nlink)) = before {
                gate.fds.remove(&(fd as u32));
                gate.ledger().closed(key, nlink);
            }
        }
        Ok(r)
    })
}

fn fd_renumber(mut caller: Caller<'_, GuestState>, from: i32, to: i32) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let closing = gate.fds.get(&(to as u32)).map(|&key| (key, fstat(wasi, to as u32).ok().map(|s| s.nlink)));
        wasi.set_hostcall_fuel(fuel);
        let r = in_tokio(abi::fd_renumber(wasi, mem, from, to))?;
        if r == ERRNO_SUCCESS && from != to {
            if let Some((key, nlink)) = closing {
                gate.fds.remove(&(to as u32));
                gate.ledger().closed(key, nlink);
            }
            if let Some(key) = gate.fds.remove(&(from as u32)) {
                gate.fds.insert(to as u32, key);
            }
        }
        Ok(r)
    })
}

#[allow(clippy::too_many_arguments)]
fn path_open(
    mut caller: Caller<'_, GuestState>,
    dirfd: i32,
    dirflags: i32,
    path_ptr: i32,
    path_len: i32,
    oflags: i32,
    rights_base: i64,
    rights_inheriting: i64,
    fdflags: i32,
    fd_out: i32,
) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let real = |wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>| {
            wasi.set_hostcall_fuel(fuel);
            in_tokio(abi::path_open(
                wasi,
                mem,
                dirfd,
                dirflags,
                path_ptr,
                path_len,
                oflags,
                rights_base,
                rights_inheriting,
                fdflags,
                fd_out,
            ))
        };
        if !gate.tracks(dirfd) {
            return real(wasi, mem);
        }
        let path = path_or_pass!(mem, path_ptr, path_len, real(wasi, mem));
        let creates = (oflags as u16 & types::Oflags::CREAT.bits()) != 0;
        let follow = (dirflags as u32 & types::Lookupflags::SYMLINK_FOLLOW.bits()) != 0;
        if creates && stat_at(wasi, dirfd, &path, follow).is_err() {
            // A new inode, and perhaps one more block of names in its directory.
            if let Some(e) = gate.admit(charge_of(0) + BLOCK, 1)? {
                return Ok(e);
            }
        }
        let r = real(wasi, mem)?;
        if r != ERRNO_SUCCESS {
            return Ok(r);
        }
        let at = fd_out as u32 as usize;
        let fd = bytes(mem).get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if let Some(fd) = fd {
            gate.opened(wasi, fd);
        }
        if creates {
            gate.refresh_entry(wasi, dirfd, &path);
        }
        Ok(r)
    })
}

fn path_create_directory(mut caller: Caller<'_, GuestState>, dirfd: i32, path_ptr: i32, path_len: i32) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let real = |wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>| {
            wasi.set_hostcall_fuel(fuel);
            in_tokio(abi::path_create_directory(wasi, mem, dirfd, path_ptr, path_len))
        };
        if !gate.tracks(dirfd) {
            return real(wasi, mem);
        }
        let path = path_or_pass!(mem, path_ptr, path_len, real(wasi, mem));
        if let Some(e) = gate.admit(charge_of(BLOCK) + BLOCK, 1)? {
            return Ok(e);
        }
        let r = real(wasi, mem)?;
        if r == ERRNO_SUCCESS {
            gate.refresh_entry(wasi, dirfd, &path);
        }
        Ok(r)
    })
}

fn path_symlink(
    mut caller: Caller<'_, GuestState>,
    old_ptr: i32,
    old_len: i32,
    dirfd: i32,
    new_ptr: i32,
    new_len: i32,
) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let real = |wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>| {
            wasi.set_hostcall_fuel(fuel);
            in_tokio(abi::path_symlink(wasi, mem, old_ptr, old_len, dirfd, new_ptr, new_len))
        };
        if !gate.tracks(dirfd) {
            return real(wasi, mem);
        }
        let path = path_or_pass!(mem, new_ptr, new_len, real(wasi, mem));
        if let Some(e) = gate.admit(charge_of(old_len as u32 as u64) + BLOCK, 1)? {
            return Ok(e);
        }
        let r = real(wasi, mem)?;
        if r == ERRNO_SUCCESS {
            gate.refresh_entry(wasi, dirfd, &path);
        }
        Ok(r)
    })
}

#[allow(clippy::too_many_arguments)]
fn path_link(
    mut caller: Caller<'_, GuestState>,
    old_fd: i32,
    old_flags: i32,
    old_ptr: i32,
    old_len: i32,
    new_fd: i32,
    new_ptr: i32,
    new_len: i32,
) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let real = |wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>| {
            wasi.set_hostcall_fuel(fuel);
            in_tokio(abi::path_link(wasi, mem, old_fd, old_flags, old_ptr, old_len, new_fd, new_ptr, new_len))
        };
        match (gate.tracks(old_fd), gate.tracks(new_fd)) {
            (false, false) => return real(wasi, mem),
            // An inode the ledger does not charge must not gain a name inside the workspace (nor
            // a charged one a name outside it): as across file systems.
            (true, false) | (false, true) => return Ok(errno(types::Errno::Xdev)),
            (true, true) => {}
        }
        let path = path_or_pass!(mem, new_ptr, new_len, real(wasi, mem));
        // One more name: at most one more block of names in the target directory.
        if let Some(e) = gate.admit(BLOCK, 0)? {
            return Ok(e);
        }
        let r = real(wasi, mem)?;
        if r == ERRNO_SUCCESS {
            gate.refresh_entry(wasi, new_fd, &path);
        }
        Ok(r)
    })
}

fn path_rename(
    mut caller: Caller<'_, GuestState>,
    old_fd: i32,
    old_ptr: i32,
    old_len: i32,
    new_fd: i32,
    new_ptr: i32,
    new_len: i32,
) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let real = |wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>| {
            wasi.set_hostcall_fuel(fuel);
            in_tokio(abi::path_rename(wasi, mem, old_fd, old_ptr, old_len, new_fd, new_ptr, new_len))
        };
        match (gate.tracks(old_fd), gate.tracks(new_fd)) {
            (false, false) => return real(wasi, mem),
            (true, false) | (false, true) => return Ok(errno(types::Errno::Xdev)),
            (true, true) => {}
        }
        let old = path_or_pass!(mem, old_ptr, old_len, real(wasi, mem));
        let new = path_or_pass!(mem, new_ptr, new_len, real(wasi, mem));
        let moved = stat_at(wasi, old_fd, &old, false).ok();
        let replaced = stat_at(wasi, new_fd, &new, false).ok().filter(|v| moved.is_none_or(|m| m.key != v.key));
        if let Some(e) = gate.admit(BLOCK, 0)? {
            return Ok(e);
        }
        let r = real(wasi, mem)?;
        if r == ERRNO_SUCCESS {
            // The inode the new name used to point to lost that name.
            match replaced {
                Some(v) if v.dir => gate.ledger().dir_removed(v.key),
                Some(v) => gate.ledger().unlinked(v.key, v.nlink),
                None => {}
            }
            gate.refresh_entry(wasi, new_fd, &new);
        }
        Ok(r)
    })
}

fn path_unlink_file(caller: Caller<'_, GuestState>, dirfd: i32, path_ptr: i32, path_len: i32) -> wasmtime::Result<i32> {
    remove_entry(caller, dirfd, path_ptr, path_len, false)
}

fn path_remove_directory(caller: Caller<'_, GuestState>, dirfd: i32, path_ptr: i32, path_len: i32) -> wasmtime::Result<i32> {
    remove_entry(caller, dirfd, path_ptr, path_len, true)
}

/// `path_unlink_file` or (`dir`) `path_remove_directory`: the inode loses a name, and is
/// released once it has none and no descriptor holds it.
fn remove_entry(mut caller: Caller<'_, GuestState>, dirfd: i32, path_ptr: i32, path_len: i32, dir: bool) -> wasmtime::Result<i32> {
    with_parts(&mut caller, |wasi, mem, gate, fuel| {
        let real = |wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>| {
            wasi.set_hostcall_fuel(fuel);
            if dir {
                in_tokio(abi::path_remove_directory(wasi, mem, dirfd, path_ptr, path_len))
            } else {
                in_tokio(abi::path_unlink_file(wasi, mem, dirfd, path_ptr, path_len))
            }
        };
        if !gate.tracks(dirfd) {
            return real(wasi, mem);
        }
        let path = path_or_pass!(mem, path_ptr, path_len, real(wasi, mem));
        let victim = stat_at(wasi, dirfd, &path, false).ok();
        let r = real(wasi, mem)?;
        match (r, victim) {
            (ERRNO_SUCCESS, Some(v)) if dir => gate.ledger().dir_removed(v.key),
            (ERRNO_SUCCESS, Some(v)) => gate.ledger().unlinked(v.key, v.nlink),
            _ => {}
        }
        Ok(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_of_wasi_paths() {
        assert_eq!(parent_of(b"a"), b".");
        assert_eq!(parent_of(b"a/b"), b"a");
        assert_eq!(parent_of(b"a/b/"), b"a");
        assert_eq!(parent_of(b"a//b"), b"a/");
        assert_eq!(parent_of(b"/a"), b"/");
        assert_eq!(parent_of(b""), b".");
    }
}
