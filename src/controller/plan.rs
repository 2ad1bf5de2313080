//! Gathering what a policy's exporters need: the versions to export (explicit, or seen
//! among the selected data planes), the cluster certificate and the write credentials.
//! The decisions are pure functions; [`build`] does the reads.
//!
//! Also the home of what the exporters, the backup-pod designation (`backup`) and
//! the storage probe share: the [`Plan`], a policy's [`PolicyKey`], the [`fingerprint`]
//! of a plan's inputs, and the Secret and selector helpers. It imports none of them, so
//! the dependencies run one way: `exporters` -> `backup` -> `plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{FallbackConfigPolicy, MtlsMode, ServerSideEncryption, max_config_bytes};
use crate::cp_client::{ClientSettings, DEFAULT_MAX_FRAME};
use crate::kong::{Provider, StorageUrl, VERSION_ANNOTATION, env, version_from_image};
use crate::storage::Access;
use crate::storage::gcs::GcsCredentials;
use crate::storage::s3::{PutExtras, S3Credentials, S3Settings, StaticCredentials};

use super::secrets::SecretReader;

/// `(namespace, name)` of a policy.
pub type PolicyKey = (String, String);

/// Everything one policy's exporters need; `fingerprint` changes when any input does.
pub struct Plan {
    pub fingerprint: u64,
    pub url: StorageUrl,
    pub access: Access,
    /// Client settings without version and plugins (filled per version).
    pub client: ClientSettings,
    pub custom_plugins: Vec<(String, String)>,
    /// Per version, the plugins the data planes enable where they set `KONG_PLUGINS`.
    pub dp_plugins: BTreeMap<String, BTreeSet<String>>,
    pub versions: Vec<String>,
    pub min_interval: Duration,
    pub history_limit: usize,
    /// Register the leader in the store's `election/` prefix (spec.election.mirrorToStorage).
    pub mirror: bool,
    /// Whether followers keep their control-plane sessions open.
    pub standby: crate::api::Standby,
    /// The policy object's UID: the node ids derive from it.
    pub policy_uid: String,
}

/// A stable hash of the inputs of a plan.
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Why the exporters cannot start: a condition reason and a message a person can act on.
pub type SetupError = (String, String);

/// A label selector as the API's query syntax.
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The Kong version of a data-plane pod: its annotation, else the image tag of its Kong
/// container when the image is Kong's or in `trusted` (`spec.dataPlanes.imageRepositories`).
pub fn pod_version(
    pod: &Pod,
    container: Option<&str>,
    trusted: &[String],
) -> Result<String, String> {
    let name = pod.name_any();
    if let Some(v) = pod.annotations().get(VERSION_ANNOTATION) {
        return v
            .parse::<crate::kong::KongVersion>()
            .map(|v| v.to_string())
            .map_err(|e| format!("pod {name}: annotation {VERSION_ANNOTATION}: {e}"));
    }
    let Some(c) = kong_container(pod, container) else {
        return Err(format!(
            "pod {name}: no Kong container (set spec.dataPlanes.container)"
        ));
    };
    let image = c.image.as_deref().unwrap_or_default();
    version_from_image(image, trusted)
        .map(|v| v.to_string())
        .map_err(|e| format!("pod {name}: {e}"))
}

/// The Kong container of a pod: `container` if named, else `proxy`, else the only one.
pub fn kong_container<'a>(
    pod: &'a Pod,
    container: Option<&str>,
) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    match container {
        Some(c) => containers.iter().find(|x| x.name == c),
        None => containers
            .iter()
            .find(|x| x.name == "proxy")
            .or(if containers.len() == 1 {
                containers.first()
            } else {
                None
            }),
    }
}

/// Per Kong version, the plugins that every data plane of that version which sets
/// `KONG_PLUGINS` in its Kong container enables; versions none of whose pods sets it are
/// absent (Kong's default, `bundled`). A value from a ConfigMap or Secret is not read here.
pub fn dp_plugins(
    pods: &[Pod],
    container: Option<&str>,
    trusted: &[String],
    custom: &[(String, String)],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in pods {
        let Ok(version) = pod_version(pod, container, trusted) else {
            continue;
        };
        let Some(setting) = kong_container(pod, container)
            .and_then(|c| c.env.as_ref())
            .and_then(|env| env.iter().find(|e| e.name == "KONG_PLUGINS"))
            .and_then(|e| e.value.clone())
        else {
            continue;
        };
        let Ok(parsed) = version.parse::<crate::kong::KongVersion>() else {
            continue;
        };
        let candidates: BTreeSet<String> =
            crate::cp_client::plugins::announced(&parsed, custom, None)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
        let enabled = crate::cp_client::plugins::enabled_by(&setting, &candidates);
        match out.get_mut(&version) {
            Some(set) => set.retain(|p| enabled.contains(p)),
            None => {
                out.insert(version, enabled);
            }
        }
    }
    out
}

/// Refuses write credentials `ambient: true` (the operator's own cloud identity) for a
/// policy outside `allowed` (`*` allows every namespace): ambient credentials would lend the
/// operator's identity to anyone who may create a policy. Pure.
pub fn ambient_write_allowed(
    spec: &crate::api::FallbackConfigPolicySpec,
    namespace: &str,
    allowed: &[String],
) -> Result<(), SetupError> {
    let ambient = spec
        .storage
        .write_credentials
        .as_ref()
        .is_some_and(|c| c.ambient == Some(true));
    if !ambient || allowed.iter().any(|a| a == "*" || a == namespace) {
        return Ok(());
    }
    Err((
        "AmbientNotAllowed".to_owned(),
        format!(
            "spec.storage.writeCredentials.ambient would write with the operator's own cloud identity, which this install allows only in namespaces {:?}: use a Secret, or add {namespace} to the chart value ambientWriteNamespaces (run --ambient-write-namespaces)",
            allowed
        ),
    ))
}

/// A note when the policy's `maxConfigSize` is above the operator-wide ceiling. Pure.
pub fn ceiling_note(max_config_size: &str, ceiling: usize) -> Option<String> {
    (max_config_bytes(max_config_size) > ceiling).then(|| {
        format!(
            "spec.exporter.maxConfigSize {max_config_size} is above the operator's --max-config-size ({} MiB), which applies",
            ceiling >> 20
        )
    })
}

/// The versions to export: explicit ones, else those of the pods; plus notes on pods
/// whose version is unknown.
pub fn versions(
    explicit: &[String],
    pods: &[Pod],
    container: Option<&str>,
    trusted: &[String],
) -> (Vec<String>, Vec<String>) {
    if !explicit.is_empty() {
        return (explicit.to_vec(), Vec::new());
    }
    let mut found = BTreeSet::new();
    let mut notes = Vec::new();
    for pod in pods {
        match pod_version(pod, container, trusted) {
            Ok(v) => {
                found.insert(v);
            }
            Err(e) => notes.push(e),
        }
    }
    (found.into_iter().collect(), notes)
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(key)?;
    String::from_utf8(data.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

async fn secret(
    reader: &SecretReader,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Secret, SetupError> {
    match reader.get(ns, name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err((
            "SecretMissing".into(),
            format!("Secret {ns}/{name} ({field}) not found"),
        )),
        Err(e) => Err((
            "SecretUnreadable".into(),
            format!("cannot read Secret {ns}/{name} ({field}): {e}"),
        )),
    }
}

fn require(secret: &Secret, ns: &str, key: &str) -> Result<String, SetupError> {
    text(secret, key).ok_or_else(|| {
        (
            "SecretKeyMissing".into(),
            format!("Secret {ns}/{} has no key {key}", secret.name_any()),
        )
    })
}

/// The CA bundle `spec.storage.caCert` names and the resource version of its Secret;
/// `None` when the policy names none. A bundle that is not PEM certificates is an error.
async fn ca_bundle(
    reader: &SecretReader,
    ns: &str,
    spec: &crate::api::FallbackConfigPolicySpec,
) -> Result<Option<(String, String)>, SetupError> {
    let Some((ca_name, ca_key)) = spec.storage.ca() else {
        return Ok(None);
    };
    let field = if spec.storage.ca_cert_ref.is_some() {
        "spec.storage.caCertRef"
    } else {
        "spec.storage.caCert"
    };
    let s = secret(reader, ns, ca_name, field).await?;
    let pem = text(&s, ca_key).ok_or_else(|| {
        (
            "SecretKeyMissing".to_owned(),
            format!("Secret {ns}/{ca_name} ({field}) has no key {ca_key}"),
        )
    })?;
    // NB: checked here too, so the condition names the Secret; the S3 client refuses it anyway.
    crate::storage::s3::trust_store(&pem).map_err(|e| {
        (
            "InvalidCaBundle".to_owned(),
            format!("Secret {ns}/{ca_name} ({field}) key {ca_key}: {e}"),
        )
    })?;
    Ok(Some((pem, s.resource_version().unwrap_or_default())))
}

/// Reads the Secrets `spec.storage` names for credentials and records in `facts` which keys
/// each holds, or that it is missing. A Secret that cannot be read is left as it was known.
pub async fn record_credential_secrets(
    reader: &SecretReader,
    ns: &str,
    spec: &crate::api::FallbackConfigPolicySpec,
    facts: &crate::webhook::SharedSecretFacts,
) {
    let names = [
        Some(&spec.storage.read_credentials),
        spec.storage.write_credentials.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|c| c.secret().map(str::to_owned))
    .collect::<std::collections::BTreeSet<_>>();
    for name in names {
        let keys = match reader.get(ns, &name).await {
            Ok(Some(s)) => Some(
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(_, v)| !v.0.is_empty())
                    .map(|(k, _)| k)
                    .collect(),
            ),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(secret = %name, namespace = %ns, error = %e, "cannot read a credentials Secret");
                continue;
            }
        };
        facts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .record(ns, &name, keys);
    }
}

/// The write access of `spec.storage` and the resource versions of the Secrets it read.
pub async fn write_access(
    reader: &SecretReader,
    ns: &str,
    spec: &crate::api::FallbackConfigPolicySpec,
    url: &StorageUrl,
) -> Result<(Access, Vec<String>), SetupError> {
    access(reader, ns, spec, url, true).await
}

/// The read access of `spec.storage` (what importers get), as [`write_access`].
pub async fn read_access(
    reader: &SecretReader,
    ns: &str,
    spec: &crate::api::FallbackConfigPolicySpec,
    url: &StorageUrl,
) -> Result<(Access, Vec<String>), SetupError> {
    access(reader, ns, spec, url, false).await
}

async fn access(
    reader: &SecretReader,
    ns: &str,
    spec: &crate::api::FallbackConfigPolicySpec,
    url: &StorageUrl,
    write: bool,
) -> Result<(Access, Vec<String>), SetupError> {
    let ns = ns.to_owned();
    let field = if write {
        "spec.storage.writeCredentials"
    } else {
        "spec.storage.readCredentials"
    };
    let creds = if write {
        spec.storage.write_credentials.as_ref()
    } else {
        Some(&spec.storage.read_credentials)
    };
    let creds = creds.ok_or_else(|| ("InvalidSpec".to_owned(), format!("{field} is required")))?;
    let mut versions_of_secrets = Vec::new();
    let access = match (url.provider, creds.secret()) {
        (Provider::S3, name) => {
            // NB: `ambient: true` (no Secret) is the operator's own identity: the SDK's
            // default credential chain of this process (IRSA, EKS Pod Identity...).
            let credentials: S3Credentials = match name {
                Some(name) => {
                    let s = secret(reader, &ns, name, field).await?;
                    versions_of_secrets.push(s.resource_version().unwrap_or_default());
                    StaticCredentials {
                        access_key_id: require(&s, &ns, creds.key(env::AWS_ACCESS_KEY_ID))?,
                        secret_access_key: require(&s, &ns, creds.key(env::AWS_SECRET_ACCESS_KEY))?,
                        session_token: text(&s, creds.key(env::AWS_SESSION_TOKEN)),
                    }
                    .into()
                }
                None => S3Credentials::Ambient,
            };
            // NB: its version joins the others, so a changed CA restarts the exporters.
            let ca_pem = match ca_bundle(reader, &ns, spec).await? {
                Some((pem, version)) => {
                    versions_of_secrets.push(version);
                    Some(pem)
                }
                None => None,
            };
            let p = spec.storage.put_options.as_ref();
            Access::S3 {
                settings: S3Settings {
                    // NB: never a default region: the data planes get none either, and
                    // validation refuses an s3:// policy without one.
                    region: spec.storage.region.clone().ok_or_else(|| {
                        (
                            "InvalidSpec".to_owned(),
                            "spec.storage.region is required for s3:// storage".to_owned(),
                        )
                    })?,
                    endpoint: spec.storage.endpoint.clone(),
                    credentials,
                    ca_pem,
                },
                extras: PutExtras {
                    server_side_encryption: p.and_then(|p| p.server_side_encryption).map(
                        |e| match e {
                            ServerSideEncryption::Aes256 => "AES256".to_owned(),
                            ServerSideEncryption::AwsKms => "aws:kms".to_owned(),
                        },
                    ),
                    kms_key_id: p.and_then(|p| p.kms_key_id.clone()),
                    storage_class: p.and_then(|p| p.storage_class.clone()),
                },
            }
        }
        // NB: spec.storage.caCert is not read for GCS: the google-cloud-storage client
        // builds its own HTTP client and takes no trust roots (see `storage::gcs`).
        (Provider::Gcs, Some(name)) => {
            let s = secret(reader, &ns, name, field).await?;
            versions_of_secrets.push(s.resource_version().unwrap_or_default());
            Access::Gcs {
                // NB: never spec.storage.endpoint (S3 only, like Kong's setting): an
                // emulator is named to the operator process, not in the policy.
                endpoint: crate::storage::gcs::emulator_from_env(),
                credentials: GcsCredentials::ServiceAccountJson(require(
                    &s,
                    &ns,
                    creds.key(env::GCP_SERVICE_ACCOUNT),
                )?),
                extras: gcs_extras(spec),
            }
        }
        (Provider::Gcs, None) => Access::Gcs {
            endpoint: crate::storage::gcs::emulator_from_env(),
            credentials: GcsCredentials::Ambient,
            extras: gcs_extras(spec),
        },
    };

    Ok((access, versions_of_secrets))
}

/// `spec.storage.gcsOptions` as the GCS store takes them.
fn gcs_extras(spec: &crate::api::FallbackConfigPolicySpec) -> crate::storage::gcs::PutExtras {
    let o = spec.storage.gcs_options.as_ref();
    crate::storage::gcs::PutExtras {
        kms_key_name: o.and_then(|o| o.kms_key_name.clone()),
        storage_class: o.and_then(|o| o.storage_class.clone()),
    }
}

/// Reads everything the exporters of `policy` need. `Err` names what is missing.
pub async fn build(
    client: &Client,
    reader: &SecretReader,
    policy: &FallbackConfigPolicy,
    identity: &str,
    ceiling: usize,
) -> Result<(Plan, Vec<String>), SetupError> {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let key: PolicyKey = (ns.clone(), policy.name_any());
    let url = StorageUrl::parse(&spec.storage.url)
        .map_err(|e| ("InvalidSpec".to_owned(), e.to_string()))?;
    let cp = spec.exporter.control_plane.as_ref().ok_or_else(|| {
        (
            "InvalidSpec".to_owned(),
            "spec.exporter.controlPlane is required".to_owned(),
        )
    })?;

    // NB: listed even with explicit versions: their KONG_PLUGINS narrow what is announced.
    let pods = {
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let lp = ListParams::default().labels(&selector_string(&spec.data_planes.selector));
        api.list(&lp)
            .await
            .map_err(|e| {
                (
                    "PodsUnreadable".to_owned(),
                    format!("cannot list the data-plane pods: {e}"),
                )
            })?
            .items
    };
    let (versions, mut notes) = versions(
        &spec.exporter.versions,
        &pods,
        spec.data_planes.container.as_deref(),
        &spec.data_planes.image_repositories,
    );
    if versions.is_empty() {
        let mut msg = "no Kong version to export: set spec.exporter.versions, or run data planes whose image tag or annotation names a full version".to_owned();
        if !notes.is_empty() {
            msg.push_str(&format!(" ({})", notes.join("; ")));
        }
        return Err(("NoVersions".into(), msg));
    }

    let cert = secret(
        reader,
        &ns,
        &cp.cluster_cert_secret,
        "spec.exporter.controlPlane.clusterCertSecret",
    )
    .await?;
    let cert_pem = require(&cert, &ns, "tls.crt")?;
    let key_pem = require(&cert, &ns, "tls.key")?;
    let ca_pem = match cp.mtls {
        MtlsMode::Pki => Some(require(&cert, &ns, "ca.crt")?),
        MtlsMode::Shared => None,
    };
    let (access, secret_versions) = write_access(reader, &ns, spec, &url).await?;
    let mut versions_of_secrets = vec![cert.resource_version().unwrap_or_default()];
    versions_of_secrets.extend(secret_versions);
    let custom_plugins: Vec<(String, String)> = spec
        .exporter
        .plugins
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    let dp_plugins = dp_plugins(
        &pods,
        spec.data_planes.container.as_deref(),
        &spec.data_planes.image_repositories,
        &custom_plugins,
    );
    let inputs = serde_json::to_string(&(
        &spec.exporter,
        &spec.storage,
        spec.election.mirror_to_storage,
        &dp_plugins,
    ))
    .unwrap_or_default();
    let fp = fingerprint(&[
        identity,
        &key.0,
        &key.1,
        &inputs,
        &versions.join(","),
        &versions_of_secrets.join(","),
    ]);
    let plan = Plan {
        fingerprint: fp,
        url,
        access,
        client: ClientSettings {
            endpoint: cp.endpoint.clone(),
            server_name: cp.server_name.clone().unwrap_or_else(|| match cp.mtls {
                MtlsMode::Shared => "kong_clustering".into(),
                MtlsMode::Pki => cp
                    .endpoint
                    .rsplit_once(':')
                    .map_or(cp.endpoint.clone(), |(h, _)| h.to_owned()),
            }),
            mtls: cp.mtls,
            cert_pem,
            key_pem,
            ca_pem,
            node_id: String::new(),
            hostname: identity.to_owned(),
            version: "0.0.0"
                .parse()
                .map_err(|_| ("Internal".to_owned(), "version".to_owned()))?,
            plugins: Vec::new(),
            filters: spec.exporter.wasm_filters.clone(),
            max_frame: cp
                .max_payload
                .as_deref()
                .and_then(crate::api::parse_quantity)
                .map_or(DEFAULT_MAX_FRAME, |n| n as usize),
            max_config: max_config_bytes(&spec.exporter.max_config_size).min(ceiling),
            keepalive: Default::default(),
        },
        custom_plugins,
        dp_plugins,
        versions,
        min_interval: Duration::from(spec.exporter.min_interval),
        history_limit: spec.exporter.history_limit as usize,
        mirror: spec.election.mirror_to_storage,
        standby: spec.exporter.standby,
        policy_uid: policy.uid().unwrap_or_default(),
    };
    if let Some(note) = ceiling_note(&spec.exporter.max_config_size, ceiling) {
        notes.push(note);
    }
    Ok((plan, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(name: &str, containers: &[(&str, &str)], annotation: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: annotation
                    .map(|v| [(VERSION_ANNOTATION.to_owned(), v.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|(n, i)| Container {
                        name: (*n).into(),
                        image: Some((*i).into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_render_in_the_api_query_syntax() {
        let s = LabelSelector {
            match_labels: Some(labels(&[("app", "kong-dp"), ("tier", "edge")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&s),
            "app=kong-dp,tier=edge,zone in (a,b),!canary"
        );
    }

    #[test]
    fn versions_come_from_the_proxy_container_the_annotation_or_the_only_container() {
        let pods = [
            pod(
                "a",
                &[
                    ("proxy", "kong/kong-gateway:3.6.1.4"),
                    ("sidecar", "envoy:1.30.0"),
                ],
                None,
            ),
            pod("b", &[("kong", "kong/kong-gateway:3.9.0.1-ubuntu")], None),
            pod("c", &[("proxy", "kong/kong-gateway:3.6")], Some("3.6.1.4")),
            pod("d", &[("proxy", "kong/kong-gateway:latest")], None),
            pod("e", &[("x", "a:1.0.0"), ("y", "b:2.0.0")], None),
        ];
        let (v, notes) = versions(&[], &pods, None, &[]);
        assert_eq!(v, ["3.6.1.4", "3.9.0.1"]);
        assert_eq!(notes.len(), 2);
        assert!(
            notes[0].starts_with("pod d:") && notes[0].contains(VERSION_ANNOTATION),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("set spec.dataPlanes.container"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_version_is_taken_only_from_kong_images_or_the_policys_repositories() {
        let pods = [
            pod("a", &[("proxy", "envoyproxy/envoy:1.30.0")], None),
            pod(
                "b",
                &[(
                    "proxy",
                    "registry.example.com/platform/kong-gateway:3.6.1.4",
                )],
                None,
            ),
        ];
        let (v, notes) = versions(&[], &pods, None, &[]);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes.iter().all(|n| n.contains("imageRepositories")),
            "{notes:?}"
        );
        let trusted = ["registry.example.com/platform/kong-gateway".to_owned()];
        let (v, _) = versions(&[], &pods, None, &trusted);
        assert_eq!(v, ["3.6.1.4"]);
    }

    #[test]
    fn ambient_writes_only_from_allowed_namespaces() {
        let spec = |ambient: bool| -> crate::api::FallbackConfigPolicySpec {
            let w = if ambient {
                serde_json::json!({"ambient": true})
            } else {
                serde_json::json!({"secretName": "w"})
            };
            serde_json::from_value(serde_json::json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {"url": "gcs://b/kong", "readCredentials": {"ambient": true}, "writeCredentials": w},
                "exporter": {"mode": "BackupPods"}
            }))
            .unwrap()
        };
        let e = ambient_write_allowed(&spec(true), "team-a", &[]).unwrap_err();
        assert_eq!(e.0, "AmbientNotAllowed");
        assert!(e.1.contains("team-a"), "{}", e.1);
        assert!(ambient_write_allowed(&spec(true), "kong", &["kong".into()]).is_ok());
        assert!(ambient_write_allowed(&spec(true), "any", &["*".into()]).is_ok());
        assert!(ambient_write_allowed(&spec(false), "team-a", &[]).is_ok());
    }

    #[test]
    fn the_operator_wide_ceiling_caps_a_policys_max_config_size() {
        assert_eq!(ceiling_note("64Mi", 64 << 20), None);
        let note = ceiling_note("1Gi", 64 << 20).unwrap();
        assert!(note.contains("1Gi") && note.contains("64 MiB"), "{note}");
    }

    #[test]
    fn explicit_versions_win_over_pods() {
        let pods = [pod("a", &[("proxy", "kong/kong-gateway:3.6.1.4")], None)];
        assert_eq!(
            versions(&["3.10.0.0".into()], &pods, None, &[]).0,
            ["3.10.0.0"]
        );
    }
}
