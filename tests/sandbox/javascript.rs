//! QuickJS-NG guests: the language, async code, console, files.

use crate::common::*;
use warden::runtime::Language;
use warden::sandbox::{CancelHandle, InputFile};

#[test]
fn javascript_hello() {
    let r = js("console.log('hello')");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "hello\n");
}

#[test]
fn async_functions_and_promises_run_to_completion() {
    let r = js("async function f() { await null; return 42 }\n\
                f().then(v => console.log('then', v));\n\
                const v = await new Promise(r => setTimeout(() => r(7), 10));\n\
                console.log('awaited', v);");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "then 42\nawaited 7\n");
}

#[test]
fn exceptions_go_to_stderr_with_nonzero_exit() {
    let r = js("function go() { throw new RangeError('bad value') }\ngo()");
    assert_outcome(&r, "error");
    assert_ne!(r.exit_code, Some(0));
    assert!(r.stderr.contains("RangeError: bad value"), "{}", r.stderr);
}

#[test]
fn es2023_features_work() {
    let r = js("const a = [3, 1, 2];\n\
                console.log(a.toSorted().join(), a.at(-1), a.findLast(x => x > 1), Object.hasOwn({q: 1}, 'q'));\n\
                console.log(typeof queueMicrotask, [1, [2, [3]]].flat(Infinity).length, 10n ** 20n);\n\
                class P { #x = 1; get x() { return this.#x } }; console.log(new P().x, 'a-b'.replaceAll('-', '+'));");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "1,2,3 2 2 true\nfunction 3 100000000000000000000n\n1 a+b\n");
}

#[test]
fn console_formats_objects_like_node() {
    let r = js("console.log({a: 1, b: 'x', c: [1, 2]}, new Set([1]), null, undefined);\n\
                console.error('%s is %d', 'n', 5)");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "{ a: 1, b: 'x', c: [ 1, 2 ] } Set(1) { 1 } null undefined\n");
    assert_eq!(r.stderr, "n is 5\n");
}

#[test]
fn javascript_reads_inputs_and_writes_artifacts_in_its_cwd() {
    let files = vec![InputFile { path: "in.json".into(), content: br#"{"n": 20}"#.to_vec() }];
    let code = "const n = JSON.parse(std.loadFile('in.json')).n;\n\
                const f = std.open('out.json', 'w'); f.puts(JSON.stringify({double: n * 2})); f.close();\n\
                console.log(os.getcwd()[0]);";
    let (r, ws) = run_with(spec(Language::Javascript, code), files, CancelHandle::new());
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "/workspace");
    assert_eq!(r.artifacts.len(), 1);
    assert_eq!(r.artifacts[0].mime, "application/json");
    assert_eq!(ws.read_file("out.json", 100).unwrap(), br#"{"double":40}"#);
}

#[test]
fn fresh_guests_from_the_snapshot_never_share_a_random_stream() {
    // Every guest starts from one snapshot taken after the prelude; each is reseeded when it is
    // claimed, so the same code draws different numbers.
    let code = "console.log(Array.from({length: 4}, () => Math.random()).join(','))";
    let (a, b) = (js(code), js(code));
    assert_outcome(&a, "ok");
    assert_outcome(&b, "ok");
    assert_ne!(a.stdout, b.stdout, "two fresh guests drew the same Math.random stream");
}

#[test]
fn a_fresh_guest_sees_its_own_environment_and_working_directory() {
    let mut s = spec(Language::Javascript, "console.log(std.getenv('WARDEN_PROBE'), os.getcwd()[0], std.getenv('HOME'))");
    s.env.push(("WARDEN_PROBE".into(), "this-call".into()));
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "this-call /workspace /tmp\n");
}

#[test]
fn module_code_and_unhandled_rejections() {
    let r = js("import * as m from 'qjs:std';\nconsole.log(typeof m.loadFile, typeof console.table)");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "function function\n");
    let r = js("Promise.reject(new RangeError('unhandled')); console.log('ran')");
    assert_outcome(&r, "error");
    assert_eq!(r.stdout, "ran\n");
    assert!(r.stderr.contains("Uncaught (in promise) RangeError: unhandled"), "{}", r.stderr);
    // A rejection handled later in the same turn is not reported.
    let r = js("const p = Promise.reject(new Error('x')); await null; p.catch(() => console.log('caught'))");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "caught\n");
}

#[test]
fn the_host_door_is_closed_without_code_mode() {
    let r = js("try { __warden_host_call('{}') } catch (e) { console.log(e.message) }");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "no host: this run has no door to warden\n");
}
