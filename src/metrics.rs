//! Server metrics, exposed at `/metrics` in the OpenMetrics text format Prometheus scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub executions: Family<ExecLabels, Counter>,
    pub duration: Family<LanguageLabel, Histogram>,
    pub fuel: Family<LanguageLabel, Histogram>,
    pub active_executions: Gauge,
    pub active_sessions: Gauge,
    pub denials: Family<ReasonLabel, Counter>,
    pub rate_limited: Counter,
    pub busy: Counter,
    /// Executor processes that ended unexpectedly and were replaced.
    pub executor_restarts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let executions = Family::<ExecLabels, Counter>::default();
        let duration = Family::<LanguageLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 18))) as fn() -> Histogram,
        );
        let fuel = Family::<LanguageLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1e5, 10.0, 9))) as fn() -> Histogram,
        );
        let active_executions = Gauge::default();
        let active_sessions = Gauge::default();
        let denials = Family::<ReasonLabel, Counter>::default();
        let rate_limited = Counter::default();
        let busy = Counter::default();
        let executor_restarts = Counter::default();
        registry.register("executions", "Executions by language and outcome", executions.clone());
        registry.register("execution_duration_seconds", "Wall-clock time of executions", duration.clone());
        registry.register("execution_fuel", "Fuel (instructions) used by executions", fuel.clone());
        registry.register("executions_active", "Executions running now", active_executions.clone());
        registry.register("sessions_active", "Sessions open now", active_sessions.clone());
        registry.register("denials", "Requests refused by authentication or policy, by reason", denials.clone());
        registry.register("rate_limited", "Calls refused by per-principal rate or concurrency limits", rate_limited.clone());
        registry.register("busy", "Calls refused because every execution slot stayed taken", busy.clone());
        registry.register("executor_restarts", "Executor processes that ended unexpectedly and were replaced", executor_restarts.clone());
        Metrics { registry, executions, duration, fuel, active_executions, active_sessions, denials, rate_limited, busy, executor_restarts }
    }

    pub fn record_execution(&self, language: &str, outcome: &str, duration_ms: u64, fuel: u64) {
        self.executions.get_or_create(&ExecLabels { language: language.into(), outcome: outcome.into() }).inc();
        let l = LanguageLabel { language: language.into() };
        self.duration.get_or_create(&l).observe(duration_ms as f64 / 1000.0);
        self.fuel.get_or_create(&l).observe(fuel as f64);
    }

    pub fn deny(&self, reason: &str) {
        self.denials.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
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
        m.deny("unauthenticated");
        let text = m.render();
        assert!(text.contains(r#"warden_executions_total{language="python",outcome="ok"} 2"#), "{text}");
        assert!(text.contains(r#"warden_denials_total{reason="unauthenticated"} 1"#), "{text}");
        assert!(text.contains("warden_execution_duration_seconds_bucket"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
