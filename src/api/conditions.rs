//! Condition helpers: a condition keeps its `lastTransitionTime` unless its status flips,
//! so a status written again with the same facts is byte-for-byte the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition types a policy reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// Summary: the policy does its job. kstatus and Flux read this one; Argo CD through
    /// `deploy/argocd/health.lua`.
    Ready,
    /// The spec passed validation.
    Valid,
    /// The storage answered a cheap request made with the read credentials.
    StorageReachable,
    /// Every selected pod carries the current injection.
    PodsInjected,
    /// The exporter is connected to the Kong control plane and receives configurations.
    ControlPlaneConnected,
    /// Configurations are being written to storage.
    Exporting,
    /// The election has a healthy leader.
    Leading,
    /// The store enforces conditional writes, so a replaced leader cannot overwrite a
    /// newer export (Operator mode; known once the leader has checked).
    Fencing,
    /// kstatus' abnormal-true condition: True while the operator works towards `Ready`
    /// on its own (connecting, waiting for the first configuration). kstatus, Flux and
    /// `kubectl wait` read it as InProgress.
    Reconciling,
    /// kstatus' abnormal-true condition: True when the operator cannot make progress
    /// until a person changes something (an invalid spec). Read as Failed.
    Stalled,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Valid => "Valid",
            ConditionType::StorageReachable => "StorageReachable",
            ConditionType::PodsInjected => "PodsInjected",
            ConditionType::ControlPlaneConnected => "ControlPlaneConnected",
            ConditionType::Exporting => "Exporting",
            ConditionType::Leading => "Leading",
            ConditionType::Fencing => "Fencing",
            ConditionType::Reconciling => "Reconciling",
            ConditionType::Stalled => "Stalled",
        }
    }
}

/// Sets condition `type_` in `conditions`, keeping its transition time when the status
/// did not change. Returns whether anything other than `now` would differ.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let status = if status { "True" } else { "False" };
    set_condition_status(
        conditions,
        type_,
        status,
        reason,
        message,
        observed_generation,
        now,
    )
}

/// [`set_condition`] with the status as text: `True`, `False` or `Unknown` (a check the
/// operator cannot make).
pub fn set_condition_status(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let existing = conditions.iter_mut().find(|c| c.type_ == type_.as_str());
    match existing {
        Some(c) => {
            let changed = c.status != status
                || c.reason != reason
                || c.message != message
                || c.observed_generation != observed_generation;
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message.to_owned();
            c.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.as_str().to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_new_condition_is_added_with_the_current_time() {
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            ConditionType::Ready,
            false,
            "Invalid",
            "bad",
            Some(1),
            at(10)
        ));
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].type_, "Ready");
        assert_eq!(cs[0].status, "False");
        assert_eq!(cs[0].last_transition_time, at(10));
    }

    #[test]
    fn the_transition_time_is_kept_while_the_status_does_not_flip() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            ConditionType::Ready,
            false,
            "A",
            "a",
            Some(1),
            at(10),
        );
        assert!(set_condition(
            &mut cs,
            ConditionType::Ready,
            false,
            "B",
            "b",
            Some(2),
            at(20)
        ));
        assert_eq!(cs[0].last_transition_time, at(10));
        assert_eq!(cs[0].reason, "B");
        assert!(set_condition(
            &mut cs,
            ConditionType::Ready,
            true,
            "Ok",
            "",
            Some(2),
            at(30)
        ));
        assert_eq!(cs[0].last_transition_time, at(30));
    }

    #[test]
    fn setting_the_same_facts_again_reports_no_change() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            ConditionType::Valid,
            true,
            "Valid",
            "",
            Some(3),
            at(10),
        );
        let before = cs.clone();
        assert!(!set_condition(
            &mut cs,
            ConditionType::Valid,
            true,
            "Valid",
            "",
            Some(3),
            at(99)
        ));
        assert_eq!(cs, before);
    }
}
