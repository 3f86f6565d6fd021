//! Fairness between principals: one principal kept at every limit it has — execution slots,
//! session slots, retained artifacts, artifact reads, nested calls through its rate — for the
//! whole run, while another principal's calls keep succeeding within a stated latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{ReadResourceRequestParams, ResourceContents};
use serde_json::{Value, json};

use crate::harness::{Client, ServerFiles, call, connect_http, exec, start_tenants};
use crate::{Layer, case};

/// The victim's p95 latency bound while the attacker saturates its share. Generous: on two
/// cores the attacker's busy guests take CPU time from everything else, which the bound
/// allows; a victim queued behind the attacker's slots would wait for their 4 s calls instead.
const VICTIM_P95: Duration = Duration::from_millis(2500);
/// How long the attacker is kept saturated while the victim works.
const RUN: Duration = Duration::from_secs(15);

/// The first resource link of a result.
fn first_link(r: &rmcp::model::CallToolResult) -> String {
    r.content.iter().find_map(|c| c.as_resource_link().map(|l| l.uri.clone())).unwrap_or_else(|| panic!("no resource link in {r:?}"))
}

async fn read(client: &Client, uri: &str) -> Result<usize, String> {
    match client.read_resource(ReadResourceRequestParams::new(uri.to_string())).await {
        Ok(r) => Ok(r
            .contents
            .iter()
            .map(|c| match c {
                ResourceContents::TextResourceContents { text, .. } => text.len(),
                ResourceContents::BlobResourceContents { blob, .. } => blob.len(),
                other => panic!("unexpected resource contents {other:?}"),
            })
            .sum()),
        Err(e) => Err(e.to_string()),
    }
}

/// Keeps `n` copies of `work` running until `stop`.
fn saturate<F, Fut>(n: usize, stop: &Arc<AtomicBool>, done: &Arc<AtomicUsize>, work: F) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    (0..n)
        .map(|_| {
            let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    work().await;
                    done.fetch_add(1, Ordering::Relaxed);
                    // Refusals come back at once; the pause keeps this test's own client from
                    // taking the cores the server under test needs.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_principal_cannot_starve_another() {
    let files = ServerFiles::new();
    let policy = files.policy(&[]);
    let server = start_tenants(&files, &policy, &["attacker", "victim"]).await;
    let url = server.url.clone();
    let victim = connect_http(&url, Some("token-victim")).await;

    // Before the attack: the victim keeps an artifact, which the attacker must not evict.
    let (r, _) = exec(&victim, json!({"language": "python", "code": "open('keep.txt', 'w').write('mine')"})).await;
    let kept = first_link(&r);

    case("attacker_saturates_every_pool", Layer::Policy);
    // The attacker runs on its own thread and runtime, so the cost of its client (parsing 8 MiB
    // reads) does not land on the victim's client; both share the machine with the server.
    let stop = Arc::new(AtomicBool::new(false));
    let attacks = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let attacker = {
        let (stop, attacks, url) = (stop.clone(), attacks.clone(), url.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let conn = Arc::new(connect_http(&url, Some("token-attacker")).await);
                // Retained artifacts, and reads of the largest artifact that may be read.
                let (r, s) = exec(&conn, json!({"language": "python", "code": "open('big.bin', 'wb').write(b'x' * (8 << 20))"})).await;
                assert_eq!(s["outcome"], "ok", "{s}");
                let big = first_link(&r);
                let mut tasks = Vec::new();
                // Execution slots: more long CPU-bound calls than the profile has slots.
                tasks.extend(saturate(6, &stop, &attacks, {
                    let conn = conn.clone();
                    move || {
                        let conn = conn.clone();
                        async move {
                            let _ = call(
                                &conn,
                                "execute_code",
                                json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 4000}}),
                            )
                            .await;
                        }
                    }
                }));
                // Session slots, and session churn.
                tasks.extend(saturate(2, &stop, &attacks, {
                    let conn = conn.clone();
                    move || {
                        let conn = conn.clone();
                        async move {
                            let _ = call(&conn, "create_session", json!({"language": "python"})).await;
                        }
                    }
                }));
                tasks.extend(saturate(4, &stop, &attacks, {
                    let (conn, big) = (conn.clone(), big.clone());
                    move || {
                        let (conn, big) = (conn.clone(), big.clone());
                        async move {
                            let _ = read(&conn, &big).await;
                            let _ =
                                call(&conn, "execute_code", json!({"language": "python", "code": "open('a.txt', 'w').write('x')"})).await;
                        }
                    }
                }));
                ready_tx.send(()).unwrap();
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(60)).expect("the attacker started");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The victim, meanwhile: calls, a session, artifacts and reads all succeed.
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut sessions = Vec::new();
    while started.elapsed() < RUN {
        let t = Instant::now();
        let (_, s) = exec(&victim, json!({"language": "python", "code": "print(6 * 7)"})).await;
        latencies.push(t.elapsed());
        assert_eq!(s["stdout"], "42\n", "the victim's call failed under attack: {s}");
        if sessions.len() < 2 {
            let r = call(&victim, "create_session", json!({"language": "python"})).await.expect("create_session");
            let s: Value = r.structured_content.clone().unwrap_or_default();
            let id = s["session_id"].as_str().unwrap_or_else(|| panic!("the victim could not open a session under attack: {r:?}"));
            sessions.push(id.to_string());
        }
        // Artifacts and reads, within the victim's own retention share (its own newer calls
        // would otherwise push out the artifact kept above, by design).
        if latencies.len() > 2 * 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let t = Instant::now();
        let (r, s) = exec(&victim, json!({"language": "python", "code": "open('out.txt', 'w').write('victim')"})).await;
        assert_eq!(s["outcome"], "ok", "{s}");
        let n = read(&victim, &first_link(&r)).await.unwrap_or_else(|e| panic!("the victim's artifact read failed under attack: {e}"));
        assert_eq!(n, "victim".len());
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    latencies.sort();
    let p95 = latencies[(latencies.len() - 1) * 95 / 100];
    let p50 = latencies[latencies.len() / 2];
    eprintln!(
        "victim under attack: {} operations, p50 {p50:?}, p95 {p95:?}; attacker made {} attempts",
        latencies.len(),
        attacks.load(Ordering::Relaxed)
    );
    assert!(p95 < VICTIM_P95, "the victim's p95 latency was {p95:?} under attack (bound {VICTIM_P95:?})");
    assert!(attacks.load(Ordering::Relaxed) > 20, "the attacker was not kept busy");
    assert_eq!(read(&victim, &kept).await, Ok(4), "the attacker evicted the victim's artifact");
    attacker.join().expect("attacker thread");

    case("oversized_artifact_read", Layer::Policy);
    let (r, _) = exec(&victim, json!({"language": "python", "code": "open('huge.bin', 'wb').write(b'x' * ((8 << 20) + 1))"})).await;
    let e = read(&victim, &first_link(&r)).await.expect_err("a read over the cap is refused");
    assert!(e.contains("MiB resources/read returns") && e.contains("smaller files"), "{e}");
    let (_, s) = exec(&victim, json!({"language": "python", "code": "print(6 * 7)"})).await;
    assert_eq!(s["stdout"], "42\n");
}
