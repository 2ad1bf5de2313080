//! Every rule of a spec, once more. The apiserver already enforces patterns, enums and the
//! CEL rules on the types (the cross-field rules included); [`validate`] checks those again
//! for objects stored before a rule existed, plus what CEL cannot say (plugins listed twice
//! under `-`/`_` spellings, beyond the CEL cost budget; two selectors being equal; label-key
//! prefix lengths), and returns every problem at once, each naming its field, so a person
//! fixes the spec in one round.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration as StdDuration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{ExporterMode, FallbackConfigPolicySpec};
use crate::kong::{KongVersion, Provider, StorageUrl};

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, e.g. `spec.storage.region`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The largest configuration the operator will hold in memory, whatever the spec says.
const MAX_CONFIG_SIZE_CEILING: u64 = 1 << 30;
/// Kong's least `cluster_max_payload` (`kong/conf_loader/parse.lua`: "must be 4194304 (4MB)
/// or greater").
const MIN_CLUSTER_MAX_PAYLOAD: u64 = 4 << 20;

/// Every problem of `spec`; empty when it is valid.
pub fn validate(spec: &FallbackConfigPolicySpec) -> Vec<Problem> {
    let mut p = Problems::default();

    let url = match StorageUrl::parse(&spec.storage.url) {
        Ok(url) => Some(url),
        Err(e) => {
            p.add("spec.storage.url", e.to_string());
            None
        }
    };

    check_selector(
        &mut p,
        "spec.dataPlanes.selector",
        &spec.data_planes.selector,
    );
    if let Some(backup) = &spec.backup {
        check_selector(&mut p, "spec.backup.selector", &backup.selector);
        if backup.selector == spec.data_planes.selector {
            p.add(
                "spec.backup.selector",
                "equals spec.dataPlanes.selector: every pod would be both an importer and an exporter",
            );
        }
    }

    let storage = &spec.storage;
    // NB: whatever the credentials: Kong's S3 strategy (lua-resty-aws) errors "S3 region is
    // not configured" without AWS_REGION/AWS_DEFAULT_REGION, ambient identities included.
    if url.as_ref().map(|u| u.provider) == Some(Provider::S3) && storage.region.is_none() {
        p.add(
            "spec.storage.region",
            "required for s3:// storage: Kong refuses to use S3 without a region, whatever the credentials (any value, e.g. us-east-1, for most S3-compatible stores)",
        );
    }
    if let (Some(r), Some(w)) = (
        storage.read_credentials.secret(),
        storage.write_credentials.as_ref().and_then(|c| c.secret()),
    ) && r == w
    {
        p.add(
            "spec.storage.readCredentials.secretName",
            format!("names the same Secret as spec.storage.writeCredentials ({r:?}): importing data planes must not hold write access; use a read-only key"),
        );
    }

    for (field, c) in [
        (
            "spec.storage.readCredentials",
            Some(&storage.read_credentials),
        ),
        (
            "spec.storage.writeCredentials",
            storage.write_credentials.as_ref(),
        ),
    ] {
        let Some(c) = c else { continue };
        if c.name.is_some() && c.secret_name.is_some() {
            p.add(
                format!("{field}.name"),
                "set name or secretName (its older name), not both",
            );
        }
        if c.keys.is_some() && c.secret().is_none() {
            p.add(
                format!("{field}.keys"),
                "keys name the keys of a Secret: set name too",
            );
        }
    }
    if storage.ca_cert.is_some() && storage.ca_cert_ref.is_some() {
        p.add(
            "spec.storage.caCertRef",
            "set caCertRef or caCert (its older form), not both",
        );
    }

    let exporter = &spec.exporter;
    match exporter.mode {
        ExporterMode::Operator | ExporterMode::BackupPods
            if storage.write_credentials.is_none() =>
        {
            p.add(
                "spec.storage.writeCredentials",
                format!(
                    "required with exporter.mode {:?}: the exporter needs write access",
                    exporter.mode
                ),
            );
        }
        _ => {}
    }
    match (exporter.mode, &spec.backup) {
        (ExporterMode::BackupPods, None) => p.add(
            "spec.backup",
            "required with exporter.mode BackupPods: it selects the pods that export",
        ),
        (ExporterMode::Operator | ExporterMode::None, Some(_)) => p.add(
            "spec.backup",
            format!(
                "backup pods export only with exporter.mode BackupPods (mode is {:?}); two exporters would overwrite each other",
                exporter.mode
            ),
        ),
        _ => {}
    }

    let mut seen = BTreeSet::new();
    for (i, v) in exporter.versions.iter().enumerate() {
        let field = format!("spec.exporter.versions[{i}]");
        if let Err(e) = v.parse::<KongVersion>() {
            p.add(&field, e.to_string());
        } else if !seen.insert(v.as_str()) {
            p.add(&field, format!("{v} is listed twice"));
        }
    }
    let mut names = BTreeSet::new();
    for (i, plugin) in exporter.plugins.iter().enumerate() {
        if !names.insert(plugin.name.replace('-', "_")) {
            p.add(
                format!("spec.exporter.plugins[{i}].name"),
                format!("plugin {} is listed twice", plugin.name),
            );
        }
    }
    if let Some(max) = exporter
        .control_plane
        .as_ref()
        .and_then(|c| c.max_payload.as_deref())
    {
        match parse_quantity(max) {
            Some(n) if (MIN_CLUSTER_MAX_PAYLOAD..=MAX_CONFIG_SIZE_CEILING).contains(&n) => {}
            _ => p.add(
                "spec.exporter.controlPlane.maxPayload",
                format!("{max:?} must be between 4Mi (Kong's minimum cluster_max_payload) and 1Gi"),
            ),
        }
    }
    match parse_quantity(&exporter.max_config_size) {
        Some(0) | None => p.add(
            "spec.exporter.maxConfigSize",
            format!(
                "{:?} is not a positive size such as 64Mi",
                exporter.max_config_size
            ),
        ),
        Some(n) if n > MAX_CONFIG_SIZE_CEILING => p.add(
            "spec.exporter.maxConfigSize",
            format!(
                "{} is above the 1Gi the operator supports",
                exporter.max_config_size
            ),
        ),
        Some(_) => {}
    }

    let e = &spec.election;
    let (ld, rd, rp) = (
        StdDuration::from(e.lease_duration),
        StdDuration::from(e.renew_deadline),
        StdDuration::from(e.retry_period),
    );
    if rp.is_zero() {
        p.add("spec.election.retryPeriod", "must be greater than 0");
    }
    if ld <= rd {
        p.add(
            "spec.election.leaseDuration",
            format!("must be greater than renewDeadline ({rd:?}), got {ld:?}"),
        );
    }
    if rd.as_secs_f64() <= 1.2 * rp.as_secs_f64() {
        p.add(
            "spec.election.renewDeadline",
            format!("must be greater than 1.2 x retryPeriod ({rp:?}), got {rd:?}"),
        );
    }
    for (field, d) in [
        ("spec.exporter.minInterval", exporter.min_interval),
        (
            "spec.storage.validationInterval",
            storage.validation_interval,
        ),
        ("spec.election.leaseDuration", e.lease_duration),
        ("spec.election.renewDeadline", e.renew_deadline),
        ("spec.election.retryPeriod", e.retry_period),
    ] {
        if d.is_negative() {
            p.add(field, "must not be negative");
        }
    }

    p.0
}

fn check_selector(p: &mut Problems, field: &str, s: &LabelSelector) {
    let empty = s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|m| m.is_empty());
    if empty {
        p.add(
            field,
            "must not be empty: an empty selector would claim every pod in the namespace",
        );
    }
    for (k, v) in s.match_labels.iter().flatten() {
        if let Err(why) = check_label_key(k) {
            p.add(
                format!("{field}.matchLabels"),
                format!("{k:?} is not a label key: {why}"),
            );
        }
        if let Err(why) = check_label_value(v) {
            p.add(
                format!("{field}.matchLabels[{k}]"),
                format!("{v:?} is not a label value: {why}"),
            );
        }
    }
    for (i, expr) in s.match_expressions.iter().flatten().enumerate() {
        if let Err(why) = check_label_key(&expr.key) {
            p.add(
                format!("{field}.matchExpressions[{i}].key"),
                format!("{:?} is not a label key: {why}", expr.key),
            );
        }
        for v in expr.values.iter().flatten() {
            if let Err(why) = check_label_value(v) {
                p.add(
                    format!("{field}.matchExpressions[{i}].values"),
                    format!("{v:?} is not a label value: {why}"),
                );
            }
        }
        let values = expr.values.as_ref().map_or(0, Vec::len);
        let ok = match expr.operator.as_str() {
            "In" | "NotIn" => values > 0,
            "Exists" | "DoesNotExist" => values == 0,
            _ => false,
        };
        if !ok {
            p.add(
                format!("{field}.matchExpressions[{i}]"),
                format!(
                    "operator {:?} with {values} values: In/NotIn need values, Exists/DoesNotExist take none",
                    expr.operator
                ),
            );
        }
    }
}

/// Kubernetes' `IsQualifiedName`: `[prefix/]name`, the prefix a DNS subdomain of at most
/// 253 characters, the name 1-63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
fn check_label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(
                "the prefix before '/' must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)",
            );
        }
    }
    if name.is_empty() || name.len() > 63 {
        return Err("the name must have 1 to 63 characters");
    }
    name_chars_ok(name)
}

/// Kubernetes' `IsValidLabelValue`: empty, or a name as in [`check_label_key`].
fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err("at most 63 characters");
    }
    name_chars_ok(value)
}

fn name_chars_ok(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    if !b
        .iter()
        .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        || !b.first().is_some_and(alnum)
        || !b.last().is_some_and(alnum)
    {
        return Err(
            "only letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// A Kubernetes quantity limited to the forms a size takes here: `123`, `64Mi`, `1G`.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> FallbackConfigPolicySpec {
        serde_json::from_value(v).unwrap()
    }

    fn valid() -> serde_json::Value {
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {
                "url": "s3://bucket/prefix",
                "region": "us-east-2",
                "readCredentials": {"secretName": "fallback-read"},
                "writeCredentials": {"secretName": "fallback-write"}
            },
            "exporter": {
                "mode": "Operator",
                "controlPlane": {"endpoint": "kong-cp.kong.svc:8005", "clusterCertSecret": "kong-cluster-cert"}
            }
        })
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn a_complete_operator_mode_spec_is_valid() {
        assert_eq!(validate(&spec(valid())), vec![]);
    }

    #[test]
    fn every_problem_is_reported_at_once_each_naming_its_field() {
        let mut v = valid();
        v["storage"]["url"] = json!("s3://ab/x");
        v["storage"]
            .as_object_mut()
            .unwrap()
            .remove("writeCredentials");
        v["dataPlanes"]["selector"] = json!({});
        v["election"] = json!({"leaseDuration": "5s", "renewDeadline": "10s", "retryPeriod": "2s"});
        let problems = validate(&spec(v));
        assert_eq!(
            fields(&problems),
            [
                "spec.storage.url",
                "spec.dataPlanes.selector",
                "spec.storage.writeCredentials",
                "spec.election.leaseDuration",
            ]
        );
        for p in &problems {
            assert!(p.to_string().starts_with(&p.field), "{p}");
        }
    }

    #[test]
    fn credentials_take_name_or_secret_name_and_keys_only_with_a_secret() {
        let mut v = valid();
        v["storage"]["readCredentials"] = json!({"name": "r", "keys": {"accessKeyId": "id"}});
        assert_eq!(validate(&spec(v.clone())), vec![]);
        v["storage"]["readCredentials"] = json!({"name": "r", "secretName": "r2"});
        assert_eq!(
            fields(&validate(&spec(v.clone()))),
            ["spec.storage.readCredentials.name"]
        );
        v["storage"]["readCredentials"] = json!({"ambient": true, "keys": {"accessKeyId": "id"}});
        assert_eq!(
            fields(&validate(&spec(v.clone()))),
            ["spec.storage.readCredentials.keys"]
        );
        // `name` and `secretName` are one Secret for the read/write rule.
        v["storage"]["readCredentials"] = json!({"name": "fallback-write"});
        assert_eq!(
            fields(&validate(&spec(v.clone()))),
            ["spec.storage.readCredentials.secretName"]
        );
        v["storage"]["readCredentials"] = json!({"secretName": "r"});
        v["storage"]["caCert"] = json!({"secretName": "ca", "key": "ca.crt"});
        v["storage"]["caCertRef"] = json!({"name": "ca", "key": "ca.crt"});
        assert_eq!(fields(&validate(&spec(v))), ["spec.storage.caCertRef"]);
    }

    #[test]
    fn s3_without_region_is_refused_whatever_the_credentials() {
        let mut v = valid();
        v["storage"].as_object_mut().unwrap().remove("region");
        assert_eq!(fields(&validate(&spec(v.clone()))), ["spec.storage.region"]);
        v["storage"]["readCredentials"] = json!({"ambient": true});
        v["storage"]["writeCredentials"] = json!({"ambient": true});
        assert_eq!(fields(&validate(&spec(v))), ["spec.storage.region"]);
    }

    #[test]
    fn gcs_needs_no_region() {
        let mut v = valid();
        v["storage"]["url"] = json!("gcs://bucket/prefix");
        v["storage"].as_object_mut().unwrap().remove("region");
        assert_eq!(validate(&spec(v)), vec![]);
    }

    #[test]
    fn importers_must_not_share_the_write_secret() {
        let mut v = valid();
        v["storage"]["readCredentials"] = json!({"secretName": "fallback-write"});
        let problems = validate(&spec(v));
        assert_eq!(
            fields(&problems),
            ["spec.storage.readCredentials.secretName"]
        );
        assert!(problems[0].message.contains("write access"));
    }

    #[test]
    fn backup_pods_mode_needs_a_backup_selector_and_other_modes_refuse_one() {
        let mut v = valid();
        v["exporter"]["mode"] = json!("BackupPods");
        assert_eq!(fields(&validate(&spec(v.clone()))), ["spec.backup"]);
        v["backup"] = json!({"selector": {"matchLabels": {"app": "kong-backup"}}});
        assert_eq!(validate(&spec(v.clone())), vec![]);
        v["exporter"]["mode"] = json!("Operator");
        assert_eq!(fields(&validate(&spec(v))), ["spec.backup"]);
    }

    #[test]
    fn a_backup_selector_equal_to_the_data_plane_selector_is_a_conflict() {
        let mut v = valid();
        v["exporter"]["mode"] = json!("BackupPods");
        v["backup"] = json!({"selector": {"matchLabels": {"app": "kong-dp"}}});
        assert_eq!(fields(&validate(&spec(v))), ["spec.backup.selector"]);
    }

    #[test]
    fn bad_match_expressions_are_named_by_index() {
        let mut v = valid();
        v["dataPlanes"]["selector"] = json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["kong"]},
            {"key": "tier", "operator": "Exists", "values": ["x"]},
            {"key": "x", "operator": "Near"}
        ]});
        assert_eq!(
            fields(&validate(&spec(v))),
            [
                "spec.dataPlanes.selector.matchExpressions[1]",
                "spec.dataPlanes.selector.matchExpressions[2]"
            ]
        );
    }

    #[test]
    fn label_keys_and_values_must_have_kubernetes_syntax() {
        let mut v = valid();
        v["dataPlanes"]["selector"] = json!({
            "matchLabels": {"app": "a'b", "example.com/tier": "edge", "bad key": "x"},
            "matchExpressions": [
                {"key": "ok", "operator": "In", "values": ["x') || true || ('"]},
                {"key": "-x", "operator": "Exists"},
                {"key": "Upper.Case/x", "operator": "Exists"}
            ]
        });
        assert_eq!(
            fields(&validate(&spec(v))),
            [
                "spec.dataPlanes.selector.matchLabels[app]",
                "spec.dataPlanes.selector.matchLabels",
                "spec.dataPlanes.selector.matchExpressions[0].values",
                "spec.dataPlanes.selector.matchExpressions[1].key",
                "spec.dataPlanes.selector.matchExpressions[2].key",
            ]
        );
        for (key, ok) in [
            ("app", true),
            ("app.kubernetes.io/name", true),
            ("a/b", true),
            ("x".repeat(63).as_str(), true),
            ("x".repeat(64).as_str(), false),
            ("/name", false),
            ("a/", false),
            ("a/b/c", false),
            ("-a.b/c", false),
        ] {
            assert_eq!(check_label_key(key).is_ok(), ok, "{key}");
        }
        for (value, ok) in [
            ("", true),
            ("a", true),
            ("a-b_c.d", true),
            ("a-", false),
            ("a b", false),
        ] {
            assert_eq!(check_label_value(value).is_ok(), ok, "{value:?}");
        }
    }

    fn regex_lite_match(pattern: &str) -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(pattern).unwrap();
        move |s| re.is_match(s)
    }

    #[test]
    fn the_schema_patterns_agree_with_the_label_checks() {
        // The apiserver applies the patterns; validate() applies the Rust checks: one rule.
        let key = regex_lite_match(crate::api::LABEL_KEY_PATTERN);
        let value = regex_lite_match(crate::api::LABEL_VALUE_PATTERN);
        for k in [
            "app",
            "app.kubernetes.io/name",
            "a_b",
            "a'b",
            "/x",
            "a/b/c",
            "-a",
            "A/b",
        ] {
            assert_eq!(key(k), check_label_key(k).is_ok(), "{k}");
        }
        for v in ["", "a", "a'b", "a-", "edge", "x') || true"] {
            assert_eq!(value(v), check_label_value(v).is_ok(), "{v}");
        }
    }

    #[test]
    fn an_empty_storage_prefix_is_refused_naming_the_url() {
        for url in ["s3://bucket", "s3://bucket/", "gcs://bucket"] {
            let mut v = valid();
            v["storage"]["url"] = json!(url);
            let problems = validate(&spec(v));
            assert_eq!(fields(&problems), ["spec.storage.url"], "{url}");
            assert!(problems[0].message.contains("no prefix"), "{}", problems[0]);
        }
    }

    #[test]
    fn versions_must_be_full_and_unique() {
        let mut v = valid();
        v["exporter"]["versions"] = json!(["3.6.1.4", "3.6", "3.6.1.4", "3.9.1"]);
        assert_eq!(
            fields(&validate(&spec(v))),
            ["spec.exporter.versions[1]", "spec.exporter.versions[2]"]
        );
    }

    #[test]
    fn duplicate_plugins_are_refused_even_with_dash_and_underscore_spellings() {
        let mut v = valid();
        v["exporter"]["plugins"] = json!([
            {"name": "my-auth", "version": "1.0.0"},
            {"name": "my_auth", "version": "1.0.0"}
        ]);
        assert_eq!(
            fields(&validate(&spec(v))),
            ["spec.exporter.plugins[1].name"]
        );
    }

    #[test]
    fn max_config_size_must_be_positive_and_bounded() {
        for (size, ok) in [
            ("64Mi", true),
            ("1Gi", true),
            ("0", false),
            ("2Gi", false),
            ("10Xi", false),
        ] {
            let mut v = valid();
            v["exporter"]["maxConfigSize"] = json!(size);
            assert_eq!(validate(&spec(v)).is_empty(), ok, "{size}");
        }
    }

    #[test]
    fn election_timings_follow_client_go_rules() {
        let mut v = valid();
        v["election"] = json!({"leaseDuration": "15s", "renewDeadline": "2s", "retryPeriod": "2s"});
        assert_eq!(
            fields(&validate(&spec(v.clone()))),
            ["spec.election.renewDeadline"]
        );
        v["election"] =
            json!({"leaseDuration": "15s", "renewDeadline": "10s", "retryPeriod": "0s"});
        assert_eq!(fields(&validate(&spec(v))), ["spec.election.retryPeriod"]);
    }

    #[test]
    fn max_payload_follows_kongs_bounds() {
        for (size, ok) in [
            ("16Mi", true),
            ("4Mi", true),
            ("3Mi", false),
            ("2Gi", false),
            ("x", false),
        ] {
            let mut v = valid();
            v["exporter"]["controlPlane"]["maxPayload"] = json!(size);
            assert_eq!(validate(&spec(v)).is_empty(), ok, "{size}");
        }
    }

    #[test]
    fn quantities_parse_binary_and_decimal_units() {
        assert_eq!(parse_quantity("64Mi"), Some(64 << 20));
        assert_eq!(parse_quantity("5M"), Some(5_000_000));
        assert_eq!(parse_quantity("123"), Some(123));
        assert_eq!(parse_quantity("Mi"), None);
        assert_eq!(parse_quantity("1.5Gi"), None);
    }
}
