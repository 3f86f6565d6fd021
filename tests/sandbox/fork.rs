//! Forking a live guest: a fresh instance given another's image holds the same interpreter,
//! without re-running its code, and diverges from it from then on.

use crate::common::*;
use warden::runtime::Language;
use warden::sandbox::{CancelHandle, Guest, GuestImage, RunReport, on_guest_thread};

/// Runs one turn in a live guest, under the default limits.
fn turn(g: &mut Guest, code: &str) -> RunReport {
    g.arm(&default_limits(), &CancelHandle::new(), Vec::new()).expect("arm");
    g.run(code)
}

fn out(g: &mut Guest, code: &str) -> String {
    let r = turn(g, code);
    assert_outcome(&r, "ok");
    r.stdout
}

#[test]
fn a_forked_python_guest_holds_the_same_state_and_then_diverges() {
    let sandbox = sandbox().clone();
    on_guest_thread(move || {
        let s = spec(Language::Python, "");
        let (ws_a, ws_b, cancel) = (workspace(), workspace(), CancelHandle::new());
        let mut a = sandbox.start_guest(&s, &ws_a, &cancel).unwrap().unwrap();
        // State drawn from randomness, a loaded DataFrame, and a side effect counted in a file.
        out(
            &mut a,
            "import os, random, numpy as np, pandas as pd\ntoken = os.urandom(16).hex()\n\
             df = pd.DataFrame({'a': range(200_000)})\nn = 0\ndef bump():\n    global n\n    n += 1\n    \
             open('effects.txt', 'a').write('x')\nbump()",
        );
        let probe = "print(token, df.a.sum(), n, bump.__name__)";
        let before = out(&mut a, probe);
        let mut b = sandbox.fork_guest(&mut a, &s, &ws_b, &cancel).unwrap().unwrap();
        assert_eq!(out(&mut b, probe), before, "the fork holds the same interpreter");
        // Nothing was re-run: the side effect happened once, in the source's workspace.
        assert_eq!(ws_a.read_file("effects.txt", 100).unwrap(), b"x");
        assert!(ws_b.read_file("effects.txt", 100).is_err(), "the fork's workspace is its own (copying it is the session's job)");
        // Isolation both ways.
        out(&mut a, "n = 100");
        assert_eq!(out(&mut b, "print(n)"), "1\n");
        out(&mut b, "df['b'] = 1");
        assert_eq!(out(&mut a, "print('b' in df)"), "False\n");
        // New seeds: the two never share a random stream.
        let draw = "print(random.random(), np.random.random())";
        assert_ne!(out(&mut a, draw), out(&mut b, draw));
        // The fork works in its own workspace as its working directory.
        assert_eq!(out(&mut b, "open('mine.txt', 'w').write('b')\nprint(os.getcwd())"), "/workspace\n");
        assert_eq!(ws_b.read_file("mine.txt", 10).unwrap(), b"b");
        assert!(ws_a.read_file("mine.txt", 10).is_err());
    })
    .unwrap();
}

#[test]
fn an_image_is_a_difference_from_the_runtime_and_restores_anywhere() {
    let sandbox = sandbox().clone();
    on_guest_thread(move || {
        let s = spec(Language::Python, "");
        let (ws, cancel) = (workspace(), CancelHandle::new());
        let mut a = sandbox.start_guest(&s, &ws, &cancel).unwrap().unwrap();
        out(&mut a, "import numpy as np\nbig = np.arange(1_000_000, dtype=np.int64)");
        let image: GuestImage = sandbox.capture_image(&mut a, &s, &ws, &cancel).unwrap();
        // About 8 MB of array and what the turns touched: far below the whole memory.
        assert!(image.dirty_bytes() >= 8 << 20, "{} bytes", image.dirty_bytes());
        assert!(image.dirty_bytes() < image.memory_bytes / 2, "{} of {} bytes", image.dirty_bytes(), image.memory_bytes);
        drop(a);
        let ws2 = workspace();
        let mut b = sandbox.restore_guest(&image, &s, &ws2, &cancel).unwrap().unwrap();
        assert_eq!(out(&mut b, "print(int(big.sum()), big.dtype)"), "499999500000 int64\n");
        // An image never goes into a guest of the other runtime, or one whose memory limit is
        // below what it holds.
        let js = spec(Language::Javascript, "");
        assert!(sandbox.restore_guest(&image, &js, &ws2, &cancel).is_err(), "a Python image in a JavaScript guest");
        // Just below what the image holds (at or above the runtime's own minimum, or the start
        // itself is refused: a memory-limit refusal either way).
        let mut small = s.clone();
        small.limits.memory_bytes = image.memory_bytes as u64 - 65536;
        let refused = sandbox.restore_guest(&image, &small, &ws2, &cancel).unwrap();
        let report = refused.err().expect("refused below the memory limit");
        assert_eq!(report.outcome.as_str(), "memory_limit", "{report:?}");
    })
    .unwrap();
}

#[test]
fn a_forked_javascript_guest_holds_the_same_state_and_then_diverges() {
    let sandbox = sandbox().clone();
    on_guest_thread(move || {
        let s = spec(Language::Javascript, "");
        let (ws_a, ws_b, cancel) = (workspace(), workspace(), CancelHandle::new());
        let mut a = sandbox.start_guest(&s, &ws_a, &cancel).unwrap().unwrap();
        out(&mut a, "var n = 41; const rows = Array.from({length: 50000}, (_, i) => ({i})); function add(x) { return x + 1 }");
        let mut b = sandbox.fork_guest(&mut a, &s, &ws_b, &cancel).unwrap().unwrap();
        assert_eq!(out(&mut b, "console.log(add(n), rows.length, rows[49999].i)"), "42 50000 49999\n");
        out(&mut a, "n = 0");
        assert_eq!(out(&mut b, "console.log(n)"), "41\n");
        let draw = "console.log(Math.random())";
        assert_ne!(out(&mut a, draw), out(&mut b, draw), "a fork is reseeded");
        assert_eq!(out(&mut b, "std.open('f.txt', 'w').puts('b'); console.log(os.getcwd()[0])"), "/workspace\n");
        assert!(ws_b.read_file("f.txt", 10).is_ok() && ws_a.read_file("f.txt", 10).is_err());
    })
    .unwrap();
}
