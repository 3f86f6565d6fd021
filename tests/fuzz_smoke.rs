//! A short, deterministic fuzz run of the three fuzz entry points (`warden::fuzzing`), cheap
//! enough for every CI run: each committed seed in `fuzz/seeds/<target>/`, then a fixed-seed
//! stream of mutations (bit flips, interesting bytes and strings, deep nesting, huge numbers,
//! truncations, splices between seeds), about two seconds per target. Nothing may panic; a
//! failure prints the input, hex-encoded, to add as a seed and replay.
//!
//! This finds shallow bugs only. Long, coverage-guided runs use cargo fuzz; see fuzz/README.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

/// Wall-clock budget per target; the count cap keeps a fast machine from doing needless work.
const BUDGET: Duration = Duration::from_secs(2);
const MAX_CASES: u64 = 200_000;
/// Larger inputs only slow the run down; the parsers' interesting states are near the seeds.
const MAX_LEN: usize = 64 << 10;

#[test]
fn policy_never_panics() {
    smoke("policy", warden::fuzzing::policy, 0x5eed_0001);
}

#[test]
fn manifest_never_panics() {
    smoke("manifest", warden::fuzzing::manifest, 0x5eed_0002);
}

#[test]
fn mcp_request_never_panics() {
    smoke("mcp_request", warden::fuzzing::mcp_request, 0x5eed_0003);
}

fn smoke(target: &str, entry: fn(&[u8]), seed: u64) {
    let seeds = read_seeds(target);
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{target}");
    for s in &seeds {
        check(target, entry, s);
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut cases = 0u64;
    while cases < MAX_CASES && started.elapsed() < BUDGET {
        let mut input = seeds[rng.below(seeds.len())].clone();
        // Stacked mutations reach states a single edit of a valid seed cannot.
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &seeds, &mut rng);
        }
        input.truncate(MAX_LEN);
        check(target, entry, &input);
        cases += 1;
    }
    eprintln!("fuzz smoke {target}: {} seeds, {cases} mutated cases in {:.1} s", seeds.len(), started.elapsed().as_secs_f64());
}

fn check(target: &str, entry: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| entry(input))).is_err() {
        panic!(
            "warden::fuzzing::{target} panicked on this input ({} bytes, hex):\n{}\n(as text: {:?})",
            input.len(),
            to_hex(input),
            String::from_utf8_lossy(input)
        );
    }
}

fn read_seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut paths: Vec<_> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.expect("directory entry").path()).collect();
    // read_dir's order is the filesystem's; the stream must not depend on it.
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).collect()
}

/// Tokens that sit on the parsers' edges: quoting, brackets, escapes, NUL, invalid UTF-8,
/// integers just past u64/i64, floats TOML and JSON disagree on, path tricks.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"'",
    b"'''",
    b"\"\"\"",
    b"]",
    b"[",
    b"}",
    b"{",
    b"]]",
    b"[[",
    b",",
    b":",
    b"=",
    b".",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\uDFFF",
    b"\\x",
    b"\0",
    b"\n",
    b"\r\n",
    b"\t",
    b"#",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"0",
    b"-0",
    b"-1",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"1e999",
    b"-1e-999",
    b"0x",
    b"0xffffffffffffffff",
    b"0b2",
    b"1_",
    b"nan",
    b"inf",
    b"true",
    b"null",
    b"1979-05-27T07:32:00Z",
    b"..",
    b"/",
    b"/workspace/",
    b"../",
    b"//",
    b"%00",
    b"=====",
    b"\"jsonrpc\":\"2.0\"",
    b"\"method\":\"tools/call\"",
    b"\"id\":",
    b"\"_meta\":{",
    b"\"arguments\":{",
    b"\"encoding\":\"base64\"",
    b"\"$ref\":\"#\"",
    b"\"pattern\":\"(a+)+$\"",
    b"[[mounts]]\n",
    b"[limits]\n",
];

const NUMBERS: &[&[u8]] = &[
    b"0",
    b"1",
    b"-1",
    b"65",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"17592186044416",
    b"99999999999999999999999999",
    b"1e308",
    b"1.5",
    b"-0.0",
];

fn mutate(input: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Rng) {
    let len = input.len();
    let at = rng.below(len + 1);
    match rng.below(10) {
        0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => input[at.min(len - 1)] = rng.next() as u8,
        2 => {
            let t = INTERESTING[rng.below(INTERESTING.len())];
            input.splice(at..at, t.iter().copied());
        }
        3 => {
            // Nesting near and past the parsers' recursion limits (serde_json stops at 128).
            let depth = [8, 64, 127, 128, 129, 1_000, 20_000][rng.below(7)];
            let open: &[u8] = [b"[".as_slice(), b"{\"a\":", b"{a=", b"[{"][rng.below(4)];
            let nest: Vec<u8> = open.iter().copied().cycle().take(open.len() * depth).collect();
            input.splice(at..at, nest);
        }
        4 => input.truncate(at),
        5 => {
            // Splice: this input's head onto another seed's tail.
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        6 if len > 0 => {
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at.min(len - 1)..end);
        }
        7 if len > 0 => {
            let start = at.min(len - 1);
            let end = (start + 1 + rng.below(64)).min(len);
            let chunk = input[start..end].to_vec();
            for _ in 0..1 + rng.below(8) {
                input.splice(start..start, chunk.iter().copied());
            }
        }
        8 => {
            // Replace the next run of digits with an extreme number.
            if let Some(start) = input[at.min(len)..].iter().position(u8::is_ascii_digit).map(|p| p + at) {
                let end = input[start..].iter().position(|b| !b.is_ascii_digit() && *b != b'_').map_or(input.len(), |p| p + start);
                input.splice(start..end, NUMBERS[rng.below(NUMBERS.len())].iter().copied());
            }
        }
        _ => {
            let t = INTERESTING[rng.below(INTERESTING.len())];
            input.splice(at..(at + t.len()).min(len), t.iter().copied());
        }
    }
}

/// splitmix64: tiny, fast, and the same stream on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n`; `n` of 0 gives 0.
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
