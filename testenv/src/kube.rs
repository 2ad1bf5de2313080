//! A local Kubernetes control plane: etcd + kube-apiserver on loopback.
//!
//! Secure serving with a throwaway CA, a static admin token (group `system:masters`),
//! RBAC authorization (so least privilege can be proven), a service-account signing key
//! (so tokens for ServiceAccounts can be requested), and webhooks reachable at loopback
//! URLs. No controller-manager or kubelet: pods stay Pending, namespaces are not
//! finalized, and the `ServiceAccount` admission plugin is off (no default SA exists).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use tokio::sync::OnceCell;

use crate::process::{Proc, binary, on_free_ports, run_dir, wait_until};

/// The shared control plane of this test binary.
pub struct KubeEnv {
    pub apiserver_url: String,
    kubeconfig: PathBuf,
    admin_token: String,
    /// PEM of the CA that signed the apiserver's serving certificate.
    pub ca_pem: String,
    /// The apiserver's audit log (JSON lines): the requests of ServiceAccounts.
    audit_log: PathBuf,
    shared: Shared,
    etcd: Proc,
    apiserver: Proc,
}

/// Which requests the shared apiserver writes to its audit log: those of ServiceAccounts
/// (the operator under test), at `Metadata` level (no request or response bodies, so no
/// Secret data), once each.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"#;

/// What every apiserver of this binary shares: etcd, the PKI, the admin token.
struct Shared {
    dir: PathBuf,
    etcd_url: String,
    pki: Pki,
    tokens: PathBuf,
    admin_token: String,
}

/// A kube-apiserver of its own with nothing installed (see [`KubeEnv::empty_cluster`]).
pub struct EmptyCluster {
    kubeconfig: PathBuf,
    apiserver: Proc,
}

impl EmptyCluster {
    /// A client with cluster-admin rights, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// Its admin kubeconfig file, for `kubectl` or the operator binary.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Fails with the apiserver's log tail if it has exited.
    pub fn check_alive(&self) -> Result<()> {
        self.apiserver.check_alive()
    }
}

async fn client_from(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

impl Shared {
    /// Starts a kube-apiserver named `name` storing under `etcd_prefix`, waits until it is
    /// ready, and returns it with its URL and an admin kubeconfig.
    async fn start_apiserver(
        &self,
        name: &str,
        etcd_prefix: &str,
        extra: &[String],
    ) -> Result<(Proc, String, PathBuf)> {
        on_free_ports(async |[port]| self.launch_apiserver(name, etcd_prefix, port, extra).await)
            .await
    }

    /// Starts a kube-apiserver named `name` on `port`, storing under `etcd_prefix`, and
    /// waits until it is ready.
    async fn launch_apiserver(
        &self,
        name: &str,
        etcd_prefix: &str,
        port: u16,
        extra: &[String],
    ) -> Result<(Proc, String, PathBuf)> {
        let bin = tokio::task::spawn_blocking(|| binary("kube-apiserver")).await??;
        let pki = &self.pki;
        {
            let apiserver_url = format!("https://127.0.0.1:{port}");
            let mut args = vec![
                format!("--etcd-servers={}", self.etcd_url),
                format!("--etcd-prefix={etcd_prefix}"),
                "--bind-address=127.0.0.1".into(),
                // NB: without this the apiserver looks for a default route to pick an
                // address, which a sandbox without one does not have.
                "--advertise-address=127.0.0.1".into(),
                // NB: since v1.37 the endpoint reconciler refuses a loopback address. It
                // only maintains the `default/kubernetes` Service's endpoints, which
                // nothing here uses (clients come through the kubeconfig).
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={port}"),
                format!(
                    "--cert-dir={}",
                    self.dir.join(format!("certs-{name}")).display()
                ),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                format!("--token-auth-file={}", self.tokens.display()),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer={apiserver_url}/"),
                format!("--service-account-key-file={}", pki.sa_pub.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_key.display()
                ),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--v=1".into(),
            ];
            args.extend_from_slice(extra);
            let apiserver = Proc::start(name, &bin, &args, &[])?;

            let kubeconfig = self.dir.join(format!("kubeconfig-{name}"));
            std::fs::write(
                &kubeconfig,
                kubeconfig_yaml(&apiserver_url, &pki.ca_pem, &self.admin_token)?,
            )?;
            let client = client_from(&kubeconfig).await?;
            wait_until(&apiserver, Duration::from_secs(120), || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .expect("a valid request");
                    matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok")
                }
            })
            .await?;
            Ok((apiserver, apiserver_url, kubeconfig))
        }
    }
}

/// A kube-apiserver of its own (its own etcd prefix) that a test may stop and start again,
/// on the same port with the same data (see [`KubeEnv::restartable_cluster`]).
pub struct RestartableCluster {
    name: String,
    prefix: String,
    port: u16,
    kubeconfig: PathBuf,
    shared: &'static Shared,
    apiserver: std::sync::Mutex<Option<Proc>>,
}

impl RestartableCluster {
    /// A client with cluster-admin rights, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// The admin kubeconfig, for the operator binary.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Kills the apiserver (etcd keeps the data).
    pub fn stop(&self) {
        // NB: dropping a Proc kills it and reaps it.
        self.apiserver.lock().unwrap().take();
    }

    /// Starts the apiserver again on the same port and waits until it is ready.
    pub async fn start_again(&self) -> Result<()> {
        let (proc, _, _) = self
            .shared
            .launch_apiserver(&self.name, &self.prefix, self.port, &[])
            .await?;
        *self.apiserver.lock().unwrap() = Some(proc);
        Ok(())
    }
}

/// Starts etcd and kube-apiserver on first use (building them if needed) and returns the
/// shared environment. Panics with the processes' logs if they cannot start.
pub async fn kube() -> &'static KubeEnv {
    // NB: a failure is kept too, so the other tests of the binary fail at once with the
    // same message instead of each starting the processes again.
    static ENV: OnceCell<Result<KubeEnv, String>> = OnceCell::const_new();
    let env = ENV
        .get_or_init(|| async { KubeEnv::start().await.map_err(|e| format!("{e:#}")) })
        .await;
    match env {
        Ok(env) => env,
        Err(e) => panic!("testenv: cannot start the Kubernetes control plane: {e}"),
    }
}

impl KubeEnv {
    async fn start() -> Result<KubeEnv> {
        // NB: both built (if need be) before either starts.
        let (etcd_bin, _) = tokio::task::spawn_blocking(|| -> Result<_> {
            Ok((binary("etcd")?, binary("kube-apiserver")?))
        })
        .await??;
        let dir = run_dir().join("kube");
        std::fs::create_dir_all(&dir)?;

        let (etcd, client_url) = on_free_ports(async |[client_port, peer_port]| {
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            // NB: a data dir bootstrapped with other URLs by a failed attempt is refused.
            let data_dir = dir.join("etcd");
            let _ = std::fs::remove_dir_all(&data_dir);
            let etcd = Proc::start(
                "etcd",
                &etcd_bin,
                &[
                    format!("--data-dir={}", data_dir.display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster=default={peer_url}"),
                    "--unsafe-no-fsync=true".into(),
                    "--log-level=warn".into(),
                ],
                &[],
            )?;
            let http = reqwest::Client::new();
            let health = format!("{client_url}/health");
            wait_until(&etcd, Duration::from_secs(60), || async {
                matches!(http.get(&health).send().await, Ok(r) if r.status().is_success())
            })
            .await?;
            Ok((etcd, client_url))
        })
        .await?;

        let pki = Pki::generate(&dir)?;
        let admin_token = format!("kfo-admin-{}", random_suffix());
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{admin_token},kfo-admin,kfo-admin-uid,\"system:masters\"\n"),
        )?;
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY)?;
        let audit_log = dir.join("audit.log");
        let shared = Shared {
            dir,
            etcd_url: client_url,
            pki,
            tokens,
            admin_token,
        };
        let (apiserver, apiserver_url, kubeconfig) = shared
            .start_apiserver(
                "kube-apiserver",
                "/registry",
                &[
                    format!("--audit-policy-file={}", audit_policy.display()),
                    format!("--audit-log-path={}", audit_log.display()),
                    // NB: written at once, so a test reads its own requests when it is done.
                    "--audit-log-mode=blocking".into(),
                    "--audit-log-format=json".into(),
                ],
            )
            .await?;
        Ok(KubeEnv {
            apiserver_url,
            kubeconfig,
            admin_token: shared.admin_token.clone(),
            ca_pem: shared.pki.ca_pem.clone(),
            audit_log,
            shared,
            etcd,
            apiserver,
        })
    }

    /// A second kube-apiserver on the shared etcd under its own key prefix: a cluster of
    /// its own, with nothing installed (no CRD), for the tests that need an empty one.
    /// Stopped when dropped.
    pub async fn empty_cluster(&self) -> Result<EmptyCluster> {
        let prefix = format!("/registry-{}", random_suffix());
        let (apiserver, _, kubeconfig) = self
            .shared
            .start_apiserver("kube-apiserver-empty", &prefix, &[])
            .await?;
        Ok(EmptyCluster {
            kubeconfig,
            apiserver,
        })
    }

    /// A cluster of its own, like [`KubeEnv::empty_cluster`], whose apiserver the caller
    /// may stop and start again: the fault suite's apiserver restart.
    pub async fn restartable_cluster(&'static self) -> Result<RestartableCluster> {
        let prefix = format!("/registry-{}", random_suffix());
        let name = format!("kube-apiserver-{}", random_suffix());
        let (apiserver, url, kubeconfig) = self.shared.start_apiserver(&name, &prefix, &[]).await?;
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the apiserver URL has a port")?;
        Ok(RestartableCluster {
            name,
            prefix,
            port,
            kubeconfig,
            shared: &self.shared,
            apiserver: std::sync::Mutex::new(Some(apiserver)),
        })
    }

    /// A client with cluster-admin rights, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// The audit log of the shared apiserver: one JSON event per line, for every request
    /// a ServiceAccount made (see [`AUDIT_POLICY`]).
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_log
    }

    /// A client that authenticates with `token` (e.g. a ServiceAccount token) and trusts
    /// the apiserver's CA: what an in-cluster operator would have.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        let yaml = kubeconfig_yaml(&self.apiserver_url, &self.ca_pem, token)?;
        let kc = Kubeconfig::from_yaml(&yaml)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The kubeconfig file of the admin user, for `kubectl`, `helm` or the operator binary.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The API calls made with the ServiceAccount token `token`, read from the audit log:
    /// (API group, resource or `resource/subresource`, verb), whatever the answer (a
    /// refused call is a call the code makes, too).
    // NB: a token is told apart from others of the same ServiceAccount by its JWT id, which
    // the apiserver records as the credential id of each request.
    pub fn audited_calls(&self, token: &str) -> Result<BTreeSet<(String, String, String)>> {
        Ok(self.audited_requests(token)?.into_iter().collect())
    }

    /// Every API call made with `token`, in order, as [`KubeEnv::audited_calls`] reads them:
    /// for counting requests.
    pub fn audited_requests(&self, token: &str) -> Result<Vec<(String, String, String)>> {
        use base64::Engine;
        let claims = token.split('.').nth(1).context("a JWT")?;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims.trim_end_matches('='))
            .context("the JWT's claims")?;
        let claims: serde_json::Value = serde_json::from_slice(&claims)?;
        let jti = claims["jti"].as_str().context("a JWT id in the token")?;
        let credential = serde_json::json!([format!("JTI={jti}")]);
        let log = std::fs::read_to_string(&self.audit_log)?;
        let mut calls = Vec::new();
        for line in log.lines() {
            let e: serde_json::Value = serde_json::from_str(line)?;
            if e["user"]["extra"]["authentication.kubernetes.io/credential-id"] != credential {
                continue;
            }
            let o = &e["objectRef"];
            let Some(resource) = o["resource"].as_str() else {
                continue; // a non-resource URL (discovery)
            };
            let resource = match o["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            calls.push((
                o["apiGroup"].as_str().unwrap_or_default().to_owned(),
                resource,
                e["verb"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        Ok(calls)
    }

    /// The OpenID discovery document of this apiserver as the issuer of ServiceAccount
    /// tokens (`--service-account-issuer` is `<apiserver_url>/`): what an IRSA-style
    /// identity provider (AWS IAM's, MinIO's STS) is configured with.
    pub fn issuer_discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.apiserver_url)
    }

    /// Lets anyone read the issuer's discovery document and keys (binds the built-in
    /// ClusterRole `system:service-account-issuer-discovery` to `system:unauthenticated`),
    /// as a cloud's identity provider reads them. Idempotent; grants nothing else.
    pub async fn serve_issuer_discovery_anonymously(&self) -> Result<()> {
        use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kfo-testenv-issuer-discovery"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:service-account-issuer-discovery"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}]
        }))?;
        Api::<ClusterRoleBinding>::all(self.client().await?)
            .patch(
                "kfo-testenv-issuer-discovery",
                &PatchParams::apply("kfo-testenv").force(),
                &Patch::Apply(&binding),
            )
            .await
            .context("binding system:service-account-issuer-discovery")?;
        Ok(())
    }

    /// A token of ServiceAccount `ns/name` (created if missing) for `audience`, from the
    /// real `kubectl create token`: what EKS projects into an IRSA pod.
    pub async fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        audience: &str,
    ) -> Result<String> {
        let _ = self
            .kubectl(&["create", "serviceaccount", name, "-n", ns])
            .await?;
        let out = self
            .kubectl(&[
                "create",
                "token",
                name,
                "-n",
                ns,
                "--audience",
                audience,
                "--duration",
                "1h",
            ])
            .await?;
        crate::aws_identity::trimmed(&out)
    }

    /// Creates a fresh namespace named after `prefix` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(prefix);
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Applies `crd` with server-side apply and waits until it is Established.
    pub async fn install_crd(&self, crd: &CustomResourceDefinition) -> Result<()> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let name = crd.metadata.name.clone().context("the CRD has a name")?;
        api.patch(
            &name,
            &PatchParams::apply("kfo-testenv").force(),
            &Patch::Apply(crd),
        )
        .await?;
        let established = await_condition(api, &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not Established after 30s"))??;
        Ok(())
    }

    /// Runs the real `kubectl` against this control plane as the admin user.
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output> {
        let bin = tokio::task::spawn_blocking(|| binary("kubectl")).await??;
        let out = tokio::process::Command::new(bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(crate::repo_root())
            .output()
            .await?;
        Ok(out)
    }

    /// Fails with the apiserver's log tail if it has exited.
    pub fn check_alive(&self) -> Result<()> {
        self.etcd.check_alive()?;
        self.apiserver.check_alive()
    }

    /// Process ids of etcd and kube-apiserver (to check that nothing leaks).
    pub fn pids(&self) -> [u32; 2] {
        [self.etcd.pid(), self.apiserver.pid()]
    }
}

/// A kubeconfig YAML for `server` with the CA inline and a bearer token.
pub(crate) fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> Result<String> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "testenv", "user": {"token": token}}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "testenv"}}],
        "current-context": "testenv",
    });
    Ok(serde_norway::to_string(&kc)?)
}

pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:016x}",
        RandomState::new().hash_one(std::time::SystemTime::now())
    )
}

/// The certificates and keys of the control plane, written to files.
struct Pki {
    ca_pem: String,
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Pki> {
        let (ca_pem, issuer) = crate::pki::ca("kfo-testenv-ca")?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = params.signed_by(&key, &issuer)?;

        let sa = KeyPair::generate()?;
        let pki = Pki {
            ca_pem,
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        std::fs::write(&pki.ca_cert, &pki.ca_pem)?;
        std::fs::write(&pki.serving_cert, cert.pem())?;
        std::fs::write(&pki.serving_key, key.serialize_pem())?;
        std::fs::write(&pki.sa_key, sa.serialize_pem())?;
        std::fs::write(&pki.sa_pub, sa.public_key_pem())?;
        if pki.ca_pem.is_empty() {
            bail!("empty CA");
        }
        Ok(pki)
    }
}
