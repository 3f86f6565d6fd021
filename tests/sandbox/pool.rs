//! Guests prepared ahead (the executor's pool): a claimed guest serves its call in the call's
//! own directory like a fresh one, carries nothing of the guest's making or of any other call,
//! and no two claimed guests share a random stream.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use warden::executor::Executor;
use warden::runtime::Language;
use warden::sandbox::{CancelHandle, InputFile, Phase, RunReport, Workspace};

/// An executor keeping two guests of each kind, its workspaces under a fresh directory.
fn executor() -> (Executor, tempfile::TempDir) {
    let root = home().workspaces();
    std::fs::create_dir_all(&root).expect("workspaces dir");
    let dir = tempfile::Builder::new().prefix("pool-test-").tempdir_in(&root).expect("executor root");
    (Executor::with_pool(sandbox().clone(), dir.path(), 2), dir)
}

/// One fresh call as the front makes it: a call directory of its own (the front's handle, which
/// finds `workspace/` by name), then the executor's run in it.
async fn call(ex: &Executor, root: &Path, language: Language, code: &str, files: &[InputFile]) -> (RunReport, Workspace) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!("c{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let front = Workspace::create_named(root, &name).expect("call dir");
    let r = ex.run_fresh_in(front.root(), &spec(language, code), files, &CancelHandle::new(), None).await.expect("run");
    (r, front)
}

fn claimed(r: &RunReport) -> bool {
    r.phases.iter().any(|p| p.phase == Phase::GuestClaim)
}

/// Waits until the pool holds `n` guests (it fills on a thread of its own).
async fn filled(ex: &Executor, n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    while ex.pool().expect("a pool").len() < n {
        assert!(Instant::now() < until, "the pool never held {n} guests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn a_claimed_python_guest_is_the_calls_own_and_never_shares_a_random_stream() {
    runtime().block_on(async {
        let (ex, root) = executor();
        let draw = "import os, random, time, numpy as np\n\
                    print(random.random(), np.random.random(), os.getcwd(), sorted(os.listdir('/workspace')), \
                    sorted(os.listdir('/tmp')), time.monotonic() < 1.0)";
        // The first call of its kind finds nothing prepared, starts its own guest, and has
        // the pool filled for the next.
        let (first, _) = call(&ex, root.path(), Language::Python, draw, &[]).await;
        assert_outcome(&first, "ok");
        assert!(!claimed(&first), "{:?}", first.phases);
        filled(&ex, 2).await;
        // Long enough that a clock started when the guest was made would show it.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let input = InputFile { path: "in/data.txt".into(), content: b"given".to_vec() };
        let code = format!("{draw}\nprint(open('in/data.txt').read())\nopen('out.txt', 'w').write('made')\nopen('/tmp/t', 'w').write('t')");
        let (a, front_a) = call(&ex, root.path(), Language::Python, &code, std::slice::from_ref(&input)).await;
        let (b, front_b) = call(&ex, root.path(), Language::Python, &code, std::slice::from_ref(&input)).await;
        for (r, front) in [(&a, &front_a), (&b, &front_b)] {
            assert_outcome(r, "ok");
            assert!(claimed(r), "a prepared guest served the call: {:?}", r.phases);
            let lines: Vec<&str> = r.stdout.lines().collect();
            // Its cwd, an empty /tmp, the call's input and nothing else in /workspace, a clock
            // started at the claim.
            assert!(lines[0].ends_with("/workspace ['in'] [] True"), "{}", r.stdout);
            assert_eq!(lines[1], "given");
            // What it wrote is in the call's directory, where the front reads it.
            assert_eq!(front.read_file("out.txt", 100).unwrap(), b"made");
            assert_eq!(r.artifacts.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(), ["out.txt"]);
        }
        // Two guests prepared alike, claimed one after the other: different streams, for both
        // `random` and numpy.
        let stream = |r: &RunReport| r.stdout.lines().next().unwrap().split(' ').take(2).map(str::to_string).collect::<Vec<_>>();
        let (sa, sb) = (stream(&a), stream(&b));
        assert_ne!(sa[0], sb[0], "random: {sa:?} {sb:?}");
        assert_ne!(sa[1], sb[1], "numpy: {sa:?} {sb:?}");
        // The pool's own directories hold nothing of either call.
        filled(&ex, 1).await;
        for entry in std::fs::read_dir(root.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".pool-") {
                for sub in ["workspace", "tmp"] {
                    assert_eq!(std::fs::read_dir(entry.path().join(sub)).unwrap().count(), 0, "{name}/{sub}");
                }
            }
        }
    });
}

#[test]
fn claimed_javascript_guests_are_reseeded_and_a_session_may_start_on_one() {
    runtime().block_on(async {
        let (ex, root) = executor();
        let code = "console.log(Math.random(), typeof globalThis.leftover)\nglobalThis.leftover = 1";
        let (first, _) = call(&ex, root.path(), Language::Javascript, code, &[]).await;
        assert_outcome(&first, "ok");
        filled(&ex, 2).await;
        let (a, _) = call(&ex, root.path(), Language::Javascript, code, &[]).await;
        let (b, _) = call(&ex, root.path(), Language::Javascript, code, &[]).await;
        assert!(claimed(&a) && claimed(&b), "{:?} {:?}", a.phases, b.phases);
        assert_ne!(a.stdout, b.stdout, "two claimed guests drew the same Math.random");
        // Nothing of an earlier call: each sees no global of another.
        assert!(a.stdout.trim_end().ends_with("undefined") && b.stdout.trim_end().ends_with("undefined"), "{} {}", a.stdout, b.stdout);
    });
}

#[test]
fn a_call_allowed_less_memory_than_a_prepared_guest_holds_starts_its_own() {
    runtime().block_on(async {
        let (ex, root) = executor();
        let (first, _) = call(&ex, root.path(), Language::Python, "print(1)", &[]).await;
        assert_outcome(&first, "ok");
        filled(&ex, 2).await;
        let front = Workspace::create_named(root.path(), "small").expect("call dir");
        let mut small = spec(Language::Python, "print(1)");
        small.limits.memory_bytes = 1 << 20;
        let r = ex.run_fresh_in(front.root(), &small, &[], &CancelHandle::new(), None).await.expect("run");
        // Refused by its own limit, as without a pool, never run in a guest holding more.
        assert_outcome(&r, "memory_limit");
        assert!(!claimed(&r));
    });
}

#[test]
fn a_kind_no_guest_can_be_made_for_is_not_retried_at_every_idle_moment() {
    runtime().block_on(async {
        let (ex, root) = executor();
        // The first call of its kind allows too little memory for Python to start: so would a
        // guest made for it.
        let front = Workspace::create_named(root.path(), "tiny").expect("call dir");
        let mut tiny = spec(Language::Python, "print(1)");
        tiny.limits.memory_bytes = 1 << 20;
        let r = ex.run_fresh_in(front.root(), &tiny, &[], &CancelHandle::new(), None).await.expect("run");
        assert_outcome(&r, "memory_limit");
        let pool = ex.pool().expect("a pool");
        let until = Instant::now() + Duration::from_secs(30);
        while pool.failures() == 0 {
            assert!(Instant::now() < until, "the pool never tried to make a guest");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Idle for 50 of the pool's idle waits: one try, not one per wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pool.failures(), 1);
        assert_eq!(pool.len(), 0);
        // A call of the kind allowed enough memory raises what its guests are made with, and
        // the pool makes them again.
        let (r, _) = call(&ex, root.path(), Language::Python, "print(2)", &[]).await;
        assert_outcome(&r, "ok");
        filled(&ex, 2).await;
        assert_eq!(pool.failures(), 1);
    });
}
