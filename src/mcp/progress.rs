//! Progress notifications for a running call, when the client's request carries a progress
//! token: the guest's new output as it is written, and a heartbeat while it writes nothing.
//!
//! Each notification's `progress` is the seconds since the call started and `total` its
//! deadline in seconds. A notification with new output has it in `message` (stdout's new text,
//! then stderr's) and, kept apart, in `_meta` under [`OUTPUT_META`]:
//! `{"stdout": "...", "stderr": "..."}`. A heartbeat's message is `running for N s` and it has
//! no output `_meta`. The chunks come in the order written, each stream at most
//! [`crate::channel::proto::OUTPUT_CHUNK_BYTES`] a notification and all of them within the
//! call's output caps; the final result still holds the whole (capped) output. A client that
//! reads the answer as one JSON document (HTTP with JSON responses) gets no notifications at
//! all, only the result.
//!
//! Owns the notification format. Does not own where the output comes from
//! ([`crate::executor::stream`]) or checking it ([`crate::service::executors`]).

use std::future::Future;
use std::time::{Duration, Instant};

use rmcp::RoleServer;
use rmcp::model::{MetaObject, NotificationMetaObject, ProgressNotificationParam, ProgressToken};
use rmcp::service::RequestContext;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{OutputChunk, OutputSink};

/// The `_meta` key of a notification's new output.
pub const OUTPUT_META: &str = "io.github.warden/output";

/// How often a call that writes nothing says it is still running.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Sends one request's progress notifications (nothing if it carries no progress token).
pub struct Notifier<'a> {
    ctx: &'a RequestContext<RoleServer>,
    token: Option<ProgressToken>,
    started: Instant,
    total: Duration,
    /// Everything passed on so far, when asked to keep it ([`Notifier::keeping`]).
    kept: Option<std::sync::Mutex<OutputChunk>>,
}

impl<'a> Notifier<'a> {
    /// For the request of `ctx`, whose call may run for `total`.
    pub fn new(ctx: &'a RequestContext<RoleServer>, total: Duration) -> Self {
        Notifier { ctx, token: ctx.meta.get_progress_token(), started: Instant::now(), total, kept: None }
    }

    /// Also keeps a copy of the output passed on (bounded, like the output, by the call's
    /// caps), for a call that may become a task: its first poll then starts from the start.
    pub fn keeping(mut self) -> Self {
        self.kept = Some(Default::default());
        self
    }

    /// The output passed on so far (empty unless [`Notifier::keeping`]).
    pub fn kept(self) -> OutputChunk {
        self.kept.map(|k| k.into_inner().unwrap_or_else(|e| e.into_inner())).unwrap_or_default()
    }

    async fn notify(&self, message: String, output: Option<OutputChunk>) {
        let Some(token) = &self.token else { return };
        let mut p = ProgressNotificationParam::new(token.clone(), self.started.elapsed().as_secs_f64())
            .with_total(self.total.as_secs_f64())
            .with_message(message);
        if let Some(chunk) = output {
            let mut meta = serde_json::Map::new();
            meta.insert(OUTPUT_META.into(), serde_json::json!({"stdout": chunk.stdout, "stderr": chunk.stderr}));
            p.meta = Some(NotificationMetaObject(MetaObject(meta)));
        }
        // A client gone or not reading is not the call's failure.
        let _ = self.ctx.peer.notify_progress(p).await;
    }

    /// Runs `work` to its end while passing on the output arriving on `chunks` and a heartbeat
    /// when there is none. Every chunk sent before `work` ended is passed on before this
    /// returns, so all of them precede the result. Dropping the returned future mid-way loses
    /// nothing: `work` and `chunks` are only borrowed.
    pub async fn follow<F: Future + Unpin>(&self, work: &mut F, chunks: &mut UnboundedReceiver<OutputChunk>) -> F::Output {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.tick().await;
        let mut quiet = true;
        loop {
            tokio::select! {
                out = &mut *work => {
                    while let Ok(chunk) = chunks.try_recv() {
                        self.output(chunk).await;
                    }
                    return out;
                }
                Some(chunk) = chunks.recv() => {
                    quiet = false;
                    self.output(chunk).await;
                }
                _ = tick.tick() => {
                    if quiet {
                        self.notify(format!("running for {:.1} s", self.started.elapsed().as_secs_f64()), None).await;
                    }
                    quiet = true;
                }
            }
        }
    }

    pub async fn started(&self) {
        self.notify("started".into(), None).await;
    }

    async fn output(&self, chunk: OutputChunk) {
        if let Some(kept) = &self.kept {
            let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
            k.stdout.push_str(&chunk.stdout);
            k.stderr.push_str(&chunk.stderr);
        }
        self.notify(format!("{}{}", chunk.stdout, chunk.stderr), Some(chunk)).await;
    }

    pub fn wants_progress(&self) -> bool {
        self.token.is_some()
    }
}

/// Runs the call `work` makes, given where to send its output, and notifies the client of its
/// progress if it asked (see [`Notifier::follow`]).
pub async fn with_progress<F, W>(ctx: &RequestContext<RoleServer>, total: Duration, work: W) -> F::Output
where
    W: FnOnce(Option<OutputSink>) -> F,
    F: Future,
{
    let notifier = Notifier::new(ctx, total);
    if !notifier.wants_progress() {
        return work(None).await;
    }
    let (sink, mut chunks) = unbounded_channel();
    notifier.started().await;
    let work = work(Some(sink));
    tokio::pin!(work);
    notifier.follow(&mut work, &mut chunks).await
}
