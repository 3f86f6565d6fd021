//! Server metrics, exposed at `/metrics` in the OpenMetrics text format Prometheus scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecLabels {
    pub language: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LanguageLabel {
    pub language: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    pub language: String,
    /// `prepared` (claimed from the executor's pool) or `new` (started for the call).
    pub guest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabel {
    pub tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HardeningLabels {
    /// `mode`, `landlock` or `seccomp`.
    pub layer: String,
    /// The layer's state in the words `warden doctor` and `/healthz` use.
    pub state: String,
}

/// Every metric the server exports, by Prometheus conventions: counters end in `_total`, units
/// are base units named in the metric (`_seconds`), label values come from fixed sets or from
/// names the operator configured (languages, loaded tools, refusal reasons in the code), never
/// from what a caller sends.
pub struct Metrics {
    registry: Registry,
    pub executions: Family<ExecLabels, Counter>,
    pub duration: Family<LanguageLabel, Histogram>,
    pub fuel: Family<LanguageLabel, Histogram>,
    /// Guests that began a call's run: prepared ahead, or started for it.
    pub guest_starts: Family<StartLabels, Counter>,
    /// Package tool calls, apart from code executions.
    pub tool_calls: Family<ToolLabels, Counter>,
    pub tool_duration: Family<ToolLabel, Histogram>,
    pub active_executions: Gauge,
    pub active_sessions: Gauge,
    /// Every refusal, by reason: authentication and policy denials, rate limits, busy, shutdown.
    pub refusals: Family<ReasonLabel, Counter>,
    /// How long admitted calls waited for an execution slot.
    pub queue_wait: Histogram,
    /// Audit lines that could not be written (each refused the call that needed it).
    pub audit_write_failures: Counter,
    /// Batches of trace spans an exporter failed to write or send (their spans are lost).
    pub trace_export_failures: Counter,
    /// Executor processes that ended unexpectedly and were replaced.
    pub executor_restarts: Counter,
    /// The front's confinement: one series per layer, value 1.
    hardening: Family<HardeningLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds-valued histogram buckets from 1 ms to about 2 min.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION")), ("wasmtime", crate::engine::wasmtime_version())]);
        let executions = Family::<ExecLabels, Counter>::default();
        let duration = Family::<LanguageLabel, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        let fuel = Family::<LanguageLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1e5, 10.0, 9))) as fn() -> Histogram,
        );
        let guest_starts = Family::<StartLabels, Counter>::default();
        let tool_calls = Family::<ToolLabels, Counter>::default();
        let tool_duration = Family::<ToolLabel, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        let active_executions = Gauge::default();
        let active_sessions = Gauge::default();
        let refusals = Family::<ReasonLabel, Counter>::default();
        let queue_wait = Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        let audit_write_failures = Counter::default();
        let trace_export_failures = Counter::default();
        let executor_restarts = Counter::default();
        let hardening = Family::<HardeningLabels, Gauge>::default();
        registry.register("build", "The running build: warden and Wasmtime versions", build);
        registry.register("executions", "Code executions by language and outcome", executions.clone());
        registry.register("execution_duration_seconds", "Wall-clock time of code executions", duration.clone());
        registry.register("execution_fuel", "Fuel (instructions) used by code executions", fuel.clone());
        registry.register(
            "guest_starts",
            "Guests that began a call, by language: prepared ahead and claimed, or new",
            guest_starts.clone(),
        );
        registry.register("tool_calls", "Package tool calls by tool and outcome", tool_calls.clone());
        registry.register("tool_call_duration_seconds", "Wall-clock time of package tool calls", tool_duration.clone());
        registry.register("executions_active", "Executions running now", active_executions.clone());
        registry.register("sessions_active", "Sessions open now", active_sessions.clone());
        registry.register(
            "refusals",
            "Requests refused, by reason (authentication, policy, rate limits, busy, shutting down)",
            refusals.clone(),
        );
        registry.register("queue_wait_seconds", "Time admitted calls waited for an execution slot", queue_wait.clone());
        registry.register("audit_write_failures", "Audit lines that could not be written", audit_write_failures.clone());
        registry.register(
            "trace_export_failures",
            "Batches of trace spans an exporter failed to write or send",
            trace_export_failures.clone(),
        );
        registry.register("executor_restarts", "Executor processes that ended unexpectedly and were replaced", executor_restarts.clone());
        registry.register("hardening", "The front's confinement, one series per layer with its state (value 1)", hardening.clone());
        Metrics {
            registry,
            executions,
            duration,
            fuel,
            guest_starts,
            tool_calls,
            tool_duration,
            active_executions,
            active_sessions,
            refusals,
            queue_wait,
            audit_write_failures,
            trace_export_failures,
            executor_restarts,
            hardening,
        }
    }

    pub fn record_execution(&self, language: &str, outcome: &str, duration_ms: u64, fuel: u64) {
        self.executions.get_or_create(&ExecLabels { language: language.into(), outcome: outcome.into() }).inc();
        let l = LanguageLabel { language: language.into() };
        self.duration.get_or_create(&l).observe(duration_ms as f64 / 1000.0);
        self.fuel.get_or_create(&l).observe(fuel as f64);
    }

    /// Counts the guest a run began in, if it began in one (a start or claim among `phases`).
    pub fn record_guest_start(&self, language: &str, phases: &[crate::sandbox::PhaseTime]) {
        let guest = phases.iter().find_map(|p| match p.phase {
            crate::sandbox::Phase::GuestClaim => Some("prepared"),
            crate::sandbox::Phase::GuestStart => Some("new"),
            _ => None,
        });
        if let Some(guest) = guest {
            self.guest_starts.get_or_create(&StartLabels { language: language.into(), guest: guest.into() }).inc();
        }
    }

    pub fn record_tool_call(&self, tool: &str, outcome: &str, duration_ms: u64) {
        self.tool_calls.get_or_create(&ToolLabels { tool: tool.into(), outcome: outcome.into() }).inc();
        self.tool_duration.get_or_create(&ToolLabel { tool: tool.into() }).observe(duration_ms as f64 / 1000.0);
    }

    /// Counts one refusal. `reason` is one of the code's fixed reasons.
    pub fn refuse(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// Records the front's confinement (replacing what was recorded before).
    pub fn set_hardening(&self, report: &crate::harden::Report) {
        self.hardening.clear();
        for (layer, state) in [
            ("mode", report.mode.to_string()),
            ("landlock", report.landlock.status.to_string()),
            ("seccomp", report.seccomp.status.to_string()),
        ] {
            self.hardening.get_or_create(&HardeningLabels { layer: layer.into(), state }).set(1);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_counted_by_language_and_outcome() {
        let m = Metrics::new();
        m.record_execution("python", "ok", 12, 1000);
        m.record_execution("python", "ok", 12, 1000);
        m.refuse("unauthenticated");
        m.record_tool_call("echo", "ok", 3);
        let text = m.render();
        assert!(text.contains(r#"warden_executions_total{language="python",outcome="ok"} 2"#), "{text}");
        assert!(text.contains(r#"warden_refusals_total{reason="unauthenticated"} 1"#), "{text}");
        assert!(text.contains(r#"warden_tool_calls_total{tool="echo",outcome="ok"} 1"#), "{text}");
        assert!(!text.contains("tool:"), "tools are not languages: {text}");
        assert!(text.contains(&format!(r#"warden_build_info{{version="{}""#, env!("CARGO_PKG_VERSION"))), "{text}");
        assert!(text.contains("warden_execution_duration_seconds_bucket"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
