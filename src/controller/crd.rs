//! Is the installed CRD at least as new as this operator? Helm never upgrades `crds/`, and
//! an apiserver whose CRD lacks a field silently drops it from every object written: the
//! operator would then see policies without the field and write status without it. Pure:
//! compares the schema this binary was built with to the installed one.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The schema fields of `version` in `built` that `installed` does not have, as paths
/// (`spec.storage.caCert`, `spec.exporter.plugins[].name`, `status.conditions[]`), or the
/// version itself when `installed` does not serve it. Fields only `installed` has (a newer
/// CRD) are not a problem and are not reported.
pub fn missing_fields(
    built: &CustomResourceDefinition,
    installed: &CustomResourceDefinition,
    version: &str,
) -> Vec<String> {
    let schema = |crd: &CustomResourceDefinition| -> Option<Value> {
        let v = crd.spec.versions.iter().find(|v| v.name == version)?;
        if !v.served {
            return None;
        }
        serde_json::to_value(v.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()
    };
    let Some(built) = schema(built) else {
        return Vec::new();
    };
    let Some(installed) = schema(installed) else {
        return vec![format!("version {version}")];
    };
    let mut have = std::collections::BTreeSet::new();
    paths(&installed, "", &mut have);
    let mut want = std::collections::BTreeSet::new();
    paths(&built, "", &mut want);
    want.difference(&have).cloned().collect()
}

/// Every field path of a structural schema.
fn paths(schema: &Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
    let join = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let p = join(name);
            out.insert(p.clone());
            paths(sub, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        let p = format!("{at}[]");
        paths(items, &p, out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        let p = join("*");
        paths(values, &p, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FallbackConfigPolicy;
    use kube::CustomResourceExt;

    fn without(path: &[&str]) -> CustomResourceDefinition {
        let mut crd = serde_json::to_value(FallbackConfigPolicy::crd()).unwrap();
        let mut at = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let (last, parents) = path.split_last().unwrap();
        for p in parents {
            at = &mut at["properties"][*p];
        }
        at["properties"]
            .as_object_mut()
            .unwrap()
            .remove(*last)
            .unwrap();
        serde_json::from_value(crd).unwrap()
    }

    #[test]
    fn the_same_crd_lacks_nothing() {
        let crd = FallbackConfigPolicy::crd();
        assert_eq!(
            missing_fields(&crd, &crd, crate::api::VERSION),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_older_crd_lacks_the_newer_fields_and_everything_under_them() {
        let built = FallbackConfigPolicy::crd();
        let older = without(&["spec", "exporter"]);
        let missing = missing_fields(&built, &older, crate::api::VERSION);
        assert!(missing.contains(&"spec.exporter".to_owned()), "{missing:?}");
        assert!(
            missing.contains(&"spec.exporter.mode".to_owned()),
            "{missing:?}"
        );
        assert!(
            missing.iter().all(|p| p.starts_with("spec.exporter")),
            "{missing:?}"
        );
        // A newer CRD (the built one lacks a field it has) is fine.
        assert_eq!(
            missing_fields(&older, &built, crate::api::VERSION),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_crd_without_the_operators_version_lacks_the_version() {
        let built = FallbackConfigPolicy::crd();
        let mut other = built.clone();
        other.spec.versions[0].name = "v1alpha0".into();
        assert_eq!(
            missing_fields(&built, &other, crate::api::VERSION),
            ["version v1alpha1"]
        );
    }
}
