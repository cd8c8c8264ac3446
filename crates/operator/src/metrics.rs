//! Prometheus metrics of the operator (spec §6.4), in the OpenMetrics text format.
//!
//! One [`Metrics`] per process, shared as `Arc<Metrics>`. Handles are cheap atomics; the
//! credential age is computed at scrape time from the instant the credentials were last
//! written or loaded (so it reflects rotations, unlike the original which reset it to the
//! Secret's creation time every 10 s — connectivity defect 4).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use vworkspace_decide::cluster::ConnectivityMode;

/// `mode` label of the connectivity gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

/// Connectivity mode label values.
pub const MODE_PULL: &str = "pull";
pub const MODE_PUSH: &str = "push";
pub const MODE_GITOPS: &str = "gitops";

/// Labels of the reconcile run counter (controller-runtime's names, spec §6.4).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `applicationinstance`, `operation` or `cluster`.
    pub controller: String,
    /// `success` or `error`.
    pub result: String,
}

/// Labels of the reconcile error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    pub controller: String,
    /// Stage of the failure: `observe`, `apply`, `status`, `finalizer`, `invalid_spec`.
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 5 ms .. 60 s: most passes are a few API calls; registration and rotation call the
    // control plane.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    /// Reconcile passes by controller and result.
    pub reconcile_total: Family<ReconcileLabels, Counter>,
    /// Failed reconcile passes by controller and category.
    pub reconcile_errors_total: Family<ReconcileErrorLabels, Counter>,
    /// Reconcile pass duration by controller.
    pub reconcile_time_seconds: HistogramFamily<ControllerLabel>,
    /// Age of the oldest job of the last fetched batch; 0 after an empty fetch and after
    /// each succeeded job.
    pub pull_job_lag_seconds: Gauge<f64, AtomicU64>,
    /// 1 connected, 0 reconnecting, -1 disconnected.
    pub connectivity_state: Family<ModeLabel, Gauge>,
    /// Jobs finished with `succeeded`.
    pub applied_jobs_total: Counter,
    /// Jobs by terminal outcome (`succeeded`, `failed`, `noop`, `conflict`).
    pub job_results_total: Family<OutcomeLabel, Counter>,
    /// Events currently queued in the batcher.
    pub event_buffer_occupancy: Gauge,
    /// Events dropped because the buffer was full.
    pub dropped_events_total: Counter,
    /// Seconds from a job's `createdAt` to its accepted result.
    pub job_latency_seconds: Histogram,
    /// Poll answers' jobs that had no usable id, so could not be answered.
    pub malformed_jobs_total: Counter,
    /// Seconds job polling waits on a `429` `Retry-After` (capped); 0 when not throttled.
    pub poll_throttled_seconds: Gauge,
    credential_age_seconds: Gauge<f64, AtomicU64>,
    /// The process's connectivity mode: the gauge's only `mode` label value.
    mode: Mutex<ConnectivityMode>,
    /// Unix milliseconds of the last credential write/load; 0 = never.
    credentials_at_ms: AtomicI64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let pull_job_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let connectivity_state = Family::<ModeLabel, Gauge>::default();
        let applied_jobs_total = Counter::default();
        let job_results_total = Family::<OutcomeLabel, Counter>::default();
        let event_buffer_occupancy = Gauge::default();
        let dropped_events_total = Counter::default();
        // 0.1 s .. ~27 min: results arrive after readiness, which can take minutes.
        let job_latency_seconds = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
        ]);
        let credential_age_seconds = Gauge::<f64, AtomicU64>::default();
        let malformed_jobs_total = Counter::default();
        let poll_throttled_seconds = Gauge::default();
        let reconcile_total = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors_total = Family::<ReconcileErrorLabels, Counter>::default();
        let reconcile_time_seconds: HistogramFamily<ControllerLabel> =
            Family::new_with_constructor(reconcile_histogram);
        registry.register(
            "controller_runtime_reconcile",
            "Reconcile passes by controller and result",
            reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Failed reconcile passes by controller and error category",
            reconcile_errors_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Duration of reconcile passes by controller",
            reconcile_time_seconds.clone(),
        );
        registry.register(
            "vworkspace_operator_pull_job_lag_seconds",
            "Age of the oldest job in the last fetched batch",
            pull_job_lag_seconds.clone(),
        );
        registry.register(
            "vworkspace_operator_connectivity_state",
            "Control-plane connectivity: 1 connected, 0 reconnecting, -1 disconnected",
            connectivity_state.clone(),
        );
        registry.register(
            "vworkspace_operator_applied_jobs",
            "Pull-mode jobs finished with outcome succeeded",
            applied_jobs_total.clone(),
        );
        registry.register(
            "vworkspace_operator_job_results",
            "Pull-mode job results accepted by the control plane, by outcome",
            job_results_total.clone(),
        );
        registry.register(
            "vworkspace_operator_event_buffer_occupancy",
            "Events queued for the control plane",
            event_buffer_occupancy.clone(),
        );
        registry.register(
            "vworkspace_operator_dropped_events",
            "Events dropped because the outbound buffer was full",
            dropped_events_total.clone(),
        );
        registry.register(
            "vworkspace_operator_job_latency_seconds",
            "Seconds from job creation on the control plane to its accepted result",
            job_latency_seconds.clone(),
        );
        registry.register(
            "vworkspace_operator_credential_age_seconds",
            "Seconds since the control-plane credentials were last written or loaded",
            credential_age_seconds.clone(),
        );
        registry.register(
            "vworkspace_operator_malformed_jobs",
            "Jobs in poll answers that could not be read and had no usable id to answer",
            malformed_jobs_total.clone(),
        );
        registry.register(
            "vworkspace_operator_poll_throttled_seconds",
            "Seconds job polling pauses on the control plane's Retry-After (0: not throttled)",
            poll_throttled_seconds.clone(),
        );
        let m = Metrics {
            registry,
            malformed_jobs_total,
            poll_throttled_seconds,
            reconcile_total,
            reconcile_errors_total,
            reconcile_time_seconds,
            pull_job_lag_seconds,
            connectivity_state,
            applied_jobs_total,
            job_results_total,
            event_buffer_occupancy,
            dropped_events_total,
            job_latency_seconds,
            credential_age_seconds,
            mode: Mutex::new(ConnectivityMode::Pull),
            credentials_at_ms: AtomicI64::new(0),
        };
        m.set_connectivity(0);
        m
    }

    /// Switches the gauge's `mode` label (once, at start-up): the old series goes away
    /// so a scrape never shows two modes.
    pub fn set_mode(&self, mode: ConnectivityMode) {
        let value = self.connectivity();
        if let Ok(mut m) = self.mode.lock() {
            self.connectivity_state.remove(&ModeLabel {
                mode: m.as_str().into(),
            });
            *m = mode;
        }
        self.set_connectivity(value);
    }

    pub fn mode(&self) -> ConnectivityMode {
        self.mode.lock().map(|m| *m).unwrap_or_default()
    }

    fn mode_label(&self) -> ModeLabel {
        ModeLabel {
            mode: self.mode().as_str().into(),
        }
    }

    /// Sets `connectivity_state{mode}`. GitOps has no link to lose: never `-1` there.
    pub fn set_connectivity(&self, value: i64) {
        let value = if self.mode() == ConnectivityMode::Gitops {
            value.max(0)
        } else {
            value
        };
        self.connectivity_state
            .get_or_create(&self.mode_label())
            .set(value);
    }

    pub fn connectivity(&self) -> i64 {
        self.connectivity_state
            .get_or_create(&self.mode_label())
            .get()
    }

    /// Records when the credentials in use were written (rotation, registration) or
    /// first loaded. The age gauge counts from here.
    pub fn set_credentials_time(&self, at: jiff::Timestamp) {
        self.credentials_at_ms
            .store(at.as_millisecond().max(1), Ordering::Relaxed);
    }

    /// Forgets the credentials (none in use): the age reads 0.
    pub fn clear_credentials_time(&self) {
        self.credentials_at_ms.store(0, Ordering::Relaxed);
    }

    pub fn credential_age_seconds(&self) -> f64 {
        let at = self.credentials_at_ms.load(Ordering::Relaxed);
        if at == 0 {
            return 0.0;
        }
        let now = jiff::Timestamp::now().as_millisecond();
        ((now - at).max(0) as f64) / 1000.0
    }

    pub fn record_result(&self, outcome: &str) {
        self.job_results_total
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one reconcile pass of `controller`; `error` is the failure category.
    pub fn record_reconcile(&self, controller: &str, seconds: f64, error: Option<&str>) {
        self.reconcile_total
            .get_or_create(&ReconcileLabels {
                controller: controller.into(),
                result: if error.is_some() { "error" } else { "success" }.into(),
            })
            .inc();
        if let Some(category) = error {
            self.reconcile_errors_total
                .get_or_create(&ReconcileErrorLabels {
                    controller: controller.into(),
                    category: category.into(),
                })
                .inc();
        }
        self.reconcile_time_seconds
            .get_or_create(&ControllerLabel {
                controller: controller.into(),
            })
            .observe(seconds);
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.credential_age_seconds
            .set(self.credential_age_seconds());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_exported() {
        let m = Metrics::new();
        m.applied_jobs_total.inc();
        m.set_connectivity(1);
        m.set_credentials_time(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(90));
        let text = m.encode();
        for name in [
            "vworkspace_operator_pull_job_lag_seconds",
            "vworkspace_operator_connectivity_state{mode=\"pull\"} 1",
            "vworkspace_operator_applied_jobs_total 1",
            "vworkspace_operator_event_buffer_occupancy",
            "vworkspace_operator_credential_age_seconds",
            "vworkspace_operator_dropped_events_total",
            "vworkspace_operator_job_latency_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(m.credential_age_seconds() >= 89.0);
        m.record_reconcile("cluster", 0.02, None);
        m.record_reconcile("cluster", 0.5, Some("status"));
        let text = m.encode();
        for line in [
            "controller_runtime_reconcile_total{controller=\"cluster\",result=\"success\"} 1",
            "controller_runtime_reconcile_total{controller=\"cluster\",result=\"error\"} 1",
            "controller_runtime_reconcile_errors_total{controller=\"cluster\",category=\"status\"} 1",
            "controller_runtime_reconcile_time_seconds_count{controller=\"cluster\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        m.clear_credentials_time();
        assert_eq!(m.credential_age_seconds(), 0.0);
    }

    #[test]
    fn the_gauge_carries_the_process_mode() {
        let m = Metrics::new();
        m.set_connectivity(1);
        m.set_mode(ConnectivityMode::Push);
        let text = m.encode();
        assert!(
            text.contains("vworkspace_operator_connectivity_state{mode=\"push\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("mode=\"pull\""),
            "one mode per process:\n{text}"
        );
        m.set_connectivity(-1);
        assert_eq!(m.connectivity(), -1);

        m.set_mode(ConnectivityMode::Gitops);
        m.set_connectivity(-1);
        assert_eq!(m.connectivity(), 0, "GitOps never reads disconnected");
        let text = m.encode();
        assert!(
            text.contains("vworkspace_operator_connectivity_state{mode=\"gitops\"} 0"),
            "{text}"
        );
        assert_eq!(MODE_PUSH, ConnectivityMode::Push.as_str());
        assert_eq!(MODE_GITOPS, ConnectivityMode::Gitops.as_str());
        assert_eq!(MODE_PULL, ConnectivityMode::Pull.as_str());
    }
}
