//! A real MinIO server on loopback: the S3-compatible store of the tests.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use tokio::sync::OnceCell;

use crate::process::{Proc, binary, free_port, run_dir, wait_until};

pub const REGION: &str = "us-east-1";

/// The shared MinIO server of this test binary.
pub struct MinioEnv {
    /// `http://127.0.0.1:<port>`: what `AWS_CONFIG_STORAGE_ENDPOINT` would hold.
    pub endpoint: String,
    pub root_user: String,
    pub root_password: String,
    proc: Proc,
}

/// Temporary credentials limited to reading one bucket (STS AssumeRole with a session
/// policy), like the read-only key a data plane gets.
#[derive(Clone)]
pub struct ReadOnlyCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

/// Starts MinIO on first use (building it if needed) and returns the shared server.
pub async fn minio() -> &'static MinioEnv {
    // NB: a failure is kept too, so the other tests of the binary fail at once with the
    // same message instead of each starting the processes again.
    static ENV: OnceCell<Result<MinioEnv, String>> = OnceCell::const_new();
    let env = ENV
        .get_or_init(|| async { MinioEnv::start().await.map_err(|e| format!("{e:#}")) })
        .await;
    match env {
        Ok(env) => env,
        Err(e) => panic!("testenv: cannot start MinIO: {e}"),
    }
}

impl MinioEnv {
    async fn start() -> Result<MinioEnv> {
        let bin = tokio::task::spawn_blocking(|| binary("minio")).await??;
        let dir = run_dir().join("minio");
        std::fs::create_dir_all(&dir)?;
        let (port, console) = (free_port()?, free_port()?);
        let root_user = "kfo-root".to_owned();
        let root_password = format!("kfo-{}", crate::kube::random_suffix());
        let proc = Proc::start(
            "minio",
            &bin,
            &[
                "server".into(),
                "--quiet".into(),
                format!("--address=127.0.0.1:{port}"),
                format!("--console-address=127.0.0.1:{console}"),
                dir.display().to_string(),
            ],
            &[
                ("MINIO_ROOT_USER", &root_user),
                ("MINIO_ROOT_PASSWORD", &root_password),
                ("MINIO_BROWSER", "off"),
                ("MINIO_REGION", REGION),
                ("MINIO_UPDATE", "off"),
            ],
        )?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = format!("{endpoint}/minio/health/ready");
        wait_until(&proc, Duration::from_secs(60), || async {
            matches!(http.get(&ready).send().await, Ok(r) if r.status().is_success())
        })
        .await?;
        Ok(MinioEnv {
            endpoint,
            root_user,
            root_password,
            proc,
        })
    }

    /// An S3 client with the root credentials (path-style, like Kong).
    pub fn root_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.root_user,
                &self.root_password,
                None,
                None,
                "testenv",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The body of `bucket/key`, read with the root credentials; `None` if it is missing.
    pub async fn read(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        match self
            .root_client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.body.collect().await?.into_bytes().to_vec())),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {bucket}/{key}")),
        }
    }

    /// Creates a fresh bucket named after `prefix` and returns its name.
    pub async fn bucket(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(prefix);
        self.root_client()
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .with_context(|| format!("creating bucket {name}"))?;
        Ok(name)
    }

    /// Credentials that may list and read `bucket` and nothing else.
    pub async fn read_only_credentials(&self, bucket: &str) -> Result<ReadOnlyCredentials> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [format!("arn:aws:s3:::{bucket}/*")]},
                {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": [format!("arn:aws:s3:::{bucket}")]}
            ]
        });
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                &self.root_user,
                &self.root_password,
                None,
                None,
                "testenv",
            ))
            .build();
        let out = aws_sdk_sts::Client::from_conf(config)
            .assume_role()
            .role_arn("arn:xxx:xxx:xxx:xxxx")
            .role_session_name("kfo-read-only")
            .policy(policy.to_string())
            .duration_seconds(3600)
            .send()
            .await
            .context("STS AssumeRole against MinIO")?;
        let c = out
            .credentials
            .context("AssumeRole returned no credentials")?;
        Ok(ReadOnlyCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        })
    }

    pub fn check_alive(&self) -> Result<()> {
        self.proc.check_alive()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
