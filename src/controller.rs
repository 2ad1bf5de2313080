//! Reconciles `FallbackConfigPolicy` objects.
//!
//! Built so far: validation of every policy and its status (`Valid`, `Ready`, with
//! `observedGeneration` and stable transition times) written with server-side apply, and
//! an Event when a policy becomes invalid or valid again. Injection, election and export
//! are added by later work; until then `Ready` reflects validation only.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, CustomResourceExt, Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::{
    ConditionType, FIELD_MANAGER, FallbackConfigPolicy, FallbackConfigPolicyStatus, Problem,
    set_condition, validate,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the FallbackConfigPolicy CRD is not installed: install it with `kong-fallback-operator crd | kubectl apply --server-side -f -` (or `kubectl apply -f crds/`)"
    )]
    CrdMissing,
    #[error("the FallbackConfigPolicy CRD is installed but not Established yet")]
    CrdNotEstablished,
    #[error("failed to write the status of {policy}: {source}")]
    Status {
        policy: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A stable label for metrics and Events.
    pub fn label(&self) -> &'static str {
        match self {
            Error::CrdMissing => "crd_missing",
            Error::CrdNotEstablished => "crd_not_established",
            Error::Status { .. } => "status_write",
            Error::Kube(_) => "kube",
        }
    }
}

struct Context {
    client: Client,
    recorder: Recorder,
}

/// Checks that the CRD is installed and Established, so a missing CRD is one clear error
/// instead of a watch failing in a loop.
pub async fn check_crd(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = FallbackConfigPolicy::crd_name();
    let crd = crds.get_opt(name).await?.ok_or(Error::CrdMissing)?;
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    if established {
        Ok(())
    } else {
        Err(Error::CrdNotEstablished)
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(client: Client, instance: String) -> Result<(), Error> {
    check_crd(&client).await?;
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(instance),
            },
        ),
        client: client.clone(),
    });
    let policies: Api<FallbackConfigPolicy> = Api::all(client);
    info!("watching FallbackConfigPolicy objects in all namespaces");
    Controller::new(policies, watcher::Config::default().any_semantic())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}

async fn reconcile(policy: Arc<FallbackConfigPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let namespace = policy.namespace().unwrap_or_default();
    let problems = validate(&policy.spec);
    let current = policy.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let desired = desired_status(&current, policy.metadata.generation, &problems, now);

    if desired != current {
        let api: Api<FallbackConfigPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": FallbackConfigPolicy::api_version(&()),
            "kind": FallbackConfigPolicy::kind(&()),
            "status": desired,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Status {
            policy: format!("{namespace}/{name}"),
            source,
        })?;
        if was_valid(&current) != Some(problems.is_empty()) {
            publish_validity(&ctx, &policy, &problems).await;
        }
    }
    info!(policy = %name, namespace = %namespace, problems = problems.len(), "reconciled");
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(policy: Arc<FallbackConfigPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), error = %error, kind = error.label(), "reconcile error; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// The status a policy should have given its validation result. Pure.
pub fn desired_status(
    current: &FallbackConfigPolicyStatus,
    generation: Option<i64>,
    problems: &[Problem],
    now: Time,
) -> FallbackConfigPolicyStatus {
    let mut status = current.clone();
    status.observed_generation = generation;
    let valid = problems.is_empty();
    let (reason, message) = if valid {
        ("Valid", "the spec is valid".to_owned())
    } else {
        ("InvalidSpec", summary(problems))
    };
    set_condition(
        &mut status.conditions,
        ConditionType::Valid,
        valid,
        reason,
        &message,
        generation,
        now.clone(),
    );
    set_condition(
        &mut status.conditions,
        ConditionType::Ready,
        valid,
        reason,
        &message,
        generation,
        now,
    );
    status
}

fn was_valid(status: &FallbackConfigPolicyStatus) -> Option<bool> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Valid.as_str())
        .map(|c| c.status == "True")
}

fn summary(problems: &[Problem]) -> String {
    let all: Vec<String> = problems.iter().map(Problem::to_string).collect();
    format!("{} problem(s): {}", problems.len(), all.join("; "))
}

async fn publish_validity(ctx: &Context, policy: &FallbackConfigPolicy, problems: &[Problem]) {
    let event = if problems.is_empty() {
        Event {
            type_: EventType::Normal,
            reason: "Valid".into(),
            note: Some("the spec is valid".into()),
            action: "Validate".into(),
            secondary: None,
        }
    } else {
        // NB: an Event note is limited to 1 KiB by the apiserver.
        let mut note = summary(problems);
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        Event {
            type_: EventType::Warning,
            reason: "InvalidSpec".into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        }
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(error = %e, "failed to publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn problem() -> Problem {
        Problem {
            field: "spec.storage.url".into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn an_invalid_spec_makes_ready_false_with_every_problem_in_the_message() {
        let s = desired_status(&Default::default(), Some(2), &[problem(), problem()], at(5));
        assert_eq!(s.observed_generation, Some(2));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(
            ready.message,
            "2 problem(s): spec.storage.url: bad; spec.storage.url: bad"
        );
        assert_eq!(ready.observed_generation, Some(2));
    }

    #[test]
    fn reconciling_an_unchanged_policy_yields_the_same_status() {
        let first = desired_status(&Default::default(), Some(1), &[], at(5));
        let again = desired_status(&first, Some(1), &[], at(50));
        assert_eq!(first, again);
    }

    #[test]
    fn fixing_the_spec_flips_ready_and_its_transition_time() {
        let bad = desired_status(&Default::default(), Some(1), &[problem()], at(5));
        let good = desired_status(&bad, Some(2), &[], at(9));
        let ready = good.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time, at(9));
        assert_eq!(was_valid(&good), Some(true));
    }
}
