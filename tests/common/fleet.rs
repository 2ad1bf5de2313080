//! Several operator processes on one policy, against the test apiserver, MinIO and the
//! Kong CP double: for the election tests and the failover benchmark. Included with `#[path]`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kfo_testenv::{KongCp, MinioEnv, Mtls, Proc, kube, minio};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::export::runner::{META_CONFIG_HASH, META_WRITER};
use kong_fallback_operator::kong::config::config_hashes;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::json;

pub const VERSION: &str = "3.6.1.4";

/// Lease timings of the fleet's policy, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub lease: u64,
    pub renew: u64,
    pub retry: u64,
}

pub struct Fleet {
    pub client: Client,
    pub ns: String,
    pub bucket: String,
    pub s3: &'static MinioEnv,
    pub cp: KongCp,
    pub timings: Timings,
    kubeconfig: String,
    pushes: u64,
    /// Set on every operator process started afterwards (e.g. a cloud identity's
    /// variables); never on the test process.
    pub operator_env: Vec<(String, String)>,
    ambient: bool,
}

/// How [`Fleet::with`] builds a fleet; the default is [`Fleet::new`]'s.
pub struct Options<'a> {
    pub standby: &'a str,
    /// The store (default: the shared MinIO).
    pub s3: Option<&'static MinioEnv>,
    /// The CP double (default: a new one).
    pub cp: Option<KongCp>,
    /// The policy's `storage.endpoint` (default: the store's own).
    pub store_endpoint: Option<String>,
    /// The policy's `controlPlane.endpoint` (default: the CP double's own).
    pub cp_endpoint: Option<String>,
    pub history_limit: u32,
    /// `ambient: true` read and write credentials (no credentials Secret): the operators
    /// write with their own cloud identity, allowed in the fleet's namespace.
    pub ambient: bool,
    /// More environment for every operator process (never the test process's own).
    pub operator_env: Vec<(String, String)>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            standby: "Warm",
            s3: None,
            cp: None,
            store_endpoint: None,
            cp_endpoint: None,
            history_limit: 0,
            ambient: false,
            operator_env: Vec::new(),
        }
    }
}

/// One operator process.
pub struct Operator {
    pub name: String,
    pub proc: Proc,
}

/// What `config.json` holds: (config hash, writing replica).
pub type Stored = (String, String);

impl Fleet {
    /// A namespace with the Secrets and a policy in `mode: Operator`, and no operator yet.
    pub async fn new(prefix: &str, timings: Timings) -> Fleet {
        Self::with_standby(prefix, timings, "Warm").await
    }

    /// [`Fleet::new`] with `exporter.standby` (`Warm` or `Cold`).
    pub async fn with_standby(prefix: &str, timings: Timings, standby: &str) -> Fleet {
        Self::with(
            prefix,
            timings,
            Options {
                standby,
                ..Options::default()
            },
        )
        .await
    }

    /// A fleet as `options` say: its store, the endpoints the policy names (a proxy in front
    /// of the store or the CP), the CP double.
    pub async fn with(prefix: &str, timings: Timings, options: Options<'_>) -> Fleet {
        let env = kube().await;
        env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
        let client = env.client().await.unwrap();
        let ns = env.namespace(prefix).await.unwrap();
        let s3 = match options.s3 {
            Some(s3) => s3,
            None => minio().await,
        };
        let bucket = s3.bucket(prefix).await.unwrap();
        let cp = match options.cp {
            Some(cp) => cp,
            None => KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap(),
        };
        // NB: every push goes out at once (no db_update_frequency debounce): the take-over
        // times (tests, fault scenarios and benchmark P2) are the operator's, not the CP's.
        cp.set_push_debounce(Duration::ZERO);
        let store_endpoint = options
            .store_endpoint
            .unwrap_or_else(|| s3.endpoint.clone());
        let cp_endpoint = options.cp_endpoint.unwrap_or_else(|| cp.endpoint.clone());
        let standby = options.standby;
        let history_limit = options.history_limit;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = |name: &str, data: serde_json::Value| -> Secret {
            serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
            )
            .unwrap()
        };
        let mut to_create = vec![secret(
            "kong-cluster-cert",
            json!({"tls.crt": cp.certs.cert_pem, "tls.key": cp.certs.key_pem}),
        )];
        if !options.ambient {
            to_create.push(secret(
                "fallback-write",
                json!({"AWS_ACCESS_KEY_ID": s3.root_user, "AWS_SECRET_ACCESS_KEY": s3.root_password}),
            ));
            to_create.push(secret(
                "fallback-read",
                json!({"AWS_ACCESS_KEY_ID": "r", "AWS_SECRET_ACCESS_KEY": "r"}),
            ));
        }
        for s in to_create {
            secrets.create(&PostParams::default(), &s).await.unwrap();
        }
        let (read, write) = if options.ambient {
            (json!({"ambient": true}), json!({"ambient": true}))
        } else {
            (
                json!({"secretName": "fallback-read"}),
                json!({"secretName": "fallback-write"}),
            )
        };
        let policy: FallbackConfigPolicy = crate::cluster::policy(
            "prod",
            json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {
                    "url": format!("s3://{bucket}/kong"),
                    "endpoint": store_endpoint,
                    "region": "us-east-1",
                    "readCredentials": read,
                    "writeCredentials": write
                },
                "exporter": {
                    "mode": "Operator",
                    "versions": [VERSION],
                    "minInterval": "0s",
                    "historyLimit": history_limit,
                    "standby": standby,
                    "controlPlane": {"endpoint": cp_endpoint, "clusterCertSecret": "kong-cluster-cert"}
                },
                "election": {
                    "leaseDuration": format!("{}s", timings.lease),
                    "renewDeadline": format!("{}s", timings.renew),
                    "retryPeriod": format!("{}s", timings.retry)
                }
            }),
        );
        Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
        Fleet {
            client,
            ns,
            bucket,
            s3,
            cp,
            timings,
            kubeconfig: env.kubeconfig_path().display().to_string(),
            pushes: 0,
            operator_env: options.operator_env,
            ambient: options.ambient,
        }
    }

    /// Starts an operator process named `name` (its identity and pod name).
    pub fn start(&self, name: &str) -> Operator {
        self.start_with(name, &[])
    }

    /// [`Fleet::start`] with more arguments to `run` (e.g. the webhook's).
    pub fn start_with(&self, name: &str, extra: &[String]) -> Operator {
        let mut extra = extra.to_vec();
        if self.ambient {
            extra.push(format!("--ambient-write-namespaces={}", self.ns));
        }
        Operator {
            name: name.to_owned(),
            proc: operator_with_env(&self.kubeconfig, name, &self.ns, &extra, &self.operator_env),
        }
    }

    /// [`operator_with_webhook`] in this fleet's namespace.
    pub async fn start_with_webhook(
        &self,
        name: &str,
        configuration: &str,
        failure_policy: &str,
    ) -> (Operator, u16) {
        let (proc, port) = operator_with_webhook(
            &self.kubeconfig,
            name,
            &self.ns,
            configuration,
            failure_policy,
        )
        .await;
        let op = Operator {
            name: name.to_owned(),
            proc,
        };
        (op, port)
    }

    /// Pushes a new configuration from the CP double; returns its hash.
    pub fn push(&mut self) -> String {
        self.pushes += 1;
        let table = format!(
            r#"{{"_format_version":"3.0","_transform":false,"services":[{{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"svc-{}","host":"example.com","port":443}}]}}"#,
            self.pushes
        );
        let hash = config_hashes(&serde_json::from_str(&table).unwrap()).config;
        self.cp.push(&table, &hash);
        hash
    }

    /// What `config.json` holds now.
    pub async fn stored(&self) -> Option<Stored> {
        let o = self
            .s3
            .root_client()
            .head_object()
            .bucket(&self.bucket)
            .key(format!("kong/{VERSION}/config.json"))
            .send()
            .await
            .ok()?;
        let m = o.metadata()?;
        Some((
            m.get(META_CONFIG_HASH)?.clone(),
            m.get(META_WRITER)?.clone(),
        ))
    }

    /// Gives the `fallback-read` Secret read-only credentials that work on the bucket (it
    /// holds refused ones by default), so that `StorageReachable`, and then `Ready`, can
    /// turn True.
    pub async fn working_read_credentials(&self) {
        let ro = self.s3.read_only_credentials(&self.bucket).await.unwrap();
        let data = json!({"stringData": {
            "AWS_ACCESS_KEY_ID": ro.access_key_id,
            "AWS_SECRET_ACCESS_KEY": ro.secret_access_key,
            "AWS_SESSION_TOKEN": ro.session_token
        }});
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .patch(
                "fallback-read",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&data),
            )
            .await
            .unwrap();
    }

    /// Waits (up to `timeout`) until `config.json` holds `hash`; what it holds then.
    pub async fn wait_stored(&self, hash: &str, timeout: Duration) -> Option<(Stored, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.stored().await
                && s.0 == hash
            {
                return Some((s, start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    /// The Lease: (holder, transitions).
    pub async fn lease(&self) -> Option<(Option<String>, i32)> {
        let lease = Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get_opt("prod")
            .await
            .ok()??;
        let spec = lease.spec?;
        Some((spec.holder_identity, spec.lease_transitions.unwrap_or(0)))
    }

    /// Waits until some operator holds the Lease; its name (the identity before `_`).
    pub async fn wait_leader(&self, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some((Some(holder), _)) = self.lease().await
                && !holder.is_empty()
            {
                return holder.split('_').next().map(str::to_owned);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// An operator process named `name` (its identity) watching `ns` through `kubeconfig`.
pub fn operator(kubeconfig: &str, name: &str, ns: &str, extra: &[String]) -> Proc {
    operator_with_env(kubeconfig, name, ns, extra, &[])
}

/// [`operator`] with more environment variables for the process.
pub fn operator_with_env(
    kubeconfig: &str,
    name: &str,
    ns: &str,
    extra: &[String],
    env: &[(String, String)],
) -> Proc {
    let bin = env!("CARGO_BIN_EXE_kong-fallback-operator");
    let args: Vec<String> = [
        "run".to_owned(),
        "--identity".into(),
        name.into(),
        "--namespace".into(),
        ns.to_owned(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect();
    Proc::start(
        &kfo_testenv::unique_name(name),
        std::path::Path::new(bin),
        &args,
        &[
            ("KUBECONFIG", kubeconfig),
            ("RUST_LOG", "info,kong_fallback_operator=debug"),
        ]
        .into_iter()
        .chain(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect::<Vec<_>>(),
    )
    .unwrap()
}

/// An operator process serving the webhook on loopback, registered as `configuration`
/// with `failure_policy` (`ignore`, `fail`); returns it and the webhook's port once it
/// accepts connections. NB: the process binds the port itself: one taken in the meantime
/// by a parallel test is retried with another.
pub async fn operator_with_webhook(
    kubeconfig: &str,
    name: &str,
    ns: &str,
    configuration: &str,
    failure_policy: &str,
) -> (Proc, u16) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proc = operator(
            kubeconfig,
            name,
            ns,
            &[
                "--webhook".into(),
                format!("--webhook-addr=127.0.0.1:{port}"),
                format!("--webhook-url=https://127.0.0.1:{port}/mutate"),
                format!("--operator-namespace={ns}"),
                format!("--webhook-configuration={configuration}"),
                format!("--webhook-failure-policy={failure_policy}"),
            ],
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if proc.check_alive().is_err() {
                break;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return (proc, port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = proc.log_tail(20);
        assert!(
            log.contains("in use"),
            "the operator's webhook did not start:\n{log}"
        );
    }
    panic!("no free port for the webhook after five tries");
}
