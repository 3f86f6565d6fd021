//! Traces: one span per MCP request, continuing the caller's trace, and child spans for the
//! stages of a guest call (admission wait, audit writes, the run on an executor with the phases
//! the executor timed, artifact retention), exported as OTLP.
//!
//! Owns the tracer provider and its exporters ([`file`]: OTLP-JSON lines with size rotation,
//! for a Collector to read; [`collector`]: OTLP over HTTP to a collector the operator names),
//! the per-call [`Trace`] handle, and reading the caller's context ([`context`]). Spans use the
//! names and attributes of OpenTelemetry's MCP semantic conventions for requests and
//! `warden.*` names for warden's own stages.
//!
//! Not owned here: logs (`--log-format`, in `cli`), metrics ([`crate::metrics`]), the audit
//! log (which records a call's trace id, see [`Trace::trace_id`]). Nothing here holds code or
//! output unless the call's profile records code.

pub mod collector;
pub mod context;
pub mod file;

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider, SpanData, SpanExporter, Tracer,
};
use prometheus_client::metrics::counter::Counter;

pub use context::Parent;

/// Spans a batch exporter queues before it drops new ones: what a stalled collector or disk can
/// cost in memory, bounded.
pub const MAX_QUEUED_SPANS: usize = 4096;

/// Longest string attribute value; longer ones are cut (at a character boundary).
pub const MAX_ATTRIBUTE_BYTES: usize = 16 << 10;

/// Where spans go: set by the operator on the server, never by a profile.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// OTLP-JSON lines, rotated at `file_max_bytes`.
    pub file: Option<file::FileSettings>,
    /// OTLP over HTTP to this collector.
    pub collector: Option<collector::Collector>,
}

impl Settings {
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.collector.is_some()
    }
}

/// The server's tracer, or nothing when no exporter is configured (then [`Trace`]s still carry
/// the caller's trace id to the audit log, and record no spans).
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    tracer: Option<Tracer>,
    failures: Failures,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("enabled", &self.tracer.is_some()).finish()
    }
}

impl Telemetry {
    pub fn off() -> Telemetry {
        Telemetry::default()
    }

    /// Starts exporting to what `settings` name. `file` is the trace file opened before
    /// confinement; `runtime` runs the collector's HTTP client. Starts the batch exporters'
    /// threads, so call it after Landlock (threads inherit it), before or after seccomp.
    pub fn start(settings: &Settings, file: Option<file::TraceFile>, runtime: &tokio::runtime::Handle) -> anyhow::Result<Telemetry> {
        if !settings.enabled() {
            return Ok(Telemetry::off());
        }
        let resource = Resource::builder()
            .with_service_name("warden")
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
            ])
            .build();
        let batch =
            || BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUED_SPANS).with_scheduled_delay(Duration::from_millis(500)).build();
        let failures = Failures::default();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(f) = file {
            let exporter = Counted { inner: f.exporter(), name: "file", failures: failures.clone() };
            builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch()).build());
        }
        if let Some(c) = &settings.collector {
            let exporter = Counted { inner: c.exporter(runtime.clone())?, name: "collector", failures: failures.clone() };
            builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch()).build());
        }
        let provider = builder.build();
        let tracer = provider.tracer("warden");
        Ok(Telemetry { provider: Some(provider), tracer: Some(tracer), failures })
    }

    /// Counts failed exports in `counter` too (the `warden_trace_export_failures_total` metric).
    pub fn count_failures_in(&self, counter: Counter) {
        let _ = self.failures.counter.set(counter);
    }

    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts the span of one MCP request (kind SERVER), a child of the caller's context.
    /// Without exporters no span is made, but the trace still has an id (the caller's, or a new
    /// one), so that the audit lines of one call (its execution, its task) share it.
    pub fn request(&self, name: String, parent: &Parent, attributes: Vec<KeyValue>) -> Trace {
        let Some(tracer) = &self.tracer else {
            if parent.cx.span().span_context().is_valid() {
                return Trace { tracer: None, cx: parent.cx.clone() };
            }
            let ids = RandomIdGenerator::default();
            let sc = SpanContext::new(ids.new_trace_id(), ids.new_span_id(), TraceFlags::default(), false, TraceState::default());
            return Trace { tracer: None, cx: Context::new().with_remote_span_context(sc) };
        };
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .with_links(parent.links())
            .start_with_context(tracer, &parent.cx);
        Trace { tracer: Some(tracer.clone()), cx: parent.cx.with_span(span) }
    }

    /// Exports what is queued and stops the exporters (at shutdown; later calls do nothing).
    /// Waits up to 5 s on a blocking thread: the collector's last export runs on the async
    /// runtime, which a blocked worker could starve.
    pub async fn shutdown(&self) {
        let Some(p) = self.provider.clone() else { return };
        let done = tokio::task::spawn_blocking(move || p.shutdown_with_timeout(Duration::from_secs(5))).await;
        match done {
            Ok(Ok(()) | Err(OTelSdkError::AlreadyShutdown)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces at shutdown"),
            Err(e) => tracing::warn!(error = %e, "flushing traces at shutdown"),
        }
    }
}

/// One call's place in its trace: the span of its request, under which its stages are recorded.
/// Cheap to clone. [`Trace::none`] records nothing (for `warden exec` and benchmarks).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    tracer: Option<Tracer>,
    cx: Context,
}

impl Trace {
    pub fn none() -> Trace {
        Trace::default()
    }

    /// The trace this call belongs to (32 hex digits): the caller's, continued, or a new one;
    /// `None` only for [`Trace::none`] (`warden exec`, benchmarks).
    pub fn trace_id(&self) -> Option<String> {
        let span = self.cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// Whether spans under this trace are recorded (and attributes worth computing): a tracer,
    /// and a sampled context. (Not the span's own `is_recording`: a stage recorded after the
    /// fact has ended already, and its sub-stages still count.)
    pub fn recording(&self) -> bool {
        self.tracer.is_some() && self.cx.span().span_context().is_sampled()
    }

    /// Sets an attribute on this trace's current span, if it is still recording.
    pub fn set(&self, attribute: KeyValue) {
        if self.tracer.is_some() {
            self.cx.span().set_attribute(attribute);
        }
    }

    /// Records a finished stage, from `start` to `end`, as a child of this trace's span; the
    /// returned trace is that stage's, for stages within it.
    pub fn record(&self, name: impl Into<Cow<'static, str>>, start: Instant, end: Instant, attributes: Vec<KeyValue>) -> Trace {
        let Some(tracer) = &self.tracer else {
            return self.clone();
        };
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall(start))
            .with_attributes(attributes)
            .start_with_context(tracer, &self.cx);
        span.end_with_timestamp(wall(end.max(start)));
        Trace { tracer: Some(tracer.clone()), cx: self.cx.with_span(span) }
    }

    /// Records a stage that runs from now until `f` returns.
    pub fn time<R>(&self, name: &'static str, attributes: Vec<KeyValue>, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        self.record(name, start, Instant::now(), attributes);
        r
    }

    /// Ends this trace's span, as failed with `error` (its `error.type` and message) if given.
    pub fn end(&self, error: Option<(Cow<'static, str>, String)>) {
        if self.tracer.is_none() {
            return;
        }
        let span = self.cx.span();
        if let Some((kind, message)) = error {
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(bounded(message)));
        }
        span.end();
    }
}

/// How often a failing exporter is logged, at most.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Failed exports: counted (once a metric is attached) and logged at most once a minute, so a
/// collector that is down is visible without flooding the log.
#[derive(Clone, Debug, Default)]
struct Failures {
    counter: Arc<OnceLock<Counter>>,
    last_logged: Arc<Mutex<Option<Instant>>>,
}

impl Failures {
    fn record(&self, exporter: &str, error: &OTelSdkError) {
        if let Some(c) = self.counter.get() {
            c.inc();
        }
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(exporter, %error, "exporting trace spans failed; their batch is dropped (logged at most once a minute)");
        }
    }
}

/// An exporter whose failures are counted and logged.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    name: &'static str,
    failures: Failures,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let exported = self.inner.export(batch);
        async move {
            let result = exported.await;
            if let Err(e) = &result {
                self.failures.record(self.name, e);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `s`, cut to [`MAX_ATTRIBUTE_BYTES`] at a character boundary.
pub fn bounded(s: impl Into<String>) -> String {
    let mut s = s.into();
    if s.len() > MAX_ATTRIBUTE_BYTES {
        let mut cut = MAX_ATTRIBUTE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The wall-clock time of a monotonic instant (spans carry wall-clock times).
fn wall(t: Instant) -> SystemTime {
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    match now.checked_duration_since(t) {
        Some(ago) => wall_now - ago,
        None => wall_now + t.duration_since(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_exporters_a_trace_keeps_the_callers_trace_id_and_records_nothing() {
        let parent = Parent::from_meta_and_headers(
            &serde_json::json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
            None,
        );
        let trace = Telemetry::off().request("tools/call execute_code".into(), &parent, Vec::new());
        assert_eq!(trace.trace_id().as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!trace.recording());
        let fresh = Telemetry::off().request("tools/list".into(), &Parent::default(), Vec::new());
        let id = fresh.trace_id().expect("a call without context still gets a trace id, for its audit lines");
        assert!(id.len() == 32 && id != "0".repeat(32) && !fresh.recording());
        assert_eq!(Trace::none().trace_id(), None);
    }

    #[test]
    fn long_attributes_are_cut_at_a_character_boundary() {
        let s = bounded("é".repeat(MAX_ATTRIBUTE_BYTES));
        assert!(s.len() <= MAX_ATTRIBUTE_BYTES && s.len() >= MAX_ATTRIBUTE_BYTES - 1);
        assert_eq!(bounded("short"), "short");
    }
}
