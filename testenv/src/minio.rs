//! Real MinIO servers on loopback: the S3-compatible store of the tests, plain HTTP
//! ([`minio`]) or TLS with a private CA ([`minio_tls`]).

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_smithy_http_client::tls;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use tokio::sync::OnceCell;

use crate::process::{Proc, binary, on_free_ports, run_dir, wait_until};

pub const REGION: &str = "us-east-1";
/// The name of the KMS key every MinIO started here holds (`MINIO_KMS_SECRET_KEY`, MinIO's
/// single built-in key): objects may be written with SSE-S3 (`AES256`) or with SSE-KMS
/// (`aws:kms`) and this key id. Nothing is encrypted unless a request asks for it.
pub const KMS_KEY: &str = "kfo-test-key";

/// A shared MinIO server of this test binary.
pub struct MinioEnv {
    /// `http://127.0.0.1:<port>` (or `https://` for [`minio_tls`]): what
    /// `AWS_CONFIG_STORAGE_ENDPOINT` would hold.
    pub endpoint: String,
    pub root_user: String,
    pub root_password: String,
    /// The PEM of the private CA that signed the server certificate ([`minio_tls`] only).
    /// Nothing else trusts it: a client without it must refuse the server.
    pub ca_pem: Option<String>,
    /// The SDK's HTTPS client trusting `ca_pem`, for the helpers' own clients.
    http: Option<SharedHttpClient>,
    proc: std::sync::Mutex<Proc>,
    /// How it was started, to start it again on the same port and data.
    launch: Launch,
}

struct Launch {
    name: String,
    bin: std::path::PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// One stored version of an object (a versioned bucket).
#[derive(Clone, Debug)]
pub struct StoredVersion {
    pub version_id: String,
    /// The store's modification time: seconds and nanoseconds since the epoch.
    pub modified: (i64, u32),
    pub body: Vec<u8>,
    pub metadata: std::collections::HashMap<String, String>,
    /// The store's ETag (a multipart upload's ends in `-<parts>`).
    pub etag: String,
}

/// Temporary credentials limited to reading one bucket (STS AssumeRole with a session
/// policy), like the read-only key a data plane gets.
#[derive(Clone)]
pub struct ReadOnlyCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

/// Temporary credentials for one bucket (STS AssumeRole with a session policy), as a cloud
/// identity hands them out: with a session token and an expiry.
#[derive(Clone)]
pub struct TemporaryCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339.
    pub expiration: String,
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

/// Starts a second MinIO on first use, serving TLS only, with a certificate for
/// `127.0.0.1` signed by a private CA ([`MinioEnv::ca_pem`]), and returns it.
pub async fn minio_tls() -> &'static MinioEnv {
    // NB: kept on failure, as in [`minio`].
    static ENV: OnceCell<Result<MinioEnv, String>> = OnceCell::const_new();
    let env = ENV
        .get_or_init(|| async { MinioEnv::start_tls().await.map_err(|e| format!("{e:#}")) })
        .await;
    match env {
        Ok(env) => env,
        Err(e) => panic!("testenv: cannot start the TLS MinIO: {e}"),
    }
}

/// A private CA and a serving certificate for `127.0.0.1` it signed, as MinIO reads them
/// from its `--certs-dir`: `public.crt` and `private.key`. Returns the CA's PEM.
fn write_serving_certs(certs_dir: &std::path::Path) -> Result<String> {
    let (ca_pem, issuer) = crate::pki::ca("kfo-testenv-minio-ca")?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "minio-tls");
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(certs_dir)?;
    std::fs::write(certs_dir.join("public.crt"), cert.pem())?;
    std::fs::write(certs_dir.join("private.key"), key.serialize_pem())?;
    Ok(ca_pem)
}

impl MinioEnv {
    async fn start() -> Result<MinioEnv> {
        MinioEnv::launch("minio", None, Vec::new()).await
    }

    /// A MinIO of the caller's alone (plain HTTP) whose STS `AssumeRoleWithWebIdentity`
    /// trusts the OpenID provider `openid` names, over HTTPS with `ca_pem` trusted (Go's
    /// `SSL_CERT_FILE`), and grants its role `openid.role_policy`. The provider's discovery
    /// document and keys are fetched at start, so it must be serving already.
    pub async fn with_openid(
        name: &str,
        openid: &crate::aws_identity::MinioOpenId,
        ca_pem: &str,
    ) -> Result<MinioEnv> {
        let name = crate::unique_name(name);
        let ca_file = run_dir().join(format!("{name}-openid-ca.crt"));
        std::fs::write(&ca_file, ca_pem)?;
        MinioEnv::launch(
            &name,
            None,
            vec![
                ("SSL_CERT_FILE", ca_file.display().to_string()),
                (
                    "MINIO_IDENTITY_OPENID_CONFIG_URL",
                    openid.config_url.clone(),
                ),
                ("MINIO_IDENTITY_OPENID_CLIENT_ID", openid.client_id.clone()),
                (
                    "MINIO_IDENTITY_OPENID_ROLE_POLICY",
                    openid.role_policy.clone(),
                ),
            ],
        )
        .await
    }

    async fn start_tls() -> Result<MinioEnv> {
        let certs_dir = run_dir().join("minio-tls-certs");
        let ca_pem = write_serving_certs(&certs_dir)?;
        MinioEnv::launch("minio-tls", Some((certs_dir, ca_pem)), Vec::new()).await
    }

    /// A MinIO server of the caller's alone (plain HTTP), which it may stop, pause and
    /// start again (same port, same data): the fault suite's store.
    pub async fn private(name: &str) -> Result<MinioEnv> {
        MinioEnv::launch(&crate::unique_name(name), None, Vec::new()).await
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`...) to the server.
    pub fn signal(&self, signal: &str) -> Result<()> {
        self.proc.lock().unwrap().signal(signal)
    }

    /// Kills the server and waits for it to exit (its data stays).
    pub async fn kill(&self) -> Result<()> {
        self.proc.lock().unwrap().signal("KILL")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // NB: the lock is not held across an await: poll instead of `Proc::wait_exit`.
        while self.proc.lock().unwrap().check_alive().is_ok() {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{} did not exit after SIGKILL", self.launch.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts the server again as it was started (after [`MinioEnv::kill`]), and waits until
    /// it is ready.
    pub async fn start_again(&self) -> Result<()> {
        let env: Vec<(&str, &str)> = self
            .launch
            .env
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let proc = Proc::start(&self.launch.name, &self.launch.bin, &self.launch.args, &env)?;
        let ready = format!("{}/minio/health/ready", self.endpoint);
        let http = reqwest::Client::new();
        wait_until(&proc, Duration::from_secs(60), || async {
            matches!(http.get(&ready).send().await, Ok(r) if r.status().is_success())
        })
        .await?;
        *self.proc.lock().unwrap() = proc;
        Ok(())
    }

    /// Turns on versioning for `bucket`: every write is kept, for a checker to read back.
    pub async fn enable_versioning(&self, bucket: &str) -> Result<()> {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        self.root_client()
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("enabling versioning on {bucket}"))?;
        Ok(())
    }

    /// Every version of `bucket/key`, oldest first, with its body and metadata.
    pub async fn versions(&self, bucket: &str, key: &str) -> Result<Vec<StoredVersion>> {
        let client = self.root_client();
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut req = client.list_object_versions().bucket(bucket).prefix(key);
            if let Some((k, v)) = &marker {
                req = req.key_marker(k).version_id_marker(v);
            }
            let page = req.send().await.context("listing object versions")?;
            for v in page.versions() {
                if v.key() != Some(key) {
                    continue;
                }
                let id = v.version_id().unwrap_or_default().to_owned();
                let o = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .version_id(&id)
                    .send()
                    .await
                    .with_context(|| format!("reading version {id} of {key}"))?;
                let metadata = o.metadata().cloned().unwrap_or_default();
                let body = o.body.collect().await?.into_bytes().to_vec();
                let modified = v
                    .last_modified()
                    .map(|t| (t.secs(), t.subsec_nanos()))
                    .unwrap_or_default();
                out.push(StoredVersion {
                    version_id: id,
                    modified,
                    body,
                    metadata,
                    etag: v.e_tag().unwrap_or_default().to_owned(),
                });
            }
            if page.is_truncated() == Some(true) {
                marker = Some((
                    page.next_key_marker().unwrap_or_default().to_owned(),
                    page.next_version_id_marker().unwrap_or_default().to_owned(),
                ));
            } else {
                break;
            }
        }
        // NB: the listing is newest first; the store's own time orders them.
        out.sort_by_key(|v| v.modified);
        Ok(out)
    }

    /// Starts MinIO as `name`, serving TLS from `tls`'s certs dir when given.
    async fn launch(
        name: &str,
        tls: Option<(std::path::PathBuf, String)>,
        extra_env: Vec<(&'static str, String)>,
    ) -> Result<MinioEnv> {
        let bin = tokio::task::spawn_blocking(|| binary("minio")).await??;
        let dir = run_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let root_user = "kfo-root".to_owned();
        let root_password = format!("kfo-{}", crate::kube::random_suffix());
        let mut env: Vec<(&'static str, String)> = vec![
            ("MINIO_ROOT_USER", root_user.clone()),
            ("MINIO_ROOT_PASSWORD", root_password.clone()),
            ("MINIO_BROWSER", "off".into()),
            ("MINIO_REGION", REGION.into()),
            ("MINIO_UPDATE", "off".into()),
            // NB: a fixed test key (32 bytes, base64): the data of a run is thrown away.
            (
                "MINIO_KMS_SECRET_KEY",
                format!("{KMS_KEY}:A9jBghvIRTEGpSvoz5XlWccZGk1SfzE0JeNYVn+KTKQ="),
            ),
        ];
        env.extend(extra_env);
        let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (endpoint, proc, args) = on_free_ports(async |[port, console]| {
            let mut args = vec![
                "server".into(),
                "--quiet".into(),
                format!("--address=127.0.0.1:{port}"),
                format!("--console-address=127.0.0.1:{console}"),
            ];
            if let Some((certs_dir, _)) = &tls {
                args.push(format!("--certs-dir={}", certs_dir.display()));
            }
            args.push(dir.display().to_string());
            let proc = Proc::start(name, &bin, &args, &env_refs)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = format!("{scheme}://127.0.0.1:{port}");
            let mut http = reqwest::Client::builder();
            if let Some((_, ca_pem)) = &tls {
                http = http.tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes())?]);
            }
            let http = http.build()?;
            let ready = format!("{endpoint}/minio/health/ready");
            wait_until(&proc, Duration::from_secs(60), || async {
                matches!(http.get(&ready).send().await, Ok(r) if r.status().is_success())
            })
            .await?;
            Ok((endpoint, proc, args))
        })
        .await?;
        let ca_pem = tls.map(|(_, pem)| pem);
        Ok(MinioEnv {
            endpoint,
            root_user,
            root_password,
            http: ca_pem.as_deref().map(https_client),
            ca_pem,
            proc: std::sync::Mutex::new(proc),
            launch: Launch {
                name: name.to_owned(),
                bin,
                args,
                env,
            },
        })
    }

    /// An S3 client with the root credentials (path-style, like Kong).
    pub fn root_client(&self) -> aws_sdk_s3::Client {
        let mut config = aws_sdk_s3::Config::builder()
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
            ));
        if let Some(http) = &self.http {
            config = config.http_client(http.clone());
        }
        aws_sdk_s3::Client::from_conf(config.build())
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
        let c = self.assume_role(&policy, "kfo-read-only").await?;
        Ok(ReadOnlyCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        })
    }

    /// Temporary credentials that may do anything with `bucket` and its objects, and nothing
    /// else: what a workload identity with a role for one bucket receives.
    pub async fn bucket_credentials(&self, bucket: &str) -> Result<TemporaryCredentials> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")]}
            ]
        });
        self.assume_role(&policy, "kfo-bucket").await
    }

    /// STS AssumeRole with the root credentials and the session policy `policy`.
    async fn assume_role(
        &self,
        policy: &serde_json::Value,
        session: &str,
    ) -> Result<TemporaryCredentials> {
        let mut config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                &self.root_user,
                &self.root_password,
                None,
                None,
                "testenv",
            ));
        if let Some(http) = &self.http {
            config = config.http_client(http.clone());
        }
        let out = aws_sdk_sts::Client::from_conf(config.build())
            .assume_role()
            .role_arn("arn:xxx:xxx:xxx:xxxx")
            .role_session_name(session)
            .policy(policy.to_string())
            .duration_seconds(3600)
            .send()
            .await
            .context("STS AssumeRole against MinIO")?;
        let c = out
            .credentials
            .context("AssumeRole returned no credentials")?;
        Ok(TemporaryCredentials {
            expiration: c
                .expiration
                .fmt(aws_sdk_sts::primitives::DateTimeFormat::DateTime)
                .context("an expiry in RFC 3339")?,
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        })
    }

    pub fn check_alive(&self) -> Result<()> {
        self.proc.lock().unwrap().check_alive()
    }

    pub fn pid(&self) -> u32 {
        self.proc.lock().unwrap().pid()
    }
}

/// The SDK's rustls HTTPS client trusting `ca_pem` (which testenv generated, so it parses).
fn https_client(ca_pem: &str) -> SharedHttpClient {
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::empty().with_pem_certificate(ca_pem.as_bytes()))
        .build()
        .expect("a TLS context");
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https()
}
