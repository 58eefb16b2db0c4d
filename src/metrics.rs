//! `GET /metrics`: what this instance has done since it started, in the
//! Prometheus (OpenMetrics) text format, with the `prometheus-client` crate.
//!
//! Counters live in the process: a successor starts from zero, as any
//! restarted Prometheus target does; the history of upgrades that outlives
//! instances is `/status`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::events::{Outcome, UpdateEnd};

/// Milliseconds spent in each step of an upgrade.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub resolve_ms: u128,
    pub pull_ms: u128,
    pub start_ms: u128,
    pub health_ms: u128,
    pub takeover_ms: u128,
    pub total_ms: u128,
}

/// One label.
type Label = [(&'static str, String); 1];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric this instance exports.
pub struct Metrics {
    registry: Registry,
    upgrades: Family<Label, Counter>,
    durations: Family<Label, Histogram, fn() -> Histogram>,
    rollbacks: Counter,
    updates: Family<Label, Counter>,
    http: Family<Label, Counter>,
    bakes: Family<Label, Counter>,
    /// Public answers (those on the live socket), and the 5xx among them:
    /// what an elder baking this instance judges it by.
    public: AtomicU64,
    public_5xx: AtomicU64,
    /// The watch loop's last check: when (seconds since the epoch), and whether it worked.
    watch_time: Gauge,
    watch_ok: Gauge,
    /// Connections this instance relays to blue-green apps, set as `/metrics` is read.
    app_connections: Gauge,
    started: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Buckets from 50 ms to about 102 s: a pull of a large image is the long end.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let upgrades = Family::<Label, Counter>::default();
        let durations = Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let rollbacks = Counter::default();
        let updates = Family::<Label, Counter>::default();
        let http = Family::<Label, Counter>::default();
        let bakes = Family::<Label, Counter>::default();
        let build = Family::<Label, Gauge>::default();
        build
            .get_or_create(&[("version", crate::build_version().to_string())])
            .set(1);
        registry.register(
            "selfup_upgrades",
            "Finished upgrades (and rollbacks) by outcome: upgraded, already_there, failed",
            upgrades.clone(),
        );
        registry.register(
            "selfup_upgrade_duration_seconds",
            "How long each phase of an upgrade took (resolve, pull, start, health, takeover), and the whole (total)",
            durations.clone(),
        );
        registry.register(
            "selfup_rollbacks",
            "Rollbacks to the previous version that took effect",
            rollbacks.clone(),
        );
        registry.register(
            "selfup_companion_updates",
            "Finished companion updates of other containers by outcome: updated, unchanged, rolled_back, failed",
            updates.clone(),
        );
        registry.register(
            "selfup_http_responses",
            "HTTP answers by status class (2xx, 3xx, 4xx, 5xx)",
            http.clone(),
        );
        registry.register(
            "selfup_bakes",
            "Bakes this instance ran as the elder, by outcome: promoted, rolled_back",
            bakes.clone(),
        );
        registry.register("selfup_build_info", "The version this instance runs", build);
        let (watch_time, watch_ok) = (Gauge::default(), Gauge::default());
        registry.register(
            "selfup_watch_last_check_timestamp_seconds",
            "When the watch loop last asked the registry (0: not yet, or no watch loop)",
            watch_time.clone(),
        );
        registry.register(
            "selfup_watch_last_check_success",
            "Whether the watch loop's last check worked (1) or failed (0)",
            watch_ok.clone(),
        );
        let app_connections = Gauge::default();
        registry.register(
            "selfup_app_connections",
            "Connections this instance relays to blue-green apps now (companion mode; an elder finishes these before it exits)",
            app_connections.clone(),
        );
        Metrics {
            registry,
            upgrades,
            durations,
            rollbacks,
            updates,
            http,
            bakes,
            public: AtomicU64::new(0),
            public_5xx: AtomicU64::new(0),
            watch_time,
            watch_ok,
            app_connections,
            started: Instant::now(),
        }
    }
}

impl Metrics {
    /// Counts a finished upgrade with its outcome and whole duration.
    pub fn upgrade_finished(&self, outcome: Outcome, rollback: bool, duration_ms: u128) {
        self.upgrades.get_or_create(&[("outcome", outcome.to_string())]).inc();
        if rollback && outcome == Outcome::Upgraded {
            self.rollbacks.inc();
        }
        self.phase("total", duration_ms);
    }

    /// The phases of an upgrade that went through.
    pub fn upgrade_phases(&self, timings: &Timings) {
        for (phase, ms) in [
            ("resolve", timings.resolve_ms),
            ("pull", timings.pull_ms),
            ("start", timings.start_ms),
            ("health", timings.health_ms),
            ("takeover", timings.takeover_ms),
        ] {
            self.phase(phase, ms);
        }
    }

    fn phase(&self, phase: &'static str, ms: u128) {
        self.durations
            .get_or_create(&[("phase", phase.to_string())])
            .observe(ms as f64 / 1000.0);
    }

    /// Counts a finished companion update.
    pub fn update_finished(&self, outcome: UpdateEnd) {
        self.updates.get_or_create(&[("outcome", outcome.to_string())]).inc();
    }

    /// Counts one HTTP answer.
    pub fn answered(&self, status: StatusCode) {
        let class = format!("{}xx", status.as_u16() / 100);
        self.http.get_or_create(&[("class", class)]).inc();
    }

    /// Counts one public answer (on the live socket).
    pub fn public_answered(&self, status: StatusCode) {
        self.public.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.public_5xx.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This instance's public answers since it started, and the 5xx among them.
    pub fn public_answers(&self) -> (u64, u64) {
        (
            self.public.load(Ordering::Relaxed),
            self.public_5xx.load(Ordering::Relaxed),
        )
    }

    /// Counts a finished bake.
    pub fn bake_finished(&self, outcome: crate::events::BakeOutcome) {
        self.bakes
            .get_or_create(&[("outcome", outcome.as_str().to_string())])
            .inc();
    }

    /// Records a check of the watch loop, now.
    pub fn watch_checked(&self, ok: bool) {
        self.watch_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()) as i64,
        );
        self.watch_ok.set(i64::from(ok));
    }

    /// How many connections this instance relays to blue-green apps now.
    pub fn app_connections(&self, open: usize) {
        self.app_connections.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Seconds since this instance started.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text`, checking every line
    /// on the way: a comment (`# HELP`, `# TYPE`, `# EOF`) or `name{k="v",..} value`.
    pub(crate) fn sample(text: &str, wanted: &str) -> Option<f64> {
        let mut found = None;
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                assert!(
                    ["HELP ", "TYPE ", "UNIT "].iter().any(|p| comment.starts_with(p)) || comment == "EOF",
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
            let name_end = series.find('{').unwrap_or(series.len());
            assert!(
                series[..name_end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "{line}");
            }
            if series == wanted {
                found = Some(value);
            }
        }
        assert_eq!(text.lines().last(), Some("# EOF"));
        found
    }

    #[test]
    fn every_metric_renders_with_its_labels() {
        let m = Metrics::default();
        m.upgrade_finished(Outcome::Failed, false, 1200);
        m.upgrade_finished(Outcome::Upgraded, true, 400);
        m.upgrade_phases(&Timings {
            resolve_ms: 2,
            pull_ms: 30,
            start_ms: 200,
            health_ms: 40,
            takeover_ms: 250,
            total_ms: 522,
        });
        m.update_finished(UpdateEnd::RolledBack);
        m.answered(StatusCode::OK);
        m.answered(StatusCode::NOT_FOUND);
        m.answered(StatusCode::CONFLICT);
        m.public_answered(StatusCode::OK);
        m.public_answered(StatusCode::BAD_GATEWAY);
        assert_eq!(m.public_answers(), (2, 1));
        m.bake_finished(crate::events::BakeOutcome::RolledBack);
        assert_eq!(
            sample(&m.render(), "selfup_watch_last_check_timestamp_seconds"),
            Some(0.0)
        );
        m.watch_checked(false);
        m.app_connections(3);
        let text = m.render();
        assert_eq!(sample(&text, "selfup_app_connections"), Some(3.0));
        assert!(sample(&text, "selfup_watch_last_check_timestamp_seconds").unwrap() >= 1.7e9);
        assert_eq!(sample(&text, "selfup_watch_last_check_success"), Some(0.0));
        assert_eq!(sample(&text, r#"selfup_upgrades_total{outcome="failed"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"selfup_upgrades_total{outcome="upgraded"}"#), Some(1.0));
        assert_eq!(sample(&text, "selfup_rollbacks_total"), Some(1.0));
        assert_eq!(
            sample(&text, r#"selfup_companion_updates_total{outcome="rolled_back"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, r#"selfup_http_responses_total{class="4xx"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"selfup_bakes_total{outcome="rolled_back"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"selfup_http_responses_total{class="2xx"}"#), Some(1.0));
        let version = format!(r#"selfup_build_info{{version="{}"}}"#, crate::build_version());
        assert_eq!(sample(&text, &version), Some(1.0));
        assert_eq!(
            sample(&text, r#"selfup_upgrade_duration_seconds_count{phase="total"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"selfup_upgrade_duration_seconds_sum{phase="total"}"#),
            Some(1.6)
        );
        // 0.25 s of takeover falls in the 0.4 s bucket, not in the 0.2 s one.
        assert_eq!(
            sample(
                &text,
                r#"selfup_upgrade_duration_seconds_bucket{le="0.2",phase="takeover"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"selfup_upgrade_duration_seconds_bucket{le="0.4",phase="takeover"}"#
            ),
            Some(1.0)
        );
    }
}
