//! Reaching the host another way: its environment and secrets, the network, processes and
//! threads.

use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

use crate::harness::*;
use crate::{Layer, all_blocked, attempt, js_probes, py_probes};

const SECRET: &str = "sk-warden-security-suite-7f3a9c";

/// A stdio server whose own environment holds a secret (as an operator's shell would).
async fn server_with_secret(files: &ServerFiles) -> Client {
    let mut cmd = server_command(files, None, &[]);
    cmd.env("WARDEN_SECURITY_SECRET", SECRET).env("AWS_SECRET_ACCESS_KEY", SECRET);
    Recorder::default().serve(TokioChildProcess::new(cmd).expect("spawn")).await.expect("initialize")
}

#[tokio::test]
async fn the_host_environment_and_its_secrets_stay_out() {
    let files = ServerFiles::new();
    let client = server_with_secret(&files).await;
    let code = "import os, json\nprint(json.dumps(sorted(os.environ.items())))\nprint(os.environ.get('WARDEN_SECURITY_SECRET'))";
    let s = attempt(&client, "python_host_environment", Layer::Policy, json!({"language": "python", "code": code})).await;
    let env: Vec<(String, String)> = serde_json::from_str(s["stdout"].as_str().unwrap().lines().next().unwrap()).unwrap();
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["HOME", "LANG", "TMPDIR"], "only the profile's variables reach a guest");
    assert!(!s.to_string().contains(SECRET));

    let code = "const e = std.getenviron(); print(JSON.stringify(Object.keys(e).sort())); print(std.getenv('AWS_SECRET_ACCESS_KEY'))";
    let s = attempt(&client, "javascript_host_environment", Layer::Policy, json!({"language": "javascript", "code": code})).await;
    assert_eq!(s["stdout"], "[\"HOME\",\"LANG\",\"TMPDIR\"]\nundefined\n", "{s}");

    // A caller cannot ask for a host variable either: `env` is not a request field.
    crate::case("requested_host_variable", Layer::Policy);
    let e = tool_error(
        call(&client, "execute_code", json!({"language": "python", "code": "1", "env": {"X": "$WARDEN_SECURITY_SECRET"}})).await,
    );
    assert!(e.contains("unknown field") && e.contains("env"), "{e}");
    crate::alive(&client).await;

    // Code is not recorded under the default profile, so a secret an agent pastes into code
    // does not land in the audit trail.
    let code = format!("token = '{SECRET}'\nprint(len(token))");
    attempt(&client, "secret_in_code_not_audited", Layer::Policy, json!({"language": "python", "code": code})).await;
    let audit = std::fs::read_to_string(files.audit_log()).unwrap();
    assert!(audit.contains("\"kind\":\"execution\""));
    assert!(!audit.contains(SECRET), "a secret reached the audit log");
}

#[tokio::test]
async fn there_is_no_network() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    // A live listener the guest is told about: nothing may ever connect to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let socket = "__import__('socket')";
    let probes = [
        ("socket", format!("{socket}.socket()")),
        ("create_connection", format!("{socket}.create_connection(('127.0.0.1', {port}), timeout=1)")),
        ("getaddrinfo", format!("{socket}.getaddrinfo('localhost', {port})")),
        ("gethostbyname", format!("{socket}.gethostbyname('example.com')")),
        ("urllib", format!("__import__('urllib.request').request.urlopen('http://127.0.0.1:{port}/', timeout=1).read()")),
        ("http_client", format!("__import__('http.client').client.HTTPConnection('127.0.0.1', {port}, timeout=1).request('GET', '/')")),
        ("socketpair", format!("{socket}.socketpair()")),
    ];
    all_blocked(&client, "python_sockets_dns_urllib", Layer::Wasi, py_probes(&probes), &probes).await;

    let url = format!("http://127.0.0.1:{port}/");
    let probes = [
        ("fetch", format!("fetch('{url}')")),
        ("xhr", "new XMLHttpRequest()".to_string()),
        ("websocket", format!("new WebSocket('ws://127.0.0.1:{port}/')")),
        ("std_urlGet", format!("std.urlGet('{url}')")),
    ];
    all_blocked(&client, "javascript_fetch_and_sockets", Layer::Wasi, js_probes(&probes), &probes).await;

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(listener.accept().is_err(), "a guest connected to a host port");
}

#[tokio::test]
async fn processes_and_threads_cannot_be_started() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let os = "__import__('os')";
    let probes = [
        ("subprocess", "__import__('subprocess').run(['/bin/sh', '-c', 'id'])".to_string()),
        ("os_system", format!("{os}.system('id')")),
        ("fork", format!("{os}.fork()")),
        ("execv", format!("{os}.execv('/bin/sh', ['sh'])")),
        ("posix_spawn", format!("{os}.posix_spawn('/bin/sh', ['sh'], {{}})")),
        ("popen", format!("{os}.popen('id').read() or None")),
        ("multiprocessing", "__import__('multiprocessing').Process(target=print).start()".to_string()),
        ("thread", "__import__('threading').Thread(target=print).start()".to_string()),
        ("raw_thread", "__import__('_thread').start_new_thread(print, ())".to_string()),
        ("ctypes_libc", "__import__('ctypes').CDLL('libc.so.6')".to_string()),
    ];
    all_blocked(&client, "python_processes_and_threads", Layer::Wasi, py_probes(&probes), &probes).await;

    let probes = [
        ("exec", "os.exec(['/bin/sh', '-c', 'id'])"),
        ("worker", "new os.Worker('x.js')"),
        ("popen", "std.popen('id', 'r')"),
        ("kill", "os.kill(1, 9)"),
    ];
    all_blocked(&client, "javascript_processes_and_workers", Layer::Wasi, js_probes(&probes), &probes).await;
}
