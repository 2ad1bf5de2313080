//! Prometheus metrics, served in the OpenMetrics text format at `/metrics` (see [`crate::http`]).
//!
//! A leaf: it knows no other module of the operator. The others report into it in its own
//! terms ([`ExportEvent`], [`Metrics::leading`], [`Metrics::webhook`], ...); the exporter
//! translates its reports into [`ExportEvent`]s itself.
//!
//! Names follow Prometheus conventions: a `kong_fallback_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters. Export metrics carry `namespace`, `policy` and `version`
//! labels; their series are removed when a policy stops exporting, so a deleted policy does
//! not linger in dashboards. No label ever holds a secret, a URL with credentials or a
//! configuration value.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `kong_fallback_exports_total` | counter | `config.json` writes |
//! | `kong_fallback_export_failures_total{reason}` | counter | failed writes, by cause (`credentials`, `bucket_missing`, `network`, ...) |
//! | `kong_fallback_export_duration_seconds` | histogram | from receiving a configuration to it being stored |
//! | `kong_fallback_exported_bytes_total` | counter | bytes written to `config.json` |
//! | `kong_fallback_config_bytes` | gauge | size of the last exported configuration |
//! | `kong_fallback_last_export_timestamp_seconds` | gauge | Unix time of the last export |
//! | `kong_fallback_control_plane_connected` | gauge | 1 while the control-plane session is up |
//! | `kong_fallback_control_plane_withheld` | gauge | 1 while connected but sent no configuration |
//! | `kong_fallback_control_plane_disconnects_total{reason}` | counter | sessions lost, by cause |
//! | `kong_fallback_rejected_frames_total{reason}` | counter | configuration frames refused (too large, bad gzip or JSON...) |
//! | `kong_fallback_fencing_rejections_total` | counter | writes refused because a newer leader had written |
//! | `kong_fallback_leader{namespace,policy}` | gauge | 1 while this replica leads the policy (controller-runtime's `leader_election_master_status`) |
//! | `kong_fallback_leader_transitions_total{namespace,policy}` | counter | this replica gained or lost the lead |
//! | `kong_fallback_pods_not_injected{namespace,policy}` | gauge | pods the policy selects that lack its current injection (`status.pods.notInjected`); reported by the policy's leader only |
//! | `kong_fallback_webhook_certificate_expiry_timestamp_seconds` | gauge | Unix time when the webhook's serving certificate expires (its notAfter), set on every load and rotation |
//! | `kong_fallback_webhook_requests_total{result}` | counter | admission reviews answered: `injected`, `unchanged`, `skipped`, `malformed`, `error` |
//! | `kong_fallback_webhook_latency_seconds` | histogram | time to answer a review: from its headers read to the answer encoded (reading the body included; TLS and HTTP framing not) |
//! | `kong_fallback_reconcile_total{controller,result}` | counter | reconciles, `result` = `success` or `error` |
//! | `kong_fallback_reconcile_errors_total{controller,reason}` | counter | failed reconciles, by cause |
//! | `kong_fallback_reconcile_time_seconds{controller}` | histogram | reconcile time |
//!
//! The reconcile metrics are controller-runtime's (`controller_runtime_reconcile_total`,
//! `_errors_total`, `_time_seconds`, same labels) under our prefix, so dashboards built for
//! Go operators need only the prefix changed. `controller` is `policy` for the
//! FallbackConfigPolicy controller.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds (seconds) of the webhook's request time: 100 µs .. 1 s.
const WEBHOOK_BUCKETS: [f64; 20] = [
    0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_25, 0.001_5, 0.001_75, 0.002, 0.002_5,
    0.003, 0.004, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// What happened to one export, as far as the metrics care.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExportEvent<'a> {
    /// The control-plane session is up.
    Connected,
    /// Connected, but the control plane sent no configuration (withheld).
    Withheld,
    /// The session ended; `reason` is a stable label (CamelCase or snake_case).
    Disconnected { reason: &'a str },
    /// A configuration frame was refused; the last good configuration stays.
    RejectedFrame { reason: &'a str },
    /// A configuration arrived and was not exported (unchanged, empty...).
    Skipped,
    /// `config.json` was written: `latency` from receiving the configuration to storing it.
    Exported {
        bytes: u64,
        at: SystemTime,
        latency: Duration,
    },
    /// A write failed, for `reason` (a stable label).
    Failed { reason: &'a str },
    /// A write was refused because a newer leader had written.
    Fenced,
}

/// One (policy, Kong version) export.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub namespace: String,
    pub policy: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    namespace: String,
    policy: String,
    version: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    namespace: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

/// Why an Event was not published ([`Metrics::event_lost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLoss {
    /// The queue was full (a flood of Events, or an apiserver that does not answer).
    QueueFull,
    /// The apiserver refused it or could not be reached.
    PublishFailed,
}

impl EventLoss {
    fn label(self) -> &'static str {
        match self {
            EventLoss::QueueFull => "queue_full",
            EventLoss::PublishFailed => "publish_failed",
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the operator exports, registered once.
pub struct Metrics {
    registry: Registry,
    exports: Family<ExportLabels, Counter>,
    export_failures: Family<ReasonLabels, Counter>,
    export_duration: Family<ExportLabels, Histogram>,
    exported_bytes: Family<ExportLabels, Counter>,
    config_bytes: Family<ExportLabels, Gauge>,
    last_export: Family<ExportLabels, FloatGauge>,
    connected: Family<ExportLabels, Gauge>,
    withheld: Family<ExportLabels, Gauge>,
    disconnects: Family<ReasonLabels, Counter>,
    rejected_frames: Family<ReasonLabels, Counter>,
    fenced: Family<ExportLabels, Counter>,
    leader: Family<PolicyLabels, Gauge>,
    leader_transitions: Family<PolicyLabels, Counter>,
    pods_not_injected: Family<PolicyLabels, Gauge>,
    // NB: a family without labels, so that the series is absent (not 0, which would read
    // as "expired in 1970") until a certificate is loaded.
    webhook_cert_expiry: Family<Vec<(String, String)>, FloatGauge>,
    webhook_requests: Family<WebhookLabels, Counter>,
    webhook_latency: Histogram,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    events_lost: Family<CauseLabels, Counter>,
    /// The reason labels each export has used, so that [`Metrics::forget`] can remove the
    /// reason-labelled series of an export that is gone.
    reasons: std::sync::Mutex<
        std::collections::HashMap<ExportLabels, std::collections::BTreeSet<String>>,
    >,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // 5 ms .. ~20 s: a small config lands in milliseconds, a 50 MB one in seconds.
        let export_duration = Family::<ExportLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 13))
        });
        // 1 ms .. ~4 s.
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 13))
            });
        let mut m = Metrics {
            registry: Registry::with_prefix("kong_fallback"),
            exports: Family::default(),
            export_failures: Family::default(),
            export_duration,
            exported_bytes: Family::default(),
            config_bytes: Family::default(),
            last_export: Family::default(),
            connected: Family::default(),
            withheld: Family::default(),
            disconnects: Family::default(),
            rejected_frames: Family::default(),
            fenced: Family::default(),
            leader: Family::default(),
            leader_transitions: Family::default(),
            pods_not_injected: Family::default(),
            webhook_cert_expiry: Family::default(),
            webhook_requests: Family::default(),
            // NB: fine where the target is (2 ms): a quantile read from these buckets is
            // off by at most a quarter of a millisecond below 2 ms.
            webhook_latency: Histogram::new(WEBHOOK_BUCKETS.iter().copied()),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration,
            events_lost: Family::default(),
            reasons: Default::default(),
        };
        let r = &mut m.registry;
        r.register("exports", "Writes of config.json", m.exports.clone());
        r.register(
            "export_failures",
            "Failed writes of config.json, by cause",
            m.export_failures.clone(),
        );
        r.register_with_unit(
            "export_duration",
            "Time from receiving a configuration to it being stored",
            Unit::Seconds,
            m.export_duration.clone(),
        );
        r.register_with_unit(
            "exported",
            "Bytes written to config.json",
            Unit::Bytes,
            m.exported_bytes.clone(),
        );
        r.register_with_unit(
            "config",
            "Size of the last exported configuration",
            Unit::Bytes,
            m.config_bytes.clone(),
        );
        r.register_with_unit(
            "last_export_timestamp",
            "Unix time of the last export",
            Unit::Seconds,
            m.last_export.clone(),
        );
        r.register(
            "control_plane_connected",
            "1 while the control-plane session is up",
            m.connected.clone(),
        );
        r.register(
            "control_plane_withheld",
            "1 while connected but the control plane sent no configuration",
            m.withheld.clone(),
        );
        r.register(
            "control_plane_disconnects",
            "Control-plane sessions lost, by cause",
            m.disconnects.clone(),
        );
        r.register(
            "rejected_frames",
            "Configuration frames refused (too large, bad gzip or JSON), by cause",
            m.rejected_frames.clone(),
        );
        r.register(
            "fencing_rejections",
            "Writes refused because a newer leader had written (this replica stepped down)",
            m.fenced.clone(),
        );
        r.register(
            "leader",
            "1 while this replica leads the policy's election",
            m.leader.clone(),
        );
        r.register(
            "leader_transitions",
            "Changes of this replica's leadership of the policy (gained or lost)",
            m.leader_transitions.clone(),
        );
        r.register(
            "pods_not_injected",
            "Pods the policy selects that lack its current injection (reported by the policy's leader)",
            m.pods_not_injected.clone(),
        );
        r.register_with_unit(
            "webhook_certificate_expiry_timestamp",
            "Unix time when the webhook's serving certificate expires",
            Unit::Seconds,
            m.webhook_cert_expiry.clone(),
        );
        r.register(
            "webhook_requests",
            "Admission reviews answered, by result (injected, unchanged, skipped, malformed, error)",
            m.webhook_requests.clone(),
        );
        r.register_with_unit(
            "webhook_latency",
            "Time to answer an admission review, in the webhook",
            Unit::Seconds,
            m.webhook_latency.clone(),
        );
        r.register(
            "reconcile",
            "Reconciles, by controller and result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles, by controller and cause",
            m.reconcile_errors.clone(),
        );
        r.register_with_unit(
            "reconcile_time",
            "Reconcile time",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        r.register(
            "events_lost",
            "Events not published, by cause (queue_full, publish_failed); the log says which",
            m.events_lost.clone(),
        );
        m
    }

    /// Everything, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // NB: writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records one export event.
    pub fn observe(&self, l: &ExportLabels, event: ExportEvent<'_>) {
        let with = |reason: &str| {
            let reason = snake_case(reason);
            self.reasons
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(l.clone())
                .or_default()
                .insert(reason.clone());
            ReasonLabels {
                namespace: l.namespace.clone(),
                policy: l.policy.clone(),
                version: l.version.clone(),
                reason,
            }
        };
        match event {
            ExportEvent::Connected => {
                self.connected.get_or_create(l).set(1);
                self.withheld.get_or_create(l).set(0);
            }
            ExportEvent::Withheld => {
                self.withheld.get_or_create(l).set(1);
            }
            ExportEvent::Disconnected { reason } => {
                self.connected.get_or_create(l).set(0);
                self.withheld.get_or_create(l).set(0);
                self.disconnects.get_or_create(&with(reason)).inc();
            }
            ExportEvent::RejectedFrame { reason } => {
                self.rejected_frames.get_or_create(&with(reason)).inc();
            }
            ExportEvent::Skipped => {
                self.withheld.get_or_create(l).set(0);
            }
            ExportEvent::Exported { bytes, at, latency } => {
                self.withheld.get_or_create(l).set(0);
                self.exports.get_or_create(l).inc();
                self.exported_bytes.get_or_create(l).inc_by(bytes);
                self.config_bytes
                    .get_or_create(l)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                self.last_export.get_or_create(l).set(unix_seconds(at));
                self.export_duration
                    .get_or_create(l)
                    .observe(latency.as_secs_f64());
            }
            ExportEvent::Failed { reason } => {
                self.export_failures.get_or_create(&with(reason)).inc();
            }
            ExportEvent::Fenced => {
                self.fenced.get_or_create(l).inc();
            }
        }
    }

    /// Removes every series of an export that stopped (a policy deleted, a version no
    /// longer exported, a plan restarted): otherwise deleted policies would stay in every
    /// scrape. A restarted export starts its counters again, which `rate()` handles.
    pub fn forget(&self, l: &ExportLabels) {
        self.connected.remove(l);
        self.withheld.remove(l);
        self.config_bytes.remove(l);
        self.last_export.remove(l);
        self.exports.remove(l);
        self.exported_bytes.remove(l);
        self.export_duration.remove(l);
        self.fenced.remove(l);
        let reasons = self
            .reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(l)
            .unwrap_or_default();
        for reason in reasons {
            let r = ReasonLabels {
                namespace: l.namespace.clone(),
                policy: l.policy.clone(),
                version: l.version.clone(),
                reason,
            };
            self.export_failures.remove(&r);
            self.disconnects.remove(&r);
            self.rejected_frames.remove(&r);
        }
    }

    /// Records whether this replica leads `policy` now; a change counts as a transition.
    /// A replica that does not lead drops its pod count of the policy: the leader reports it.
    pub fn leading(&self, namespace: &str, policy: &str, leading: bool) {
        let l = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        let gauge = self.leader.get_or_create(&l);
        let now = i64::from(leading);
        if gauge.set(now) != now {
            self.leader_transitions.get_or_create(&l).inc();
        }
        if !leading {
            self.pods_not_injected.remove(&l);
        }
    }

    /// Records how many pods `policy` selects that lack its current injection, or (`None`)
    /// that this replica no longer knows (it stopped leading, the spec is invalid).
    pub fn pods_not_injected(&self, namespace: &str, policy: &str, count: Option<usize>) {
        let l = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        match count {
            Some(n) => {
                self.pods_not_injected
                    .get_or_create(&l)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            None => {
                self.pods_not_injected.remove(&l);
            }
        }
    }

    /// Records when the webhook's serving certificate expires (its notAfter), or (`None`)
    /// that it serves none, or one whose expiry cannot be read.
    pub fn webhook_certificate(&self, not_after: Option<SystemTime>) {
        match not_after {
            Some(t) => {
                self.webhook_cert_expiry
                    .get_or_create(&Vec::new())
                    .set(unix_seconds(t));
            }
            None => {
                self.webhook_cert_expiry.remove(&Vec::new());
            }
        }
    }

    /// Removes the election series of a policy that is gone.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        let l = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        self.leader.remove(&l);
        self.leader_transitions.remove(&l);
        self.pods_not_injected.remove(&l);
    }

    /// Records one admission review answered with `result` in `took`.
    pub fn webhook(&self, result: &str, took: Duration) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                result: result.to_owned(),
            })
            .inc();
        self.webhook_latency.observe(took.as_secs_f64());
    }

    /// Records one reconcile of `controller`: its duration and, on failure, the error label.
    pub fn reconciled(&self, controller: &str, took: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ResultLabels {
                controller: controller.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller: controller.to_owned(),
                    reason: reason.to_owned(),
                })
                .inc();
        }
        self.reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts one Event that was not published, and why.
    pub fn event_lost(&self, cause: EventLoss) {
        self.events_lost
            .get_or_create(&CauseLabels {
                cause: cause.label().to_owned(),
            })
            .inc();
    }
}

/// `BucketMissing` -> `bucket_missing`: condition reasons are CamelCase, metric labels
/// snake_case.
fn snake_case(label: &str) -> String {
    let mut out = String::with_capacity(label.len() + 4);
    for (i, c) in label.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> ExportLabels {
        ExportLabels {
            namespace: "kong".into(),
            policy: "prod".into(),
            version: "3.6.1.4".into(),
        }
    }

    const L: &str = r#"namespace="kong",policy="prod",version="3.6.1.4""#;

    fn exported(bytes: u64, ms: u64) -> ExportEvent<'static> {
        ExportEvent::Exported {
            bytes,
            at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_forgotten_export_and_policy_leave_no_series_behind() {
        let m = Metrics::new();
        let gone = ExportLabels {
            namespace: "kong".into(),
            policy: "gone".into(),
            version: "3.6.1.4".into(),
        };
        let kept = ExportLabels {
            policy: "kept".into(),
            ..gone.clone()
        };
        for l in [&gone, &kept] {
            m.observe(l, ExportEvent::Connected);
            m.observe(
                l,
                ExportEvent::Exported {
                    bytes: 10,
                    at: std::time::SystemTime::now(),
                    latency: Duration::from_millis(5),
                },
            );
            m.observe(
                l,
                ExportEvent::Disconnected {
                    reason: "Unreachable",
                },
            );
            m.observe(l, ExportEvent::RejectedFrame { reason: "BadFrame" });
            m.observe(l, ExportEvent::Failed { reason: "Network" });
            m.observe(l, ExportEvent::Fenced);
            m.leading(&l.namespace, &l.policy, true);
        }
        m.forget(&gone);
        m.forget_policy("kong", "gone");
        let text = m.encode();
        assert!(!text.contains("policy=\"gone\""), "{text}");
        assert!(text.contains("policy=\"kept\""), "{text}");
    }

    #[test]
    fn exports_count_bytes_latency_and_the_last_success() {
        let m = Metrics::new();
        m.observe(&labels(), exported(1000, 20));
        m.observe(&labels(), exported(500, 3000));
        let text = m.encode();
        for line in [
            format!("kong_fallback_exports_total{{{L}}} 2"),
            format!("kong_fallback_exported_bytes_total{{{L}}} 1500"),
            format!("kong_fallback_config_bytes{{{L}}} 500"),
            format!("kong_fallback_last_export_timestamp_seconds{{{L}}} 1700000000.0"),
            format!("kong_fallback_export_duration_seconds_count{{{L}}} 2"),
            format!("kong_fallback_export_duration_seconds_sum{{{L}}} 3.02"),
            // 20 ms falls in the 0.02 s bucket and above; 3 s only from 5.12 s up.
            format!("kong_fallback_export_duration_seconds_bucket{{le=\"0.02\",{L}}} 1"),
            format!("kong_fallback_export_duration_seconds_bucket{{le=\"5.12\",{L}}} 2"),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn failures_and_session_changes_are_counted_by_cause() {
        let m = Metrics::new();
        let l = labels();
        m.observe(&l, ExportEvent::Connected);
        m.observe(&l, ExportEvent::Withheld);
        let text = m.encode();
        assert!(text.contains(&format!("kong_fallback_control_plane_connected{{{L}}} 1")));
        assert!(text.contains(&format!("kong_fallback_control_plane_withheld{{{L}}} 1")));

        for _ in 0..2 {
            m.observe(
                &l,
                ExportEvent::Failed {
                    reason: "Credentials",
                },
            );
        }
        m.observe(
            &l,
            ExportEvent::RejectedFrame {
                reason: "too_large",
            },
        );
        m.observe(&l, ExportEvent::Disconnected { reason: "connect" });
        let text = m.encode();
        for line in [
            format!("kong_fallback_export_failures_total{{{L},reason=\"credentials\"}} 2"),
            format!("kong_fallback_rejected_frames_total{{{L},reason=\"too_large\"}} 1"),
            format!("kong_fallback_control_plane_disconnects_total{{{L},reason=\"connect\"}} 1"),
            format!("kong_fallback_control_plane_connected{{{L}}} 0"),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn a_stopped_export_leaves_no_series_behind() {
        let m = Metrics::new();
        m.observe(&labels(), ExportEvent::Connected);
        m.observe(&labels(), exported(10, 1));
        m.forget(&labels());
        let text = m.encode();
        assert!(!text.contains(&format!("kong_fallback_control_plane_connected{{{L}}}")));
        assert!(!text.contains(&format!("kong_fallback_config_bytes{{{L}}}")));
        assert!(!text.contains(&format!("kong_fallback_exports_total{{{L}}}")));
    }

    #[test]
    fn leadership_changes_count_as_transitions_and_fencing_is_counted() {
        let m = Metrics::new();
        m.leading("kong", "prod", false);
        m.leading("kong", "prod", true);
        m.leading("kong", "prod", true);
        m.leading("kong", "prod", false);
        m.observe(&labels(), ExportEvent::Fenced);
        let text = m.encode();
        let p = r#"namespace="kong",policy="prod""#;
        for line in [
            format!("kong_fallback_leader{{{p}}} 0"),
            format!("kong_fallback_leader_transitions_total{{{p}}} 2"),
            format!("kong_fallback_fencing_rejections_total{{{L}}} 1"),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        m.forget_policy("kong", "prod");
        assert!(!m.encode().contains(&format!("kong_fallback_leader{{{p}}}")));
    }

    #[test]
    fn pods_not_injected_are_counted_by_the_leader_only() {
        let m = Metrics::new();
        let p = r#"namespace="kong",policy="prod""#;
        m.leading("kong", "prod", true);
        m.pods_not_injected("kong", "prod", Some(3));
        assert!(
            m.encode()
                .contains(&format!("kong_fallback_pods_not_injected{{{p}}} 3")),
            "{}",
            m.encode()
        );
        // A replica that loses the lead leaves the count to the new leader.
        m.leading("kong", "prod", false);
        assert!(
            !m.encode()
                .contains(&format!("kong_fallback_pods_not_injected{{{p}}}"))
        );
        m.pods_not_injected("kong", "prod", Some(0));
        m.pods_not_injected("kong", "prod", None);
        assert!(
            !m.encode()
                .contains(&format!("kong_fallback_pods_not_injected{{{p}}}"))
        );
        m.pods_not_injected("kong", "prod", Some(1));
        m.forget_policy("kong", "prod");
        assert!(
            !m.encode()
                .contains(&format!("kong_fallback_pods_not_injected{{{p}}}"))
        );
    }

    #[test]
    fn the_webhook_certificate_expiry_is_absent_until_a_certificate_is_loaded() {
        let m = Metrics::new();
        let name = "kong_fallback_webhook_certificate_expiry_timestamp_seconds";
        // NB: an empty label set encodes as `{}`, which OpenMetrics allows.
        assert!(!m.encode().contains(&format!("{name}{{")), "{}", m.encode());
        m.webhook_certificate(Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        assert!(
            m.encode().contains(&format!("{name}{{}} 1800000000.0")),
            "{}",
            m.encode()
        );
        m.webhook_certificate(None);
        assert!(!m.encode().contains(&format!("{name}{{")), "{}", m.encode());
    }

    #[test]
    fn reasons_are_snake_case_labels() {
        assert_eq!(snake_case("BucketMissing"), "bucket_missing");
        assert_eq!(snake_case("Credentials"), "credentials");
        assert_eq!(snake_case("too_large"), "too_large");
    }

    #[test]
    fn reconciles_count_results_and_errors() {
        let m = Metrics::new();
        m.reconciled("policy", Duration::from_millis(3), None);
        m.reconciled("policy", Duration::from_millis(3), Some("status_write"));
        let text = m.encode();
        for line in [
            r#"kong_fallback_reconcile_total{controller="policy",result="success"} 1"#,
            r#"kong_fallback_reconcile_total{controller="policy",result="error"} 1"#,
            r#"kong_fallback_reconcile_errors_total{controller="policy",reason="status_write"} 1"#,
            r#"kong_fallback_reconcile_time_seconds_count{controller="policy"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
