//! AWS workload identities without static keys, for real, on loopback:
//!
//! - [`PodIdentityAgent`]: EKS Pod Identity's side of the container credentials protocol
//!   (the endpoint the EKS Pod Identity Agent serves at `169.254.170.23`): a process given
//!   `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` asks
//!   it for credentials, sending the token file's content as `Authorization`. It answers
//!   with temporary MinIO credentials (STS AssumeRole with a session policy for one bucket).
//! - IRSA: the shared kube-apiserver is an OpenID issuer of ServiceAccount tokens
//!   ([`crate::KubeEnv::serve_issuer_discovery_anonymously`]), and
//!   [`MinioEnv::with_openid`] starts a MinIO whose STS `AssumeRoleWithWebIdentity` trusts
//!   it, with a role ([`MinioOpenId::role_arn`]) mapped to a MinIO policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::minio::MinioEnv;

/// The audience IRSA's projected tokens carry, and the OpenID client id MinIO checks.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// A loopback EKS Pod Identity Agent for one bucket (stopped when dropped).
pub struct PodIdentityAgent {
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub url: String,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    pub token_file: PathBuf,
    served: Arc<AtomicU32>,
    refused: Arc<AtomicU32>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for PodIdentityAgent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Agent {
    token: String,
    minio: &'static MinioEnv,
    bucket: String,
    served: Arc<AtomicU32>,
    refused: Arc<AtomicU32>,
}

impl PodIdentityAgent {
    /// Serves credentials that may read and write `bucket` of `minio` (and nothing else).
    pub async fn start(minio: &'static MinioEnv, bucket: &str) -> Result<PodIdentityAgent> {
        let dir = tempfile::tempdir()?;
        let token = format!("kfo-pod-identity-{}", crate::kube::random_suffix());
        let token_file = dir.path().join("eks-pod-identity-token");
        std::fs::write(&token_file, &token)?;
        let served = Arc::new(AtomicU32::new(0));
        let refused = Arc::new(AtomicU32::new(0));
        let state = Agent {
            token,
            minio,
            bucket: bucket.to_owned(),
            served: served.clone(),
            refused: refused.clone(),
        };
        let app = Router::new()
            .route("/v1/credentials", get(credentials))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1/credentials", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(PodIdentityAgent {
            url,
            token_file,
            served,
            refused,
            server,
            _dir: dir,
        })
    }

    /// The environment EKS gives a pod with a Pod Identity association.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_owned(),
                self.url.clone(),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_owned(),
                self.token_file.display().to_string(),
            ),
        ]
    }

    /// How many credential requests it answered with credentials.
    pub fn served(&self) -> u32 {
        self.served.load(Ordering::Relaxed)
    }

    /// How many it refused (a missing or wrong authorization token).
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::Relaxed)
    }
}

async fn credentials(State(a): State<Agent>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(a.token.as_str()) {
        a.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"Code": "InvalidToken", "Message": "wrong or missing authorization token"}),
            ),
        )
            .into_response();
    }
    match a.minio.bucket_credentials(&a.bucket).await {
        Ok(c) => {
            a.served.fetch_add(1, Ordering::Relaxed);
            axum::Json(json!({
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key,
                "Token": c.session_token,
                "Expiration": c.expiration,
            }))
            .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"Code": "ServerError", "Message": format!("{e:#}")})),
        )
            .into_response(),
    }
}

/// How a MinIO with an OpenID provider was configured (see [`MinioEnv::with_openid`]).
pub struct MinioOpenId {
    /// `MINIO_IDENTITY_OPENID_CONFIG_URL`.
    pub config_url: String,
    /// `MINIO_IDENTITY_OPENID_CLIENT_ID`, the audience tokens must carry.
    pub client_id: String,
    /// `MINIO_IDENTITY_OPENID_ROLE_POLICY`: the MinIO policy the role grants.
    pub role_policy: String,
}

impl MinioOpenId {
    /// The role ARN MinIO derives for this provider: `arn:minio:iam:<region>::role/` and the
    /// unpadded URL-safe base64 of the SHA-1 of the client id (MinIO's
    /// `internal/config/identity/openid/openid.go`). What `AWS_ROLE_ARN` holds.
    pub fn role_arn(&self) -> String {
        use base64::Engine;
        use sha1::Digest;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha1::Sha1::digest(self.client_id.as_bytes()));
        format!("arn:minio:iam:{}::role/{id}", crate::minio::REGION)
    }
}

/// Reads a token for `KubeEnv` tests: `kubectl create token` output, trimmed.
pub(crate) fn trimmed(out: &std::process::Output) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "kubectl create token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout.clone()).context("a UTF-8 token")?;
    Ok(token.trim().to_owned())
}

/// A pass-through in front of MinIO's STS for the web identity exchange (stopped when
/// dropped): requests go to MinIO unchanged, and MinIO's answer comes back unchanged but
/// for one field. MinIO answers `AssumeRoleWithWebIdentity` with an empty
/// `AssumedRoleUser/Arn`; AWS STS always fills it (`arn:aws:sts::<account>:assumed-role/...`),
/// and the AWS SDK (aws-config 1.13) reads the account id from it, refusing the credentials
/// without one. The shim fills that ARN, nothing else: the token is still checked by MinIO
/// against the issuer's keys, and the credentials are MinIO's.
pub struct StsArnShim {
    /// What `AWS_ENDPOINT_URL_STS` points at.
    pub endpoint: String,
    exchanges: Arc<AtomicU32>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for StsArnShim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Shim {
    upstream: String,
    http: reqwest::Client,
    exchanges: Arc<AtomicU32>,
}

impl StsArnShim {
    /// A shim forwarding to the STS of `minio` (plain HTTP).
    pub async fn start(minio: &MinioEnv) -> Result<StsArnShim> {
        let exchanges = Arc::new(AtomicU32::new(0));
        let state = Shim {
            upstream: minio.endpoint.clone(),
            http: reqwest::Client::new(),
            exchanges: exchanges.clone(),
        };
        let app = Router::new()
            .route("/", axum::routing::post(forward))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(StsArnShim {
            endpoint,
            exchanges,
            server,
        })
    }

    /// How many `AssumeRoleWithWebIdentity` exchanges MinIO granted through it.
    pub fn exchanges(&self) -> u32 {
        self.exchanges.load(Ordering::Relaxed)
    }
}

async fn forward(State(s): State<Shim>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-www-form-urlencoded")
        .to_owned();
    let answer = s
        .http
        .post(format!("{}/", s.upstream))
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    let granted = status.is_success() && text.contains("<AssumeRoleWithWebIdentityResult>");
    let text = if granted {
        s.exchanges.fetch_add(1, Ordering::Relaxed);
        let arn = "<Arn>arn:aws:sts::000000000000:assumed-role/kfo-minio/kfo</Arn>";
        text.replace("<Arn></Arn>", arn).replace("<Arn/>", arn)
    } else {
        text
    };
    (
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        [(header::CONTENT_TYPE, "text/xml")],
        text,
    )
        .into_response()
}
