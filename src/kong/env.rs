//! Environment variables a Kong node reads for data plane resilience (DOMAIN.md §1).

/// `cluster_fallback_config_storage`: `s3://bucket/prefix` or `gcs://bucket/prefix`.
pub const FALLBACK_STORAGE: &str = "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE";
/// `cluster_fallback_config_import`: a data plane loads the stored config when its first CP connection fails.
pub const FALLBACK_IMPORT: &str = "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT";
/// `cluster_fallback_config_export`: this node uploads its config (backup nodes only).
pub const FALLBACK_EXPORT: &str = "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT";
/// `cluster_fallback_config_export_delay`: seconds between two exports (Kong's default: 60).
pub const FALLBACK_EXPORT_DELAY: &str = "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT_DELAY";
/// `cluster_fallback_export_s3_config` (3.5+): JSON of extra S3 PutObject arguments.
pub const FALLBACK_EXPORT_S3_CONFIG: &str = "KONG_CLUSTER_FALLBACK_EXPORT_S3_CONFIG";
/// Kong's node id (a UUID); stable ids make the election registrations predictable.
pub const NODE_ID: &str = "KONG_NODE_ID";

pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const AWS_REGION: &str = "AWS_REGION";
pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
/// S3-compatible stores (MinIO, Ceph...): `http(s)://host[:port]/`; Kong uses path-style addressing.
pub const AWS_CONFIG_STORAGE_ENDPOINT: &str = "AWS_CONFIG_STORAGE_ENDPOINT";
/// The service-account JSON for GCS (without it, ambient credentials).
pub const GCP_SERVICE_ACCOUNT: &str = "GCP_SERVICE_ACCOUNT";
/// Native election interval in seconds (3.6+; default 600).
pub const ELECTION_INTERVAL: &str = "DP_RESILIENCE_ELECTION_INTERVAL";

/// Keys a credentials Secret holds for S3: the two required ones first.
pub const S3_SECRET_KEYS: [&str; 3] = [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN];
/// Keys a credentials Secret holds for GCS.
pub const GCS_SECRET_KEYS: [&str; 1] = [GCP_SERVICE_ACCOUNT];
