//! Google Cloud Storage, through google-cloud-storage (JSON API for reads and writes).

use google_cloud_auth::credentials::{
    Builder as AdcBuilder, Credentials, anonymous, service_account,
};
use google_cloud_storage::client::Storage;

/// Where GCS credentials come from.
#[derive(Clone)]
pub enum GcsCredentials {
    /// A service-account key (the JSON Kong reads from `GCP_SERVICE_ACCOUNT`).
    ServiceAccountJson(String),
    /// Application default credentials: Workload Identity, the metadata server.
    Ambient,
    /// No credentials: only for emulators such as fake-gcs-server.
    Anonymous,
}

impl std::fmt::Debug for GcsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GcsCredentials::ServiceAccountJson(_) => "ServiceAccountJson(** redacted **)",
            GcsCredentials::Ambient => "Ambient",
            GcsCredentials::Anonymous => "Anonymous",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcsClientError {
    #[error("the GCS service-account JSON is not valid JSON: {0}")]
    ServiceAccountJson(serde_json::Error),
    #[error("cannot build GCS credentials: {0}")]
    Credentials(String),
    #[error("cannot build the GCS client: {0}")]
    Client(String),
}

/// The bucket name as the client library wants it.
pub fn bucket_path(bucket: &str) -> String {
    format!("projects/_/buckets/{bucket}")
}

/// A GCS client; `endpoint` overrides `https://storage.googleapis.com` (emulators).
pub async fn client(
    endpoint: Option<&str>,
    credentials: &GcsCredentials,
) -> Result<Storage, GcsClientError> {
    let creds: Credentials = match credentials {
        GcsCredentials::ServiceAccountJson(json) => {
            let key = serde_json::from_str(json).map_err(GcsClientError::ServiceAccountJson)?;
            service_account::Builder::new(key)
                .build()
                .map_err(|e| GcsClientError::Credentials(e.to_string()))?
        }
        GcsCredentials::Ambient => AdcBuilder::default()
            .build()
            .map_err(|e| GcsClientError::Credentials(e.to_string()))?,
        GcsCredentials::Anonymous => anonymous::Builder::new().build(),
    };
    let mut builder = Storage::builder().with_credentials(creds);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
    }
    builder
        .build()
        .await
        .map_err(|e| GcsClientError::Client(e.to_string()))
}
