//! The status a policy should have, and the Events its changes deserve. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::exporters::VersionState;
use crate::api::{
    ConditionType, ExportStatus, FallbackConfigPolicyStatus, LeaderStatus, Problem, set_condition,
    set_condition_status,
};

/// What the operator's own exporters look like for one policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportView {
    pub states: BTreeMap<String, VersionState>,
    /// Why the exporters could not start: (reason, message), e.g. a missing Secret.
    pub setup_error: Option<(String, String)>,
    /// Remarks about the versions (pods whose version is unknown).
    pub notes: Vec<String>,
    /// A received configuration not stored after this long turns `Exporting` False
    /// (`ExportStalled`), whatever the writer says: a hung store or a stuck writer.
    pub stall_after: std::time::Duration,
    /// Whether the store enforces conditional writes, once the leader has checked.
    pub fencing: Option<bool>,
}

/// How long a received configuration may wait beyond `exporter.minInterval` before the
/// export counts as stalled. Above the store's own bound on a small write, so a failing
/// store is reported by its error first.
pub const STALL_MARGIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The desired status from the validation result and, in `Operator` mode, the exporters.
pub fn desired_status(
    current: &FallbackConfigPolicyStatus,
    generation: Option<i64>,
    problems: &[Problem],
    export: Option<&ExportView>,
    now: Time,
) -> FallbackConfigPolicyStatus {
    let mut status = current.clone();
    status.observed_generation = generation;
    let set = |cs: &mut Vec<Condition>, t: ConditionType, ok: bool, reason: &str, message: &str| {
        set_condition(cs, t, ok, reason, message, generation, now.clone());
    };
    let valid = problems.is_empty();
    let (reason, message) = if valid {
        ("Valid".to_owned(), "the spec is valid".to_owned())
    } else {
        ("InvalidSpec".to_owned(), summary(problems))
    };
    set(
        &mut status.conditions,
        ConditionType::Valid,
        valid,
        &reason,
        &message,
    );

    let mut ready = (valid, reason, message);
    match export {
        Some(view) if valid => {
            let (cp_ok, cp_reason, cp_msg) = connection(view);
            let (ex_ok, ex_reason, ex_msg) = exporting(view, now.0);
            set(
                &mut status.conditions,
                ConditionType::ControlPlaneConnected,
                cp_ok,
                &cp_reason,
                &cp_msg,
            );
            set(
                &mut status.conditions,
                ConditionType::Exporting,
                ex_ok,
                &ex_reason,
                &ex_msg,
            );
            ready = match (cp_ok, ex_ok) {
                (_, true) if cp_ok => (true, "Exporting".into(), ex_msg),
                (false, _) => (false, cp_reason, cp_msg),
                _ => (false, ex_reason, ex_msg),
            };
            match view.fencing {
                Some(true) => set(
                    &mut status.conditions,
                    ConditionType::Fencing,
                    true,
                    "Enforced",
                    "the store refuses stale conditional writes: a replaced leader cannot overwrite a newer export",
                ),
                Some(false) => set(
                    &mut status.conditions,
                    ConditionType::Fencing,
                    false,
                    "FencingUnsupported",
                    "the store ignores conditional writes (If-Match / If-None-Match): fencing is off. The operator still exports and relies on the Lease alone, so a paused former leader could overwrite one newer export before it notices; use a store that enforces conditional writes",
                ),
                None => {}
            }
            status.exports = view
                .states
                .iter()
                .filter_map(|(version, s)| {
                    s.last_export.as_ref().map(|e| ExportStatus {
                        version: version.clone(),
                        key: e.key.clone(),
                        config_hash: e.hash.clone(),
                        bytes: e.bytes as i64,
                        time: Time(Timestamp::try_from(e.at).unwrap_or(Timestamp::UNIX_EPOCH)),
                    })
                })
                .collect();
        }
        _ => {
            // Not exporting ourselves (or invalid): those conditions do not apply.
            status.conditions.retain(|c| {
                c.type_ != ConditionType::ControlPlaneConnected.as_str()
                    && c.type_ != ConditionType::Exporting.as_str()
                    && c.type_ != ConditionType::Fencing.as_str()
            });
            if export.is_none() {
                status.exports.clear();
            }
        }
    }
    let (ok, reason, message) = ready;
    set(
        &mut status.conditions,
        ConditionType::Ready,
        ok,
        &reason,
        &message,
    );
    status
}

/// Sets `status.leader` and the `Leading` condition from the election. Pure.
pub fn set_leader(
    status: &mut FallbackConfigPolicyStatus,
    leader: Option<LeaderStatus>,
    problem: Option<&(String, String)>,
    note: Option<&str>,
    generation: Option<i64>,
    now: Time,
) {
    let (ok, reason, message) = match (&leader, problem) {
        (_, Some((reason, message))) => (false, reason.as_str(), message.clone()),
        (Some(l), None) if !l.backup_pods.is_empty() => (
            true,
            "Elected",
            format!(
                "{} holds the Lease (epoch {}) and designated Kong's exporters: {}",
                l.identity,
                l.transitions,
                l.backup_pods
                    .iter()
                    .map(|d| format!("{} for {}", d.pod, d.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (Some(l), None) => (
            true,
            "Elected",
            format!(
                "{} holds the Lease (epoch {}) and leads this policy",
                l.identity, l.transitions
            ),
        ),
        (None, None) => (false, "NoLeader", "no replica holds the Lease".to_owned()),
    };
    let message = match note {
        Some(note) if ok => format!("{message}; {note}"),
        _ => message,
    };
    set_condition(
        &mut status.conditions,
        ConditionType::Leading,
        ok,
        reason,
        &message,
        generation,
        now,
    );
    status.leader = leader;
}

/// Sets `StorageReachable` from the probe (`Unknown` when the operator cannot check); a
/// failing probe makes `Ready` False too. Pure.
pub fn set_storage(
    status: &mut FallbackConfigPolicyStatus,
    outcome: &super::probe::Outcome,
    generation: Option<i64>,
    now: Time,
) {
    let (ok, reason, message) = outcome;
    let text = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    set_condition_status(
        &mut status.conditions,
        ConditionType::StorageReachable,
        text,
        reason,
        message,
        generation,
        now.clone(),
    );
    if *ok == Some(false) {
        downgrade_ready(status, reason, message, generation, now);
    }
}

/// The `Ready` reason of a policy with `spec.suspend: true`.
pub const SUSPENDED: &str = "Suspended";

/// `Ready=False` with reason [`SUSPENDED`], after every other condition is set. Pure.
pub fn set_suspended(status: &mut FallbackConfigPolicyStatus, generation: Option<i64>, now: Time) {
    set_condition(
        &mut status.conditions,
        ConditionType::Ready,
        false,
        SUSPENDED,
        "spec.suspend is true: the operator does not export, mirror the election, designate backup pods or restart workloads for this policy; the webhook still injects, pointing new data planes at the last configuration stored",
        generation,
        now,
    );
}

/// `Ready` reasons that mean "working on it": the operator gets there by itself.
const IN_PROGRESS: &[&str] = &["Connecting", "Waiting"];
/// `Ready` reasons that need a person: the operator cannot get further by itself.
const STALLED: &[&str] = &["InvalidSpec", "AmbientNotAllowed"];

/// Sets kstatus' `Reconciling` and `Stalled` from `Ready`, once every other condition is
/// set, so that Flux (`wait`, `healthChecks`), `kubectl wait` and anything built on
/// sigs.k8s.io/cli-utils read the policy as kstatus defines: `Stalled=True` is Failed,
/// `Reconciling=True` InProgress, `Ready=True` with both False Current (and a
/// `status.observedGeneration` behind `metadata.generation` InProgress, whatever the
/// conditions). Both are always written, True or False. Pure.
pub fn set_progress(status: &mut FallbackConfigPolicyStatus, generation: Option<i64>, now: Time) {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
        .map(|c| (c.status == "True", c.reason.clone(), c.message.clone()));
    let (ready, reason, message) = ready.unwrap_or((false, "Waiting".into(), String::new()));
    let stalled = !ready && STALLED.contains(&reason.as_str());
    let reconciling = !ready && IN_PROGRESS.contains(&reason.as_str());
    let (s_reason, s_message) = if stalled {
        (reason.clone(), message.clone())
    } else {
        (
            "NotStalled".to_owned(),
            "nothing keeps the operator from making progress".to_owned(),
        )
    };
    set_condition(
        &mut status.conditions,
        ConditionType::Stalled,
        stalled,
        &s_reason,
        &s_message,
        generation,
        now.clone(),
    );
    let (r_reason, r_message) = if reconciling {
        (reason, message)
    } else if ready {
        ("Reconciled".to_owned(), "Ready".to_owned())
    } else {
        (
            "NotReconciling".to_owned(),
            "not working towards Ready by itself: see Ready".to_owned(),
        )
    };
    set_condition(
        &mut status.conditions,
        ConditionType::Reconciling,
        reconciling,
        &r_reason,
        &r_message,
        generation,
        now,
    );
}

fn downgrade_ready(
    status: &mut FallbackConfigPolicyStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) {
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::Ready.as_str() && c.status == "True");
    if ready {
        set_condition(
            &mut status.conditions,
            ConditionType::Ready,
            false,
            reason,
            message,
            generation,
            now,
        );
    }
}

/// Sets `status.pods` and the `PodsInjected` condition; pods without a current injection
/// make `Ready` False too. Pure.
pub fn set_pods(
    status: &mut FallbackConfigPolicyStatus,
    report: &super::pods::PodReport,
    generation: Option<i64>,
    now: Time,
) {
    let n = report.not_injected.len();
    let (ok, reason, message) = if !report.claimed_by_others.is_empty() {
        let listed: Vec<String> = report
            .claimed_by_others
            .iter()
            .take(super::pods::LISTED)
            .map(|(pod, other)| format!("{pod} by {other}"))
            .collect();
        (
            false,
            "PolicyConflict",
            format!(
                "{} pod(s) this policy selects are claimed by an older policy and get its settings ({}); make the policies' selectors disjoint",
                report.claimed_by_others.len(),
                listed.join(", ")
            ),
        )
    } else if !report.conflicts.is_empty() {
        (
            false,
            "SelectorConflict",
            format!(
                "{} pod(s) match both dataPlanes.selector and backup.selector and get nothing ({}); make the selectors disjoint",
                report.conflicts.len(),
                report
                    .conflicts
                    .iter()
                    .take(super::pods::LISTED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else if n > 0 {
        (
            false,
            "NotInjected",
            format!(
                "{n} pod(s) lack the current injection ({}): created before the policy, while the webhook was unavailable, or before a policy change; restart them, or set spec.dataPlanes.rollout: true",
                report.counts.not_injected_pods.join(", ")
            ),
        )
    } else if !report.cannot_engage.is_empty() {
        let listed: Vec<String> = report
            .cannot_engage
            .iter()
            .take(super::pods::LISTED)
            .map(|(pod, settings)| format!("{pod} ({})", settings.join(", ")))
            .collect();
        (
            false,
            "FallbackCannotEngage",
            format!(
                "{} pod(s) take start-up settings from a vault reference ({}): if it cannot be resolved while the control plane is down, Kong fails to start before it reads the fallback configuration; take these settings from a Secret",
                report.cannot_engage.len(),
                listed.join(", ")
            ),
        )
    } else {
        (
            true,
            "AllInjected",
            format!(
                "{} importer(s) and {} backup pod(s), all injected",
                report.counts.importers, report.counts.backups
            ),
        )
    };
    set_condition(
        &mut status.conditions,
        ConditionType::PodsInjected,
        ok,
        reason,
        &message,
        generation,
        now.clone(),
    );
    status.pods = Some(report.counts.clone());
    if !ok {
        downgrade_ready(status, reason, &message, generation, now);
    }
}

fn connection(view: &ExportView) -> (bool, String, String) {
    if let Some((reason, message)) = &view.setup_error {
        return (false, reason.clone(), message.clone());
    }
    for (version, s) in &view.states {
        if !s.connected {
            return match &s.session_error {
                Some((label, msg)) => (false, label.clone(), format!("version {version}: {msg}")),
                None => (
                    false,
                    "Connecting".into(),
                    format!("version {version}: connecting to the control plane"),
                ),
            };
        }
        if s.withheld {
            return (
                false,
                "ConfigWithheld".into(),
                format!(
                    "version {version}: connected, but the control plane sent no configuration; it withholds it when a configured plugin is missing from the ones announced (add custom plugins to spec.exporter.plugins and the pods' KONG_PLUGINS) or its version is newer than the control plane's, when the control plane runs Wasm filters not listed in spec.exporter.wasmFilters, or when the data plane version is newer than the control plane"
                ),
            );
        }
    }
    let versions: Vec<&str> = view.states.keys().map(String::as_str).collect();
    (
        true,
        "Connected".into(),
        format!("connected as version(s) {}", versions.join(", ")),
    )
}

fn exporting(view: &ExportView, now: Timestamp) -> (bool, String, String) {
    if let Some((reason, message)) = &view.setup_error {
        return (false, reason.clone(), message.clone());
    }
    for (version, s) in &view.states {
        if let Some((label, msg)) = &s.export_error {
            return (false, label.clone(), format!("version {version}: {msg}"));
        }
    }
    let now = std::time::SystemTime::from(now);
    for (version, s) in &view.states {
        let waited = s
            .waiting_since
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if !view.stall_after.is_zero() && waited > view.stall_after {
            return (
                false,
                "ExportStalled".into(),
                format!(
                    "version {version}: a configuration received {}s ago is not stored yet; the store or the writer is stuck (see the operator's logs)",
                    waited.as_secs()
                ),
            );
        }
    }
    if let Some((version, _)) = view.states.iter().find(|(_, s)| s.last_export.is_none()) {
        return (
            false,
            "Waiting".into(),
            format!("version {version}: waiting for the first configuration to export"),
        );
    }
    let mut message = format!("{} version(s) exported", view.states.len());
    if !view.notes.is_empty() {
        message.push_str("; ");
        message.push_str(&view.notes.join("; "));
    }
    (true, "Exported".into(), message)
}

fn summary(problems: &[Problem]) -> String {
    let all: Vec<String> = problems.iter().map(Problem::to_string).collect();
    format!("{} problem(s): {}", problems.len(), all.join("; "))
}

/// An Event worth publishing: a condition that a person watches changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Events for the transitions between two statuses: a watched condition that appears or
/// flips, or whose reason changes while it is False. Pure.
pub fn changes(old: &FallbackConfigPolicyStatus, new: &FallbackConfigPolicyStatus) -> Vec<Change> {
    let find =
        |cs: &[Condition], t: ConditionType| cs.iter().find(|c| c.type_ == t.as_str()).cloned();
    let mut out = Vec::new();
    for t in [
        ConditionType::Valid,
        ConditionType::ControlPlaneConnected,
        ConditionType::Exporting,
        ConditionType::PodsInjected,
        ConditionType::StorageReachable,
        ConditionType::Fencing,
    ] {
        let (before, Some(after)) = (find(&old.conditions, t), find(&new.conditions, t)) else {
            continue;
        };
        let flipped = before.as_ref().is_none_or(|b| b.status != after.status);
        let worse =
            after.status == "False" && before.as_ref().is_some_and(|b| b.reason != after.reason);
        // NB: "waiting for the first export" is not news.
        if (flipped || worse) && after.reason != "Waiting" && after.reason != "Connecting" {
            let mut note = after.message.clone();
            truncate(&mut note, 1000);
            // NB: Unknown (a check the operator cannot make) is news, not a warning.
            out.push(Change {
                warning: after.status == "False",
                reason: after.reason.clone(),
                note,
            });
        }
    }
    let suspended = |s: &FallbackConfigPolicyStatus| {
        find(&s.conditions, ConditionType::Ready).is_some_and(|c| c.reason == SUSPENDED)
    };
    match (suspended(old), suspended(new)) {
        (false, true) => out.push(Change {
            warning: false,
            reason: "Suspended".into(),
            note: "spec.suspend is true: exports, the election mirror and rollouts stop; the webhook still injects".into(),
        }),
        (true, false) => out.push(Change {
            warning: false,
            reason: "Resumed".into(),
            note: "spec.suspend is no longer true: the operator works on this policy again".into(),
        }),
        _ => {}
    }
    let holder = |s: &FallbackConfigPolicyStatus| s.leader.as_ref().map(|l| l.identity.clone());
    if let Some(l) = &new.leader
        && holder(old) != holder(new)
    {
        out.push(Change {
            warning: false,
            reason: "LeaderElected".into(),
            note: format!(
                "{} holds the Lease (epoch {}) and is now the exporter",
                l.identity, l.transitions
            ),
        });
    }
    out
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::exporters::ExportRecord;
    use std::time::SystemTime;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn problem() -> Problem {
        Problem {
            field: "spec.storage.url".into(),
            message: "bad".into(),
        }
    }

    fn cond<'a>(s: &'a FallbackConfigPolicyStatus, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    fn exported(version: &str) -> (String, VersionState) {
        (
            version.to_owned(),
            VersionState {
                connected: true,
                last_export: Some(ExportRecord {
                    key: format!("kong/{version}/config.json"),
                    hash: "a".repeat(32),
                    bytes: 10,
                    at: SystemTime::UNIX_EPOCH,
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn an_invalid_spec_makes_ready_false_with_every_problem_in_the_message() {
        let s = desired_status(
            &Default::default(),
            Some(2),
            &[problem(), problem()],
            None,
            at(5),
        );
        let ready = cond(&s, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(
            ready.message,
            "2 problem(s): spec.storage.url: bad; spec.storage.url: bad"
        );
        assert_eq!(
            (s.observed_generation, ready.observed_generation),
            (Some(2), Some(2))
        );
    }

    #[test]
    fn reconciling_an_unchanged_policy_yields_the_same_status() {
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let first = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let again = desired_status(&first, Some(1), &[], Some(&view), at(50));
        assert_eq!(first, again);
    }

    #[test]
    fn the_leader_is_in_status_with_a_leading_condition() {
        let mut s = FallbackConfigPolicyStatus::default();
        let leader = LeaderStatus {
            identity: "kfo-0_ab12".into(),
            since: Some(at(3)),
            transitions: 4,
            backup_pod: None,
            node_id: None,
            backup_pods: Vec::new(),
        };
        set_leader(&mut s, Some(leader.clone()), None, None, Some(1), at(5));
        assert_eq!(s.leader, Some(leader.clone()));
        let c = cond(&s, "Leading").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Elected"));
        assert!(c.message.contains("kfo-0_ab12") && c.message.contains("epoch 4"));
        set_leader(&mut s, None, None, None, Some(1), at(6));
        assert_eq!(s.leader, None);
        assert_eq!(cond(&s, "Leading").unwrap().reason, "NoLeader");
        let problem = ("NoBackupPod".to_owned(), "no Ready pod".to_owned());
        set_leader(&mut s, Some(leader), Some(&problem), None, Some(1), at(7));
        let c = cond(&s, "Leading").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoBackupPod")
        );
    }

    #[test]
    fn pods_without_the_injection_make_ready_false_and_are_listed() {
        use super::super::pods::PodReport;
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let mut s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let mut r = PodReport::default();
        r.counts.importers = 2;
        set_pods(&mut s, &r, Some(1), at(5));
        assert_eq!(cond(&s, "PodsInjected").unwrap().reason, "AllInjected");
        assert_eq!(cond(&s, "Ready").unwrap().status, "True");

        r.not_injected = vec!["dp-1".into()];
        r.counts.not_injected = 1;
        r.counts.not_injected_pods = vec!["dp-1".into()];
        set_pods(&mut s, &r, Some(1), at(6));
        let c = cond(&s, "PodsInjected").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotInjected")
        );
        assert!(c.message.contains("dp-1"));
        assert_eq!(cond(&s, "Ready").unwrap().reason, "NotInjected");
        assert_eq!(s.pods.as_ref().unwrap().not_injected, 1);
    }

    #[test]
    fn a_new_leader_is_an_event_and_a_renewal_is_not() {
        let mut old = FallbackConfigPolicyStatus::default();
        let leader = |id: &str, t: i32| LeaderStatus {
            identity: id.into(),
            since: None,
            transitions: t,
            backup_pod: None,
            node_id: None,
            backup_pods: Vec::new(),
        };
        let mut new = old.clone();
        new.leader = Some(leader("kfo-0_aa", 0));
        let c = changes(&old, &new);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason, "LeaderElected");
        old = new.clone();
        assert!(changes(&old, &new).is_empty());
        new.leader = Some(leader("kfo-1_bb", 1));
        assert!(changes(&old, &new)[0].note.contains("kfo-1_bb"));
    }

    #[test]
    fn exporting_every_version_makes_the_policy_ready_and_lists_the_exports() {
        let view = ExportView {
            states: [exported("3.6.1.4"), exported("3.9.1")].into(),
            ..Default::default()
        };
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        assert_eq!(cond(&s, "Ready").unwrap().status, "True");
        assert_eq!(
            cond(&s, "Exporting").unwrap().message,
            "2 version(s) exported"
        );
        assert_eq!(
            cond(&s, "ControlPlaneConnected").unwrap().reason,
            "Connected"
        );
        assert_eq!(s.exports.len(), 2);
        assert_eq!(s.exports[0].key, "kong/3.6.1.4/config.json");
    }

    #[test]
    fn a_configuration_waiting_past_the_threshold_turns_exporting_false() {
        let mut states = BTreeMap::from([exported("3.6.1.4")]);
        let received = std::time::SystemTime::from(at(5).0);
        states.get_mut("3.6.1.4").unwrap().waiting_since = Some(received);
        let view = ExportView {
            states,
            stall_after: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let later = |secs: i64| Time(at(5).0 + k8s_openapi::jiff::SignedDuration::from_secs(secs));
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), later(30));
        assert_eq!(cond(&s, "Exporting").unwrap().status, "True");
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), later(61));
        let c = cond(&s, "Exporting").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ExportStalled")
        );
        assert!(c.message.contains("version 3.6.1.4"), "{}", c.message);
        assert_eq!(cond(&s, "Ready").unwrap().status, "False");
    }

    #[test]
    fn storage_the_operator_cannot_check_is_unknown_keeps_ready_and_is_no_warning() {
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let before = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let mut s = before.clone();
        let outcome = (
            None,
            "NotVerifiable".to_owned(),
            "their identity".to_owned(),
        );
        set_storage(&mut s, &outcome, Some(1), at(6));
        let c = cond(&s, "StorageReachable").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "NotVerifiable")
        );
        assert_eq!(cond(&s, "Ready").unwrap().status, "True");
        let events = changes(&before, &s);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(!events[0].warning, "{events:?}");
        // A check that failed is still False, a warning, and makes Ready False.
        let outcome = (Some(false), "Credentials".to_owned(), "refused".to_owned());
        set_storage(&mut s, &outcome, Some(1), at(7));
        assert_eq!(cond(&s, "StorageReachable").unwrap().status, "False");
        assert_eq!(cond(&s, "Ready").unwrap().status, "False");
        assert!(changes(&before, &s).iter().all(|e| e.warning));
    }

    #[test]
    fn a_store_that_ignores_conditional_writes_says_fencing_is_off_but_stays_ready() {
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            fencing: Some(false),
            ..Default::default()
        };
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let c = cond(&s, "Fencing").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "FencingUnsupported")
        );
        assert_eq!(cond(&s, "Ready").unwrap().status, "True");
        let view = ExportView {
            fencing: Some(true),
            ..view
        };
        let s = desired_status(&s, Some(1), &[], Some(&view), at(6));
        assert_eq!(cond(&s, "Fencing").unwrap().status, "True");
    }

    #[test]
    fn a_missing_secret_is_named_in_both_conditions_and_ready() {
        let view = ExportView {
            setup_error: Some((
                "SecretMissing".into(),
                "Secret kong/kong-cluster-cert not found".into(),
            )),
            ..Default::default()
        };
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        for t in ["ControlPlaneConnected", "Exporting", "Ready"] {
            let c = cond(&s, t).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "SecretMissing"),
                "{t}"
            );
            assert!(c.message.contains("kong/kong-cluster-cert"));
        }
    }

    #[test]
    fn a_withheld_config_says_what_to_check() {
        let mut states = BTreeMap::from([exported("3.6.1.4")]);
        let s0 = states.get_mut("3.6.1.4").unwrap();
        s0.withheld = true;
        s0.last_export = None;
        let view = ExportView {
            states,
            ..Default::default()
        };
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let c = cond(&s, "ControlPlaneConnected").unwrap();
        assert_eq!(c.reason, "ConfigWithheld");
        assert!(c.message.contains("spec.exporter.plugins"));
        assert_eq!(cond(&s, "Ready").unwrap().reason, "ConfigWithheld");
    }

    #[test]
    fn a_write_failure_names_its_cause() {
        let mut states = BTreeMap::from([exported("3.6.1.4")]);
        states.get_mut("3.6.1.4").unwrap().export_error = Some((
            "Credentials".into(),
            "put b/k: the credentials were refused".into(),
        ));
        let view = ExportView {
            states,
            ..Default::default()
        };
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let c = cond(&s, "Exporting").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Credentials")
        );
        assert!(c.message.starts_with("version 3.6.1.4: put b/k"));
    }

    #[test]
    fn leaving_operator_mode_drops_the_export_conditions_and_list() {
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let s = desired_status(&s, Some(2), &[], None, at(6));
        assert!(cond(&s, "Exporting").is_none() && s.exports.is_empty());
        assert_eq!(cond(&s, "Ready").unwrap().status, "True");
    }

    fn kstatus(s: &FallbackConfigPolicyStatus) -> (String, String) {
        let st = |t: &str| cond(s, t).unwrap().status.clone();
        (st("Stalled"), st("Reconciling"))
    }

    #[test]
    fn an_invalid_spec_is_stalled_and_not_reconciling() {
        let mut s = desired_status(&Default::default(), Some(1), &[problem()], None, at(5));
        set_progress(&mut s, Some(1), at(5));
        assert_eq!(kstatus(&s), ("True".into(), "False".into()));
        let c = cond(&s, "Stalled").unwrap();
        assert_eq!(c.reason, "InvalidSpec");
        assert!(c.message.contains("spec.storage.url"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(1));
    }

    #[test]
    fn waiting_for_the_first_export_is_reconciling_and_not_stalled() {
        let mut states = BTreeMap::from([exported("3.6.1.4")]);
        states.get_mut("3.6.1.4").unwrap().last_export = None;
        let view = ExportView {
            states,
            ..Default::default()
        };
        let mut s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        set_progress(&mut s, Some(1), at(5));
        assert_eq!(kstatus(&s), ("False".into(), "True".into()));
        assert_eq!(cond(&s, "Reconciling").unwrap().reason, "Waiting");
    }

    #[test]
    fn a_ready_policy_is_neither_stalled_nor_reconciling_and_an_error_is_neither() {
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let mut s = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        set_progress(&mut s, Some(1), at(5));
        assert_eq!(kstatus(&s), ("False".into(), "False".into()));
        // A missing Secret: not Ready, and nothing the operator does by itself; but it is
        // fixed by creating the Secret, which Flux may apply later: InProgress, not Failed.
        let view = ExportView {
            setup_error: Some(("SecretMissing".into(), "Secret kong/x not found".into())),
            ..Default::default()
        };
        let mut s = desired_status(&s, Some(1), &[], Some(&view), at(6));
        set_progress(&mut s, Some(1), at(6));
        assert_eq!(kstatus(&s), ("False".into(), "False".into()));
        assert_eq!(cond(&s, "Ready").unwrap().status, "False");
    }

    #[test]
    fn a_suspended_policy_is_not_ready_and_says_so_once_with_an_event() {
        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let running = desired_status(&Default::default(), Some(1), &[], Some(&view), at(5));
        let mut s = desired_status(&running, Some(2), &[], None, at(6));
        set_suspended(&mut s, Some(2), at(6));
        set_progress(&mut s, Some(2), at(6));
        let c = cond(&s, "Ready").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Suspended")
        );
        assert!(
            c.message.contains("the webhook still injects"),
            "{}",
            c.message
        );
        assert_eq!(kstatus(&s), ("False".into(), "False".into()));
        let reasons: Vec<String> = changes(&running, &s)
            .into_iter()
            .map(|c| c.reason)
            .collect();
        assert!(reasons.contains(&"Suspended".to_owned()), "{reasons:?}");
        assert!(changes(&s, &s).is_empty());
        let resumed = desired_status(&s, Some(3), &[], Some(&view), at(7));
        let reasons: Vec<String> = changes(&s, &resumed)
            .into_iter()
            .map(|c| c.reason)
            .collect();
        assert!(reasons.contains(&"Resumed".to_owned()), "{reasons:?}");
    }

    #[test]
    fn events_follow_transitions_not_repeats() {
        let bad = desired_status(&Default::default(), Some(1), &[problem()], None, at(5));
        let ev = changes(&Default::default(), &bad);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].warning && ev[0].reason == "InvalidSpec");
        let again = desired_status(&bad, Some(1), &[problem()], None, at(6));
        assert!(changes(&bad, &again).is_empty());

        let view = ExportView {
            states: [exported("3.6.1.4")].into(),
            ..Default::default()
        };
        let good = desired_status(&bad, Some(2), &[], Some(&view), at(7));
        let reasons: Vec<(bool, String)> = changes(&bad, &good)
            .into_iter()
            .map(|c| (c.warning, c.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                (false, "Valid".to_owned()),
                (false, "Connected".to_owned()),
                (false, "Exported".to_owned())
            ]
        );
    }
}
