//! A live guest's state as data, and a fresh guest made to hold it: the primitive under forking,
//! snapshotting and restoring sessions.
//!
//! A guest's whole state inside Wasmtime is its linear memory and its mutable globals (the stack
//! pointer, say); the served modules export every mutable global for this
//! ([`crate::runtime::snapshot::export_mutable_globals`]), and their function tables never
//! change after instantiation. [`GuestImage::capture`] records the memory as the 4 KiB pages that
//! differ from a *base*: a guest instantiated from the same runtime that has run nothing, whose
//! memory is the runtime's snapshot image. [`GuestImage::apply`] writes those pages and the
//! globals into another such base, which then holds the same interpreter: a few megabytes for a
//! session holding a DataFrame, not the hundred-odd of the whole heap, and nothing is re-run.
//!
//! Only pages the kernel says were written are compared at all (`/proc/self/pagemap`: a page of
//! the copy-on-write image that was never written is still the file's), so capturing a guest
//! costs in proportion to what it changed, not to its whole memory.
//!
//! Owns: the image (pages, globals, memory size) and moving it between instances. Does not own:
//! what lives outside the instance (the workspace, the WASI descriptor table, seeds), which the
//! caller re-establishes for the new guest ([`super::Sandbox::fork_guest`]), nor where images are
//! stored ([`crate::snapshots`]); [`GuestImage::encode`] and [`GuestImage::decode`] give their bytes.

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use wasmtime::{AsContextMut, Extern, Instance, Memory, Store, Val};

use super::host::GuestState;
use crate::runtime::Language;
use crate::runtime::snapshot::GLOBAL_EXPORT_PREFIX;

/// The granularity of the diff: the host's page size, so a page equal to the base stays a
/// shared copy-on-write page of the image in the new guest.
pub const PAGE: usize = 4096;

/// One mutable global's value, by its index in the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    /// Bit patterns, so a NaN survives the trip unchanged.
    F32(u32),
    F64(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub language: Language,
    /// Size of the guest's linear memory.
    pub memory_bytes: usize,
    /// Indexes of the pages that differ from the base, ascending.
    pub pages: Vec<u32>,
    /// Their contents, [`PAGE`] bytes each, in the same order.
    pub data: Vec<u8>,
    pub globals: Vec<(u32, GlobalValue)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the guest exports no memory")]
    NoMemory,
    #[error("the image is for {image}, not {guest}")]
    Language { image: Language, guest: String },
    #[error("the image holds {needed} MiB of memory, above this guest's memory limit")]
    TooLarge { needed: usize },
    #[error("the image was made by another build of the runtime (warden or its runtimes were upgraded since)")]
    Runtime,
    #[error("the image is malformed: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Wasm(String),
}

/// This process's page map, opened once. A confined executor opens it before Landlock
/// ([`prepare`]); where it cannot be read, every page is compared.
static PAGEMAP: OnceLock<Option<std::fs::File>> = OnceLock::new();

/// Opens `/proc/self/pagemap` now, while the process may still open it.
pub fn prepare() {
    PAGEMAP.get_or_init(open_pagemap);
}

/// The page map, if it can be read and the host's pages are [`PAGE`] bytes.
fn open_pagemap() -> Option<std::fs::File> {
    // SAFETY: sysconf only reads a value the C library got from the kernel at start (no file is
    // opened, so it also works under Landlock, unlike reading /proc/self/auxv).
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if usize::try_from(page).ok() != Some(PAGE) {
        return None;
    }
    std::fs::File::open("/proc/self/pagemap").ok()
}

// /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Which pages of `bytes` (a guest's linear memory, mapped in this process) may differ from the
/// snapshot image the guest was made from: those the kernel holds as private anonymous memory
/// (written since, or zero-filled on first touch) or swapped out. A page of the copy-on-write
/// image that was never written is still the file's, and a page beyond the image that was never
/// touched is not there at all; neither can differ, and neither is read. `None` when the page
/// map cannot be read.
fn touched_pages(bytes: &[u8]) -> Option<Vec<bool>> {
    let map = PAGEMAP.get_or_init(open_pagemap).as_ref()?;
    if bytes.is_empty() {
        return None;
    }
    let start = bytes.as_ptr() as usize;
    if start % PAGE != 0 {
        return None;
    }
    let pages = bytes.len().div_ceil(PAGE);
    let mut raw = vec![0u8; pages * 8];
    map.read_exact_at(&mut raw, (start / PAGE * 8) as u64).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
            })
            .collect(),
    )
}

fn memory(store: &mut Store<GuestState>, instance: Instance) -> Result<Memory, ImageError> {
    instance.get_memory(store.as_context_mut(), "memory").ok_or(ImageError::NoMemory)
}

/// The exported mutable globals of `instance`, by index.
fn globals(store: &mut Store<GuestState>, instance: Instance) -> Vec<(u32, wasmtime::Global)> {
    let mut out = Vec::new();
    let exports: Vec<(String, Extern)> =
        instance.exports(store.as_context_mut()).map(|e| (e.name().to_string(), e.into_extern())).collect();
    for (name, ext) in exports {
        if let (Some(index), Extern::Global(g)) = (name.strip_prefix(GLOBAL_EXPORT_PREFIX).and_then(|i| i.parse().ok()), ext) {
            out.push((index, g));
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// The values of `instance`'s exported mutable globals.
fn read_globals(store: &mut Store<GuestState>, instance: Instance) -> Result<Vec<(u32, GlobalValue)>, ImageError> {
    let mut values = Vec::new();
    for (index, g) in globals(store, instance) {
        let v = match g.get(store.as_context_mut()) {
            Val::I32(v) => GlobalValue::I32(v),
            Val::I64(v) => GlobalValue::I64(v),
            Val::F32(v) => GlobalValue::F32(v),
            Val::F64(v) => GlobalValue::F64(v),
            _ => return Err(ImageError::Malformed("a global of a reference or vector type")),
        };
        values.push((index, v));
    }
    Ok(values)
}

/// Sets `instance`'s exported mutable globals to `values`.
fn write_globals(store: &mut Store<GuestState>, instance: Instance, values: &[(u32, GlobalValue)]) -> Result<(), ImageError> {
    let targets = globals(store, instance);
    for (index, value) in values {
        let Some((_, g)) = targets.iter().find(|(i, _)| i == index) else {
            return Err(ImageError::Malformed("a global the runtime does not have"));
        };
        let v = match *value {
            GlobalValue::I32(v) => Val::I32(v),
            GlobalValue::I64(v) => Val::I64(v),
            GlobalValue::F32(v) => Val::F32(v),
            GlobalValue::F64(v) => Val::F64(v),
        };
        g.set(store.as_context_mut(), v).map_err(|e| ImageError::Wasm(format!("{e:#}")))?;
    }
    Ok(())
}

/// `instance`'s memory, grown to at least `bytes` (within the guest's memory limit).
fn grow_to(store: &mut Store<GuestState>, instance: Instance, bytes: usize) -> Result<Memory, ImageError> {
    let mem = memory(store, instance)?;
    let have = mem.data_size(&*store);
    if bytes > have {
        let grow = (bytes - have).div_ceil(65536) as u64;
        mem.grow(store.as_context_mut(), grow).map_err(|_| ImageError::TooLarge { needed: bytes >> 20 })?;
    }
    Ok(mem)
}

/// What a restored guest's memory and globals come from: an image, or a live guest (a fork).
pub trait Fill {
    fn fill(&self, target: &mut super::Guest) -> Result<(), ImageError>;
}

impl Fill for GuestImage {
    fn fill(&self, target: &mut super::Guest) -> Result<(), ImageError> {
        self.apply(target)
    }
}

/// A live guest as a [`Fill`] (its state copied straight across, [`GuestImage::copy_live`]).
pub struct Live<'a>(pub std::cell::RefCell<&'a mut super::Guest>);

impl Fill for Live<'_> {
    fn fill(&self, target: &mut super::Guest) -> Result<(), ImageError> {
        GuestImage::copy_live(&mut self.0.borrow_mut(), target)
    }
}

impl GuestImage {
    /// Records `live`'s memory (as the pages that differ from `base`'s) and its globals. `base`
    /// must be a guest of the same runtime that has run nothing.
    pub fn capture(live: &mut super::Guest, base: &mut super::Guest) -> Result<GuestImage, ImageError> {
        let language = live.language().ok_or(ImageError::Malformed("a tool command has no image"))?;
        live.with_parts(|store, instance| {
            let mem = memory(store, instance)?;
            let (pages, data) = base.with_parts(|base_store, base_instance| -> Result<_, ImageError> {
                let base_bytes = memory(base_store, base_instance)?.data(&*base_store);
                let live_bytes = mem.data(&*store);
                let touched = touched_pages(live_bytes);
                // At most every touched page differs: reserve that once.
                let most = touched.as_ref().map_or(live_bytes.len().div_ceil(PAGE), |t| t.iter().filter(|&&t| t).count());
                let mut pages = Vec::with_capacity(most);
                let mut data = Vec::with_capacity(most * PAGE);
                for (i, page) in live_bytes.chunks(PAGE).enumerate() {
                    if touched.as_ref().is_some_and(|t| !t[i]) {
                        continue;
                    }
                    let at = i * PAGE;
                    if base_bytes.get(at..at + page.len()).is_some_and(|b| b == page) {
                        continue;
                    }
                    pages.push(u32::try_from(i).map_err(|_| ImageError::Malformed("memory too large"))?);
                    data.extend_from_slice(page);
                    data.resize(pages.len() * PAGE, 0);
                }
                Ok((pages, data))
            })?;
            let memory_bytes = mem.data_size(&*store);
            let globals = read_globals(store, instance)?;
            Ok(GuestImage { language, memory_bytes, pages, data, globals })
        })
    }

    /// Writes the image into `target`, a guest of the same runtime that has run nothing: its
    /// memory grows to the image's size (within its limit), the differing pages are written,
    /// and the globals set.
    pub fn apply(&self, target: &mut super::Guest) -> Result<(), ImageError> {
        if target.language() != Some(self.language) {
            return Err(ImageError::Language { image: self.language, guest: format!("{:?}", target.language()) });
        }
        if self.data.len() != self.pages.len() * PAGE || self.pages.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ImageError::Malformed("pages and data disagree"));
        }
        target.with_parts(|store, instance| {
            let mem = grow_to(store, instance, self.memory_bytes)?;
            let size = mem.data_size(&*store);
            let bytes = mem.data_mut(store.as_context_mut());
            let mut run = 0;
            while run < self.pages.len() {
                let first = self.pages[run] as usize;
                let mut end = run + 1;
                while end < self.pages.len() && self.pages[end] as usize == first + (end - run) {
                    end += 1;
                }
                let (a, b) = (first * PAGE, ((first + end - run) * PAGE).min(size));
                if a < b {
                    populate(&mut bytes[a..b]);
                }
                run = end;
            }
            for (n, &page) in self.pages.iter().enumerate() {
                let at = page as usize * PAGE;
                let src = &self.data[n * PAGE..(n + 1) * PAGE];
                let end = (at + PAGE).min(size);
                if at >= end || at >= self.memory_bytes {
                    return Err(ImageError::Malformed("a page beyond the memory"));
                }
                bytes[at..end].copy_from_slice(&src[..end - at]);
            }
            write_globals(store, instance, &self.globals)
        })
    }

    /// Writes `source`'s state straight into `target`, a guest of the same runtime that has run
    /// nothing: every page the kernel says `source` wrote is copied (no comparison with a base,
    /// and no image in between, so a fork copies each changed page once), and the globals set.
    pub fn copy_live(source: &mut super::Guest, target: &mut super::Guest) -> Result<(), ImageError> {
        let language = source.language().ok_or(ImageError::Malformed("a tool command has no image"))?;
        if target.language() != Some(language) {
            return Err(ImageError::Language { image: language, guest: format!("{:?}", target.language()) });
        }
        source.with_parts(|store, instance| {
            let mem = memory(store, instance)?;
            let globals = read_globals(store, instance)?;
            let live = mem.data(&*store);
            target.with_parts(|tstore, tinstance| -> Result<(), ImageError> {
                let tmem = grow_to(tstore, tinstance, live.len())?;
                let bytes = &mut tmem.data_mut(tstore.as_context_mut())[..live.len()];
                match touched_pages(live) {
                    // Runs of touched pages are copied as one.
                    Some(touched) => {
                        let mut i = 0;
                        while i < touched.len() {
                            if !touched[i] {
                                i += 1;
                                continue;
                            }
                            let start = i;
                            while i < touched.len() && touched[i] {
                                i += 1;
                            }
                            let (a, b) = (start * PAGE, (i * PAGE).min(live.len()));
                            populate(&mut bytes[a..b]);
                            bytes[a..b].copy_from_slice(&live[a..b]);
                        }
                    }
                    None => bytes.copy_from_slice(live),
                }
                write_globals(tstore, tinstance, &globals)
            })
        })
    }

    /// Bytes of memory the image writes beyond the base image.
    pub fn dirty_bytes(&self) -> usize {
        self.data.len()
    }
}

/// Faults in `bytes` (page-aligned) for writing in one system call, instead of one fault per
/// page as a copy touches them (measured: an in-process fork of a session holding a 10 MB
/// DataFrame, 12,100 pages written, 33-40 ms -> 25-32 ms). Best effort: a kernel without
/// `MADV_POPULATE_WRITE` (before 5.14) refuses it and the copy faults page by page as before.
fn populate(bytes: &mut [u8]) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: advice on memory this guest's store owns and that the caller holds mutably; it
    // changes no contents.
    unsafe { libc::madvise(bytes.as_mut_ptr().cast(), bytes.len(), MADV_POPULATE_WRITE) };
}

/// The first bytes of an encoded image, with the format's version.
const MAGIC: &[u8; 8] = b"WDNIMG\x01\0";

impl GuestImage {
    /// The image as bytes, for a file: a header naming the runtime build it belongs to
    /// (`runtime`, [`crate::runtime::RuntimeSpec::cache_key`]), then the globals, the page
    /// indexes and the pages. Little-endian throughout.
    pub fn encode(&self, runtime: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + runtime.len() + self.globals.len() * 13 + self.pages.len() * 4 + self.data.len());
        out.extend_from_slice(MAGIC);
        out.push(match self.language {
            Language::Python => 0,
            Language::Javascript => 1,
        });
        out.extend_from_slice(&(runtime.len() as u32).to_le_bytes());
        out.extend_from_slice(runtime.as_bytes());
        out.extend_from_slice(&(self.memory_bytes as u64).to_le_bytes());
        out.extend_from_slice(&(self.globals.len() as u32).to_le_bytes());
        for (index, value) in &self.globals {
            out.extend_from_slice(&index.to_le_bytes());
            let (kind, bits) = match *value {
                GlobalValue::I32(v) => (0u8, v as u32 as u64),
                GlobalValue::I64(v) => (1, v as u64),
                GlobalValue::F32(v) => (2, v as u64),
                GlobalValue::F64(v) => (3, v),
            };
            out.push(kind);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for p in &self.pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Reads an image [`encode`](Self::encode) wrote for the runtime build `runtime`. Every
    /// count is checked against the bytes actually there before anything is allocated, and an
    /// image of another runtime build, or one claiming more than `max_memory` bytes of memory,
    /// is refused.
    pub fn decode(bytes: &[u8], runtime: &str, max_memory: usize) -> Result<GuestImage, ImageError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(ImageError::Malformed("not a guest image of this format"));
        }
        let language = match r.take(1)?[0] {
            0 => Language::Python,
            1 => Language::Javascript,
            _ => return Err(ImageError::Malformed("an unknown language")),
        };
        let name_len = r.u32()? as usize;
        if r.take(name_len)? != runtime.as_bytes() {
            return Err(ImageError::Runtime);
        }
        let memory_bytes = usize::try_from(r.u64()?).map_err(|_| ImageError::Malformed("memory size"))?;
        if memory_bytes > max_memory {
            return Err(ImageError::TooLarge { needed: memory_bytes >> 20 });
        }
        let nglobals = r.u32()? as usize;
        if nglobals > r.0.len() / 13 {
            return Err(ImageError::Malformed("more globals than bytes"));
        }
        let mut globals = Vec::with_capacity(nglobals);
        for _ in 0..nglobals {
            let index = r.u32()?;
            let kind = r.take(1)?[0];
            let bits = r.u64()?;
            globals.push((
                index,
                match kind {
                    0 => GlobalValue::I32(bits as u32 as i32),
                    1 => GlobalValue::I64(bits as i64),
                    2 => GlobalValue::F32(u32::try_from(bits).map_err(|_| ImageError::Malformed("an f32 of 64 bits"))?),
                    3 => GlobalValue::F64(bits),
                    _ => return Err(ImageError::Malformed("an unknown global type")),
                },
            ));
        }
        let npages = r.u32()? as usize;
        if npages.checked_mul(4 + PAGE) != Some(r.0.len()) {
            return Err(ImageError::Malformed("the page count does not match the bytes"));
        }
        let mut pages = Vec::with_capacity(npages);
        for _ in 0..npages {
            pages.push(r.u32()?);
        }
        if pages.windows(2).any(|w| w[0] >= w[1]) || pages.last().is_some_and(|&p| p as usize * PAGE >= memory_bytes) {
            return Err(ImageError::Malformed("pages out of order or beyond the memory"));
        }
        Ok(GuestImage { language, memory_bytes, pages, data: r.0.to_vec(), globals })
    }
}

/// Most bytes an encoded image of a memory of `memory_bytes` can take: every page with its
/// index, and a header. Anything longer is not an image this limit could restore.
pub fn max_encoded_bytes(memory_bytes: u64) -> u64 {
    memory_bytes.saturating_add(memory_bytes / 1024).saturating_add(1 << 20)
}

/// A cursor over an encoded image that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if n > self.0.len() {
            return Err(ImageError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestImage {
        let mut data = vec![7u8; 2 * PAGE];
        data[PAGE] = 9;
        GuestImage {
            language: Language::Javascript,
            memory_bytes: 16 * PAGE,
            pages: vec![3, 11],
            data,
            globals: vec![
                (0, GlobalValue::I32(-5)),
                (2, GlobalValue::I64(1 << 40)),
                (3, GlobalValue::F32(0x7fc0_0001)),
                (5, GlobalValue::F64(u64::MAX)),
            ],
        }
    }

    #[test]
    fn an_image_round_trips_and_a_damaged_one_is_refused() {
        let image = sample();
        let bytes = image.encode("rt-1");
        assert_eq!(GuestImage::decode(&bytes, "rt-1", 1 << 30).unwrap(), image);
        assert!(matches!(GuestImage::decode(&bytes, "rt-2", 1 << 30), Err(ImageError::Runtime)));
        assert!(matches!(GuestImage::decode(&bytes, "rt-1", PAGE), Err(ImageError::TooLarge { .. })));
        for cut in [0, 7, 20, bytes.len() - 1] {
            assert!(GuestImage::decode(&bytes[..cut], "rt-1", 1 << 30).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(GuestImage::decode(&longer, "rt-1", 1 << 30).is_err());
        // A page index beyond the memory it claims.
        let mut beyond = sample();
        beyond.pages[1] = 16;
        assert!(GuestImage::decode(&beyond.encode("rt-1"), "rt-1", 1 << 30).is_err());
    }
}
