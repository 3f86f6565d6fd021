//! Guests see nothing of the host: no host files, no host environment, no network, and no other
//! call's files.

use crate::common::*;
use warden::runtime::Language;
use warden::sandbox::CancelHandle;

#[test]
fn host_files_are_invisible_to_python() {
    let code = r#"
import os
attempts = ['/etc/passwd', '../../../../etc/passwd', '/workspace/../../etc/passwd', '/proc/self/environ',
            '/usr/local/lib/../../../etc/passwd', '/sys/kernel', '/dev/null', '/root', '/home']
for p in attempts:
    try:
        open(p).read(); print('READ', p)
    except OSError as e:
        print('refused', p)
try:
    print('LISTED', sorted(os.listdir('/')))
except OSError:
    print('no root listing')
"#;
    let r = py(code);
    assert_outcome(&r, "ok");
    assert!(!r.stdout.contains("READ") && !r.stdout.contains("LISTED"), "{}", r.stdout);
}

#[test]
fn absolute_host_paths_of_the_server_are_invisible() {
    let home = home().root().display().to_string();
    let r = py(&format!(
        "import os\nfor p in [{home:?}, {home:?} + '/cache', '/work', '/tmp/..']:\n    print(p, os.path.exists(p) and len(os.listdir(p)))"
    ));
    assert_outcome(&r, "ok");
    for line in r.stdout.lines().take(3) {
        assert!(line.ends_with("False"), "{line}");
    }
}

#[test]
fn symlink_tricks_do_not_escape() {
    let code = r#"
import os
results = []
for target in ['/etc/passwd', '../../../../../etc/passwd', '../../..', '/', '/tmp/../..']:
    name = 'l%d' % len(results)
    try:
        os.symlink(target, name)
    except OSError:
        results.append('nolink'); continue
    try:
        with open(name) as f: f.read(); results.append('READ ' + target)
    except OSError:
        try:
            os.listdir(name); results.append('LISTED ' + target)
        except OSError:
            results.append('refused')
try:
    os.symlink('l9', 'l9'); open('l9').read(); results.append('LOOP READ')
except OSError:
    results.append('refused')
print(results)
"#;
    let r = py(code);
    assert_outcome(&r, "ok");
    assert!(!r.stdout.contains("READ") && !r.stdout.contains("LISTED"), "{}", r.stdout);
    // Symlinks left in the workspace are not followed by the host either: no artifact.
    assert!(r.artifacts.is_empty(), "{:?}", r.artifacts);
}

#[test]
fn javascript_cannot_read_host_files() {
    let r = js("for (const p of ['/etc/passwd', '../../etc/passwd', '/proc/self/environ']) {\n\
                  const f = std.open(p, 'r'); console.log(f ? 'READ ' + p : 'refused');\n}\n\
                console.log(os.readdir('/')[1] !== 0 ? 'nolist' : 'listed')");
    assert_outcome(&r, "ok");
    assert!(!r.stdout.contains("READ"), "{}", r.stdout);
}

#[test]
fn host_environment_is_invisible() {
    // SAFETY: set before any guest thread reads the environment; the sandbox never reads it.
    unsafe { std::env::set_var("WARDEN_TEST_SECRET", "s3cr3t-value") };
    let r = py("import os\nprint(sorted(os.environ.items()))");
    assert_outcome(&r, "ok");
    assert!(!r.stdout.contains("s3cr3t"), "{}", r.stdout);
    assert!(!r.stdout.contains("PATH"), "{}", r.stdout);
    assert!(r.stdout.contains("('HOME', '/tmp')") && r.stdout.contains("('TMPDIR', '/tmp')"), "{}", r.stdout);
    let r = js("console.log(JSON.stringify(std.getenviron()))");
    assert_outcome(&r, "ok");
    assert!(!r.stdout.contains("s3cr3t") && !r.stdout.contains("PATH"), "{}", r.stdout);
}

#[test]
fn network_is_unavailable() {
    let code = r#"
import socket, urllib.request
out = []
try:
    s = socket.socket(); s.connect(('127.0.0.1', 80)); out.append('CONNECTED')
except Exception as e:
    out.append('socket refused')
try:
    urllib.request.urlopen('http://example.com', timeout=2); out.append('FETCHED')
except Exception as e:
    out.append('urllib refused')
try:
    socket.getaddrinfo('example.com', 80); out.append('RESOLVED')
except Exception:
    out.append('dns refused')
print(out)
"#;
    let r = py(code);
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "['socket refused', 'urllib refused', 'dns refused']");
    let r = js("console.log(typeof fetch, typeof XMLHttpRequest, typeof os.exec)");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "undefined undefined undefined");
}

#[test]
fn processes_cannot_be_spawned() {
    let r = py("import os, subprocess\nout = []\n\
                for f in [lambda: os.system('ls'), lambda: subprocess.run(['ls']), lambda: os.fork()]:\n\
                \x20   try: f(); out.append('RAN')\n\
                \x20   except Exception: out.append('refused')\nprint(out)");
    assert_outcome(&r, "ok");
    assert!(!r.stdout.contains("RAN"), "{}", r.stdout);
}

#[test]
fn concurrent_calls_do_not_see_each_others_files() {
    let writer = std::thread::spawn(|| {
        let code = "import time, os\nopen('secret.txt', 'w').write('mine')\ntime.sleep(0.5)\nprint(sorted(os.listdir('.')))";
        run_with(spec(Language::Python, code), Vec::new(), CancelHandle::new()).0
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    let reader = py("import os\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))");
    let writer = writer.join().unwrap();
    assert_outcome(&writer, "ok");
    assert_outcome(&reader, "ok");
    assert_eq!(writer.stdout.trim(), "['secret.txt']");
    assert_eq!(reader.stdout.trim(), "[] []");
}

#[test]
fn fresh_guests_share_no_state() {
    let a = py("import random, os\nglobal_marker = 1\nprint(random.random(), os.urandom(8).hex())");
    let b = py("import random, os\nprint('global_marker' in globals(), random.random(), os.urandom(8).hex())");
    assert_outcome(&a, "ok");
    assert_outcome(&b, "ok");
    assert!(b.stdout.starts_with("False"), "{}", b.stdout);
    let ra: Vec<&str> = a.stdout.split_whitespace().collect();
    let rb: Vec<&str> = b.stdout.split_whitespace().collect();
    assert_ne!(ra[0], rb[1], "random numbers repeat across guests");
    assert_ne!(ra[1], rb[2]);
}

#[test]
fn host_internals_do_not_leak_into_guest_output() {
    let home = home().root().display().to_string();
    for r in [py("import ctypes"), py("raise SystemError('x')"), js("null.x"), js("function f(){f()} f()")] {
        for text in [&r.stdout, &r.stderr, r.message.as_ref().unwrap_or(&String::new())] {
            assert!(!text.contains(&home), "host path leaked: {text}");
            assert!(!text.contains("wasmtime") && !text.contains("backtrace") && !text.contains(".rs:"), "host detail leaked: {text}");
        }
    }
}
