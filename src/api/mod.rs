//! The `FallbackConfigPolicy` custom resource (`fallback.kong-dp.io/v1alpha1`): its types,
//! defaults, schema-level validation (patterns, enums, CEL rules the apiserver enforces),
//! the pure [`validate`] for what a schema cannot express, and condition helpers.
//! Pure: nothing here talks to a cluster.
//!
//! The doc comments on the types are the user documentation: they become the CRD's
//! descriptions and `kubectl explain` output.

mod conditions;
mod validate;

pub use conditions::{ConditionType, set_condition, set_condition_status};
pub use validate::{Problem, parse_quantity, validate};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::Duration;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "fallback.kong-dp.io";
pub const VERSION: &str = "v1alpha1";
/// The field manager for everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "kong-fallback-operator";

/// One policy makes a set of Kong data planes resilient to a control plane outage: it says
/// which pods import the fallback configuration, where it is stored, and who exports it.
// NB: clippy reads the repeated `type_ = "string"` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fallback.kong-dp.io",
    version = "v1alpha1",
    kind = "FallbackConfigPolicy",
    plural = "fallbackconfigpolicies",
    shortname = "fcp",
    category = "kong",
    namespaced,
    status = "FallbackConfigPolicyStatus",
    derive = "PartialEq",
    doc = "FallbackConfigPolicy makes Kong data planes start with the last good configuration during a control plane outage: it selects importer and backup pods, injects Kong's cluster_fallback_config settings and storage credentials, elects one exporter per Kong version, and can export the configuration itself. See `kubectl explain fcp.spec`.",
    printcolumn(name = "Storage", type_ = "string", json_path = ".spec.storage.url"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.exporter.mode"),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader.identity"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// NB: these cross-field rules are also in `validate()`: objects stored before a rule
// existed (or kept by the apiserver's validation ratcheting) still get a clear status.
// `validate()` alone compares the two selectors: CEL types each selector schema apart and
// has no equality between them.
#[x_kube(validation = Rule::new("!(self.exporter.mode in ['Operator', 'BackupPods']) || has(self.storage.writeCredentials)").message("storage.writeCredentials is required with exporter.mode Operator or BackupPods: the exporter needs write access").field_path(".storage.writeCredentials").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.exporter.mode != 'BackupPods' || has(self.backup)").message("backup is required with exporter.mode BackupPods: it selects the pods that export").field_path(".backup").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.backup) || self.exporter.mode == 'BackupPods'").message("backup pods export only with exporter.mode BackupPods: two exporters would overwrite each other").field_path(".backup").reason(kube::core::Reason::FieldValueForbidden))]
pub struct FallbackConfigPolicySpec {
    /// The Kong data planes that import the fallback configuration when they start during
    /// a control plane outage. They receive read-only storage credentials.
    pub data_planes: DataPlanes,

    /// Optional: native Kong backup pods that export the configuration themselves
    /// (`exporter.mode: BackupPods`). They receive write credentials. A pod must not
    /// match both this selector and `dataPlanes.selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPods>,

    /// Where the fallback configuration is stored.
    pub storage: Storage,

    /// Who exports the configuration to storage. Required: choose `mode: Operator` (with
    /// `controlPlane`), `BackupPods` or `None`.
    pub exporter: Exporter,

    /// How the single exporter per Kong version is elected.
    #[serde(default)]
    pub election: Election,

    /// Pause the operator's work on this policy: it stops exporting and mirroring the
    /// election, designates no backup pod, restarts no workload, and reports
    /// `Ready=False` with reason `Suspended` (and an Event). The webhook keeps injecting:
    /// the env points new data planes at the last configuration stored, which is what they
    /// should load in an outage. Default false.
    #[serde(default)]
    pub suspend: bool,
}

/// The importing data planes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataPlanes {
    /// Labels of the Kong data plane pods in this namespace. An empty selector is refused:
    /// it would claim every pod in the namespace.
    #[schemars(schema_with = "label_selector_schema")]
    pub selector: LabelSelector,

    /// The container that runs Kong. Default: the container named `proxy` (the name Kong's
    /// Helm chart uses), else the pod's only container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,

    /// Restart the owners (Deployment, StatefulSet, DaemonSet) of pods that were created
    /// without the injection, at a bounded rate, the way `kubectl rollout restart` does.
    /// Default false: such pods are only reported in status.
    #[serde(default)]
    pub rollout: bool,

    /// Image repositories besides Kong's own (`kong`, `kong/kong`, `kong/kong-gateway`, from
    /// any registry) whose tags are the Kong version, e.g. a private rebuild
    /// `registry.example.com/platform/kong-gateway`. The tag of any other image is not
    /// trusted: such pods need the annotation `fallback.kong-dp.io/kong-version`. Applies
    /// to backup pods too. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9.:/_-]+$"))
    )]
    pub image_repositories: Vec<String>,
}

/// Native Kong backup pods (exporters).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupPods {
    /// Labels of the Kong backup pods in this namespace.
    #[schemars(schema_with = "label_selector_schema")]
    pub selector: LabelSelector,

    /// The container that runs Kong; same default as `dataPlanes.container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

/// The object store holding `<prefix>/<kong version>/config.json`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endpoint) || self.url.startsWith('s3://')").message("storage.endpoint is only for S3-compatible stores: use it with an s3:// url"))]
#[x_kube(validation = Rule::new("!has(self.putOptions) || self.url.startsWith('s3://')").message("storage.putOptions are S3 PutObject options: use them with an s3:// url"))]
#[x_kube(validation = Rule::new("!has(self.gcsOptions) || self.url.startsWith('gcs://')").message("storage.gcsOptions are GCS object options: use them with a gcs:// url"))]
#[x_kube(validation = Rule::new("!self.url.startsWith('s3://') || has(self.region)").message("storage.region is required for s3:// storage: Kong refuses to use S3 without a region, whatever the credentials (any value, e.g. us-east-1, for most S3-compatible stores)").field_path(".region").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.writeCredentials) || (has(self.readCredentials.name) ? self.readCredentials.name : (has(self.readCredentials.secretName) ? self.readCredentials.secretName : '')) != (has(self.writeCredentials.name) ? self.writeCredentials.name : (has(self.writeCredentials.secretName) ? self.writeCredentials.secretName : '-'))").message("readCredentials names the same Secret as writeCredentials: importing data planes must not hold write access; use a read-only key").field_path(".readCredentials"))]
#[x_kube(validation = Rule::new("!(has(self.caCert) && has(self.caCertRef))").message("set caCertRef or caCert (its older form), not both").field_path(".caCertRef"))]
pub struct Storage {
    /// `s3://<bucket>/<prefix>` or `gcs://<bucket>/<prefix>`, exactly as Kong's
    /// `cluster_fallback_config_storage`. The prefix is required (Kong cannot use a
    /// bucket's root) and has only letters, digits, `.`, `_`, `-`, `~` and `/`, with no `.`
    /// or `..` segment: anything else Kong's URL parser would read differently.
    #[schemars(regex(
        pattern = r"^(s3|gcs)://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/+([A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.\.[A-Za-z0-9._~-]+))+/*$"
    ))]
    pub url: String,

    /// Endpoint of an S3-compatible store (MinIO, Ceph RGW...), e.g. `http://minio.minio:9000`.
    /// The scheme decides TLS. Kong and the operator use path-style addressing with it.
    /// Injected as `AWS_CONFIG_STORAGE_ENDPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/?#]+/?$"))]
    pub endpoint: Option<String>,

    /// The S3 region (`AWS_REGION`). Kong refuses to use S3 without one; S3-compatible
    /// stores usually accept any value, e.g. `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// Credentials given to the importing data planes (and used by the operator for its
    /// reachability check). Grant them read access only.
    pub read_credentials: Credentials,

    /// Credentials used to write: by the operator (`exporter.mode: Operator`) or given to the
    /// backup pods (`BackupPods`); required with those modes. Never given to importing
    /// data planes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_credentials: Option<Credentials>,

    /// A PEM CA bundle for an S3-compatible store whose TLS certificate comes from a private
    /// CA: the operator's S3 client trusts it in addition to the system's CA roots. Not used for
    /// GCS (its client library takes no extra CA). Not injected into Kong pods: they need
    /// the same CA in `lua_ssl_trusted_certificate` (`KONG_LUA_SSL_TRUSTED_CERTIFICATE`).
    /// A change of the Secret restarts the exporters; a bundle that is not PEM certificates
    /// makes the storage unusable until fixed. Default: none (the system's CA roots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_ref: Option<SecretKeySelector>,

    /// The older form of `caCertRef` (`{secretName, key}`), still read: set one of them,
    /// not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<SecretKeyRef>,

    /// Extra S3 PutObject options for the stored configuration (server-side encryption,
    /// storage class). Kong 3.5+ backup pods receive them as `cluster_fallback_export_s3_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put_options: Option<PutOptions>,

    /// Options of the GCS objects the operator writes (customer-managed encryption,
    /// storage class): the GCS counterpart of `putOptions`. Kong's backup pods cannot apply
    /// them (its GCS strategy inserts with the bucket and the name only): with
    /// `exporter.mode: BackupPods`, set the bucket's default KMS key and default storage
    /// class instead.
    // NB: Kong's `kong/clustering/config_sync_backup/strategies/gcs.lua` (Enterprise)
    // calls `storage_v1.objects.insert` with `{bucket, name}` only: nothing to inject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_options: Option<GcsOptions>,

    /// How often the operator checks that the storage is reachable with the read
    /// credentials (the `StorageReachable` condition). `0s` disables the check. Default
    /// `5m` (written `300s`).
    #[serde(default = "default_validation_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub validation_interval: Duration,
}

/// Where credentials come from: a Secret in the policy's namespace, or the pod's cloud
/// identity (IRSA, EKS Pod Identity, GKE Workload Identity).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.secretName) && has(self.name))").message("set name or secretName (the same field under its older name), not both").field_path(".name"))]
#[x_kube(validation = Rule::new("(has(self.secretName) || has(self.name)) != (has(self.ambient) && self.ambient)").message("set exactly one of name (or secretName) or ambient: true"))]
#[x_kube(validation = Rule::new("!has(self.keys) || has(self.secretName) || has(self.name)").message("keys name the keys of a Secret: set name too").field_path(".keys"))]
pub struct Credentials {
    /// A Secret in the policy's namespace. By default (see `keys`) for S3 it holds
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`); for GCS it holds `GCP_SERVICE_ACCOUNT` (the service-account
    /// JSON). Pods reference the keys with `secretKeyRef`; values are never copied into a
    /// pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub name: Option<String>,

    /// The older name of `name`, still read: set one of them, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub secret_name: Option<String>,

    /// Which keys of the Secret hold what, for a Secret written for another tool (as
    /// Velero's `credential`). Each unset key defaults to the name of Kong's environment
    /// variable: the env var in Kong's pods keeps Kong's name and references the mapped key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<CredentialKeys>,

    /// Use the pod's cloud identity instead of a Secret: nothing is injected and Kong's
    /// SDK finds the credentials itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambient: Option<bool>,
}

impl Storage {
    /// The CA bundle's Secret and key: `caCertRef`, else its older form `caCert`.
    pub fn ca(&self) -> Option<(&str, &str)> {
        match (&self.ca_cert_ref, &self.ca_cert) {
            (Some(r), _) => Some((r.name.as_str(), r.key.as_str())),
            (None, Some(c)) => Some((c.secret_name.as_str(), c.key.as_str())),
            (None, None) => None,
        }
    }
}

impl Credentials {
    /// The Secret's name: `name`, else its older spelling `secretName`.
    pub fn secret(&self) -> Option<&str> {
        self.name.as_deref().or(self.secret_name.as_deref())
    }

    /// The key of the Secret that holds Kong's environment variable `env_name`.
    pub fn key<'a>(&'a self, env_name: &'a str) -> &'a str {
        use crate::kong::env;
        let k = self.keys.as_ref();
        let mapped = match env_name {
            env::AWS_ACCESS_KEY_ID => k.and_then(|k| k.access_key_id.as_deref()),
            env::AWS_SECRET_ACCESS_KEY => k.and_then(|k| k.secret_access_key.as_deref()),
            env::AWS_SESSION_TOKEN => k.and_then(|k| k.session_token.as_deref()),
            env::GCP_SERVICE_ACCOUNT => k.and_then(|k| k.service_account.as_deref()),
            _ => None,
        };
        mapped.unwrap_or(env_name)
    }
}

/// The keys of a credentials Secret. Each defaults to the name of the Kong environment
/// variable it feeds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialKeys {
    /// The key holding the S3 access key id (`AWS_ACCESS_KEY_ID`). Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub access_key_id: Option<String>,
    /// The key holding the S3 secret access key (`AWS_SECRET_ACCESS_KEY`). Default:
    /// `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub secret_access_key: Option<String>,
    /// The key holding the optional S3 session token (`AWS_SESSION_TOKEN`). Default:
    /// `AWS_SESSION_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub session_token: Option<String>,
    /// The key holding the GCS service-account JSON (`GCP_SERVICE_ACCOUNT`). Default:
    /// `GCP_SERVICE_ACCOUNT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub service_account: Option<String>,
}

/// A key of a Secret in the policy's namespace, as `storage.caCert` names it (older form
/// of `caCertRef`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub secret_name: String,
    /// The key inside the Secret.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
}

/// A key of a Secret in the policy's namespace (`corev1.SecretKeySelector`'s shape).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// The Secret's name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
}

/// Extra arguments of the S3 PutObject that stores the configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.kmsKeyId) || (has(self.serverSideEncryption) && self.serverSideEncryption == 'aws:kms')").message("kmsKeyId requires serverSideEncryption: aws:kms"))]
pub struct PutOptions {
    /// Server-side encryption of the stored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// The KMS key (id, ARN or `alias/...`) with `serverSideEncryption: aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
    /// The S3 storage class, e.g. `STANDARD` or `STANDARD_IA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z_]+$"))]
    pub storage_class: Option<String>,
}

/// Options of the GCS objects the operator writes (`config.json`, history entries,
/// election registrations).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcsOptions {
    /// Customer-managed encryption: the Cloud KMS key that encrypts each object
    /// (`kmsKeyName` of objects.insert), e.g.
    /// `projects/p/locations/us/keyRings/kong/cryptoKeys/fallback`. The bucket's service
    /// agent needs `roles/cloudkms.cryptoKeyEncrypterDecrypter` on it, and the data planes'
    /// reads then depend on that key too. Default: the bucket's default key, else
    /// Google-managed encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$"
    ))]
    pub kms_key_name: Option<String>,
    /// The objects' storage class, e.g. `STANDARD`, `NEARLINE`, `COLDLINE` or `ARCHIVE`.
    /// A data plane reads `config.json` only when it starts during an outage, but classes
    /// other than `STANDARD` have a minimum storage duration and each export replaces the
    /// object. Default: the bucket's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z_]+$"))]
    pub storage_class: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// S3-managed keys (SSE-S3).
    #[serde(rename = "AES256")]
    Aes256,
    /// AWS KMS keys (SSE-KMS); name the key in `kmsKeyId` or use the account's default.
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// Who writes the configuration to storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Operator' || has(self.controlPlane)").message("exporter.controlPlane is required when exporter.mode is Operator"))]
pub struct Exporter {
    /// `Operator` (default): the operator connects to the control plane like a data plane
    /// and exports every configuration it receives; no Kong pod needs write credentials.
    /// `BackupPods`: the pods matched by `backup.selector` export (Kong's native backup
    /// nodes); the operator elects one of them. `None`: something else exports (e.g. the
    /// control plane with `cluster_fallback_config_export=on`); the operator only injects.
    #[serde(default)]
    pub mode: ExporterMode,

    /// How to reach the Kong control plane (required with `mode: Operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,

    /// The full Kong versions to export, e.g. `3.6.1.4`. Empty (default): every version
    /// seen among the selected data-plane pods. A data plane imports only the key of its
    /// own identical full version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(\.[0-9]+)?$"),
            length(max = 64)
        )
    )]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w == v))").message("a version is listed twice"))]
    pub versions: Vec<String>,

    /// Custom plugins (beyond Kong's bundled ones) that the data planes have. The operator
    /// announces Kong's bundled plugins of each version plus these (narrowed by the pods'
    /// `KONG_PLUGINS`): the control plane withholds the configuration from a data plane that
    /// does not announce every configured plugin, and a configuration naming a plugin the
    /// data planes lack is not exported. Default: none (Kong's bundled plugins only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub plugins: Vec<PluginRef>,

    /// The Wasm filters the data planes have (Kong's `wasm_filters`), announced to the
    /// control plane. A control plane with `wasm = on` withholds the configuration from a
    /// data plane that lacks any filter it has installed (`filter_set_incompatible`).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"), length(max = 128))
    )]
    pub wasm_filters: Vec<String>,

    /// At most one write per version in this interval; bursts of changes are coalesced and
    /// the newest configuration always wins. Default `5s`; Kong's own exporter uses 60s.
    #[serde(default = "default_min_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub min_interval: Duration,

    /// The largest configuration (decompressed) the operator accepts from the control
    /// plane, as a Kubernetes quantity. Larger ones are refused and reported. The operator's
    /// own ceiling (`run --max-config-size`, the chart's `maxConfigSize`, default 64Mi)
    /// applies when it is lower: a policy cannot make the operator hold more. Default
    /// `64Mi`, at most `1Gi`.
    #[serde(default = "default_max_config_size")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|k|M|G)?$"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || (quantity(self).isGreaterThan(quantity('0')) && quantity(self).compareTo(quantity('1Gi')) <= 0)").message("maxConfigSize must be a positive size of at most 1Gi (the operator's limit), such as 64Mi"))]
    pub max_config_size: String,

    /// `Warm` (default): every replica keeps a control-plane session open, so a new leader
    /// exports the newest configuration at once. `Cold`: only the leader connects (fewer
    /// sessions on the control plane; a takeover waits for the new session's first
    /// configuration).
    #[serde(default)]
    pub standby: Standby,

    /// How many previous configurations to keep per version under
    /// `<prefix>/<version>/history/` for rollback. 0 keeps none. Default 10.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0, max = 1000))]
    pub history_limit: u32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Standby {
    #[default]
    Warm,
    Cold,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExporterMode {
    #[default]
    Operator,
    BackupPods,
    None,
}

/// The Kong control plane's cluster endpoint and the data-plane certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    /// `host:port` of the control plane's cluster listener, e.g. `kong-cp.kong.svc:8005`.
    #[schemars(regex(pattern = r"^[^\s/:]+:[0-9]{1,5}$"))]
    pub endpoint: String,

    /// A Secret in the policy's namespace with the data-plane certificate: `tls.crt` and
    /// `tls.key`, plus `ca.crt` with `mtls: pki`.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub cluster_cert_secret: String,

    /// `shared` (default): the control plane and data planes share one certificate
    /// (`cluster_mtls = shared`). `pki`: certificates issued by a CA (`ca.crt`).
    #[serde(default)]
    pub mtls: MtlsMode,

    /// The TLS server name expected on the control plane's certificate (Kong's
    /// `cluster_server_name`). Default: `kong_clustering` in shared mode, the endpoint's host
    /// in pki mode. It may differ from the endpoint's host, as with Konnect or a CP behind a
    /// load balancer; in pki mode a certificate naming it only in its subject CN is accepted,
    /// as Kong's data planes accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,

    /// The control plane's `cluster_max_payload`: the largest (compressed) configuration
    /// frame it sends, as a Kubernetes quantity. Default `16Mi`, Kong's default; Kong
    /// refuses less than 4 MiB. Set it to the control plane's value: a larger frame ends
    /// the session (`BadFrame`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|k|M|G)?$"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || (quantity(self).compareTo(quantity('4Mi')) >= 0 && quantity(self).compareTo(quantity('1Gi')) <= 0)").message("maxPayload must be between 4Mi (Kong's minimum cluster_max_payload) and 1Gi"))]
    pub max_payload: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Shared,
    Pki,
}

/// A custom plugin announced to the control plane.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginRef {
    /// The plugin's name, e.g. `my-auth`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 128))]
    pub name: String,
    /// The plugin's version, e.g. `1.2.0`.
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+([.-][0-9A-Za-z.-]+)?$"))]
    pub version: String,
}

/// Lease timings (client-go's defaults) and the mirror into Kong's election prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.leaseDuration) > duration(self.renewDeadline)").message("leaseDuration must be greater than renewDeadline").field_path(".leaseDuration"))]
#[x_kube(validation = Rule::new("duration(self.retryPeriod) > duration('0s')").message("retryPeriod must be greater than 0").field_path(".retryPeriod"))]
// NB: CEL durations do not multiply; milliseconds are exact enough for 1.2 x retryPeriod.
#[x_kube(validation = Rule::new("duration(self.renewDeadline).getMilliseconds() * 5 > duration(self.retryPeriod).getMilliseconds() * 6").message("renewDeadline must be greater than 1.2 x retryPeriod").field_path(".renewDeadline"))]
pub struct Election {
    /// How long a Lease is valid without renewal; another replica may take over after it.
    /// Greater than renewDeadline. Default `15s` (client-go's).
    #[serde(default = "default_lease_duration")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub lease_duration: Duration,
    /// The leader stops exporting if it cannot renew within this time. Less than
    /// leaseDuration. Default `10s` (client-go's).
    #[serde(default = "default_renew_deadline")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub renew_deadline: Duration,
    /// How often candidates retry; greater than 0, and renewDeadline must exceed 1.2 x
    /// retryPeriod. Default `2s` (client-go's).
    #[serde(default = "default_retry_period")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub retry_period: Duration,
    /// Register the elected exporter under `<prefix>/<version>/election/` in Kong's own
    /// format, so native Kong 3.6+ backup nodes sharing the prefix defer to it. Default true.
    #[serde(default = "default_true")]
    pub mirror_to_storage: bool,
}

impl Default for Election {
    fn default() -> Self {
        Election {
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
            mirror_to_storage: true,
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (Kubernetes' `IsQualifiedName`). [`validate`] checks the lengths exactly.
pub(crate) const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or up to 63 characters (Kubernetes' `IsValidLabelValue`).
pub(crate) const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// `metav1.LabelSelector` with Kubernetes' label syntax enforced by the apiserver: the
/// selectors also become CEL in the webhook's registration, and one malformed label there
/// would make the apiserver refuse the registration for every policy.
fn label_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A label selector (matchLabels and matchExpressions, ANDed) with Kubernetes' label syntax: keys `[prefix/]name`, values of at most 63 letters, digits, `-`, `_` and `.`. An empty selector is refused: it would claim every pod in the namespace.",
        "x-kubernetes-validations": [{
            "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            "message": "must not be empty: an empty selector would claim every pod in the namespace",
            "reason": "FieldValueRequired"
        }],
        "properties": {
            "matchLabels": {
                "type": "object",
                "description": "Labels the pod must have, key to value.",
                "maxProperties": 64,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 63,
                    "pattern": LABEL_VALUE_PATTERN
                },
                "x-kubernetes-validations": [{
                    "rule": format!("self.all(k, k.size() <= 317 && k.matches('{}'))", LABEL_KEY_PATTERN.replace('\\', "\\\\")),
                    "message": "matchLabels keys must be label keys: an optional DNS-subdomain prefix and '/', then a name of 1-63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
                }]
            },
            "matchExpressions": {
                "type": "array",
                "description": "Requirements on the pod's labels.",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "x-kubernetes-validations": [{
                        "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                        "message": "operators In and NotIn need values; Exists and DoesNotExist take none"
                    }],
                    "properties": {
                        "key": {"type": "string", "maxLength": 317, "pattern": LABEL_KEY_PATTERN},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {
                            "type": "array",
                            "maxItems": 256,
                            "items": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}
                        }
                    }
                }
            }
        }
    })
}

fn secs(s: u64) -> Duration {
    Duration::from(std::time::Duration::from_secs(s))
}
fn default_validation_interval() -> Duration {
    secs(5 * 60)
}
fn default_min_interval() -> Duration {
    secs(5)
}
fn default_max_config_size() -> String {
    "64Mi".to_owned()
}
fn default_history_limit() -> u32 {
    10
}
fn default_lease_duration() -> Duration {
    secs(15)
}
fn default_renew_deadline() -> Duration {
    secs(10)
}
fn default_retry_period() -> Duration {
    secs(2)
}
fn default_true() -> bool {
    true
}

/// What the operator observed and did, for people and for GitOps health checks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FallbackConfigPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` summarises the others: `Valid`, `StorageReachable`, `PodsInjected`,
    /// `ControlPlaneConnected`, `Exporting`, `Leading`. `Stalled` (True: an invalid spec,
    /// nothing happens until it changes) and `Reconciling` (True: connecting or waiting for
    /// the first export) are kstatus' conditions, for Flux and `kubectl wait`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The current exporter (the Lease holder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderStatus>,

    /// The last export of each Kong version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["version"]))]
    pub exports: Vec<ExportStatus>,

    /// How many pods the policy covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaderStatus {
    /// The Lease holder: the operator replica that leads (pod name and a per-process suffix).
    pub identity: String,
    /// When the current holder acquired the Lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// How many times the Lease changed hands.
    #[serde(default)]
    pub transitions: i32,
    /// `mode: BackupPods`: the backup pod the leader designated as Kong's exporter (the
    /// first of `backupPods`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_pod: Option<String>,
    /// `mode: BackupPods`: the Kong node id registered in the store's `election/` prefix,
    /// the designated backup pod's `KONG_NODE_ID` (its pod UID; the first of `backupPods`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// `mode: BackupPods`: per Kong version, the backup pod designated as Kong's exporter
    /// and the node id registered under that version's `election/` prefix only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["version"]))]
    pub backup_pods: Vec<BackupDesignation>,
}

/// The backup pod that exports one Kong version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct BackupDesignation {
    /// The full Kong version the pod runs.
    pub version: String,
    /// The pod's name.
    pub pod: String,
    /// Its Kong node id (the pod UID, injected as `KONG_NODE_ID`).
    pub node_id: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    /// The full Kong version, e.g. `3.6.1.4`.
    pub version: String,
    /// The object key written, `<prefix>/<version>/config.json`.
    pub key: String,
    /// Kong's hash of the exported configuration.
    pub config_hash: String,
    /// Size of the stored object in bytes.
    pub bytes: i64,
    /// When it was written.
    pub time: Time,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Data-plane pods matched by `dataPlanes.selector`.
    pub importers: i32,
    /// Backup pods matched by `backup.selector`.
    pub backups: i32,
    /// Matched pods without a current injection (created before the policy, during a
    /// webhook outage, or before a policy change).
    pub not_injected: i32,
    /// Up to 20 of those pods, by name, for a quick look.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_injected_pods: Vec<String>,
}

/// `exporter.maxConfigSize` in bytes (64 MiB when unparseable; validation reports that).
pub fn max_config_bytes(quantity: &str) -> usize {
    validate::parse_quantity(quantity).map_or(64 << 20, |n| n as usize)
}

/// The CRD as applied to clusters and printed by `kong-fallback-operator crd`.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::from("# Generated by `kong-fallback-operator crd`; do not edit.\n");
    out.push_str(&serde_norway::to_string(&FallbackConfigPolicy::crd())?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "s3://bucket/prefix", "region": "us-east-2", "readCredentials": {"secretName": "r"}},
            "exporter": {"mode": "None"}
        })
    }

    #[test]
    fn a_minimal_spec_gets_client_go_election_defaults() {
        let spec: FallbackConfigPolicySpec = serde_json::from_value(minimal()).unwrap();
        let e = &spec.election;
        assert_eq!(
            std::time::Duration::from(e.lease_duration),
            std::time::Duration::from_secs(15)
        );
        assert_eq!(
            std::time::Duration::from(e.renew_deadline),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(
            std::time::Duration::from(e.retry_period),
            std::time::Duration::from_secs(2)
        );
        assert!(e.mirror_to_storage);
        assert_eq!(spec.exporter.mode, ExporterMode::None);
        assert_eq!(spec.exporter.max_config_size, "64Mi");
    }

    #[test]
    fn a_spec_round_trips_through_json() {
        let spec: FallbackConfigPolicySpec = serde_json::from_value(minimal()).unwrap();
        let back: FallbackConfigPolicySpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(spec, back);
    }

    #[test]
    fn the_crd_names_group_short_name_and_status_subresource() {
        let crd = FallbackConfigPolicy::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.short_names, Some(vec!["fcp".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            ["Storage", "Mode", "Leader", "Ready", "Status", "Age"]
        );
    }

    #[test]
    fn conditions_and_exports_are_list_maps() {
        let crd = FallbackConfigPolicy::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let status = &schema.properties.as_ref().unwrap()["status"];
        for (field, key) in [("conditions", "type"), ("exports", "version")] {
            let list = &status.properties.as_ref().unwrap()[field];
            assert_eq!(
                list.x_kubernetes_list_type.as_deref(),
                Some("map"),
                "{field}"
            );
            assert_eq!(
                list.x_kubernetes_list_map_keys,
                Some(vec![key.to_owned()]),
                "{field}"
            );
        }
    }

    #[test]
    fn the_printed_crd_starts_with_the_generated_marker() {
        let yaml = crd_yaml().unwrap();
        assert!(yaml.starts_with("# Generated by `kong-fallback-operator crd`"));
        assert!(yaml.contains("name: fallbackconfigpolicies.fallback.kong-dp.io"));
    }
}
