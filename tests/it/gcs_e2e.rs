//! GCS end to end (#15): the operator and `doctor` against fake-gcs-server, reached through
//! `STORAGE_EMULATOR_HOST`, with real service-account JSON keys checked by a small Google
//! IAM on loopback ([`kfo_testenv::GcpIam`]: token endpoint + authenticating proxy).
//!
//! NB: google-cloud-auth 1.18 never calls a key's `token_uri`: its service-account
//! credentials sign a JWT themselves (RS256, `kid` = the key id, `iss` = `sub` = the
//! account, `scope` = cloud-platform) and send it as the bearer token, which Google's APIs
//! accept in place of an access token (`src/credentials/service_account.rs`,
//! `ServiceAccountTokenProvider::token`). So what is tested for the operator is that JWT,
//! verified by the proxy with the key's public half, and that `/token` is never called;
//! the JWT-bearer exchange itself (what Kong's lua-resty-gcp does, though at Google's fixed
//! token URL rather than the key's `token_uri`) is tested once, from the test, in
//! [`the_iam_double_checks_both_ways_a_key_becomes_a_credential`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kfo_testenv::{GcpIam, Role, ServiceAccountKey, gcs, sign_jwt};
use kong_fallback_operator::storage::gcs::{GcsCredentials, GcsStore};
use kong_fallback_operator::storage::{ErrorKind, ObjectStore, Precondition, PutObject};
use serde_json::json;

use crate::cluster::condition;

fn put(key: &str, body: &'static str) -> PutObject {
    PutObject {
        key: key.into(),
        body: Bytes::from_static(body.as_bytes()),
        content_type: "application/json".into(),
        metadata: BTreeMap::new(),
        precondition: Precondition::None,
    }
}

/// The product's store on `bucket` through the IAM's proxy, with `key`.
async fn store(iam: &GcpIam, key: &ServiceAccountKey, bucket: &str) -> GcsStore {
    GcsStore::new(
        Some(&iam.endpoint),
        &GcsCredentials::ServiceAccountJson(key.json.clone()),
        bucket,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_service_account_key_signs_its_own_jwt_which_the_store_checks_and_token_uri_is_never_called()
 {
    let env = gcs().await;
    let bucket = env.bucket("gcs-sa").await.unwrap();
    let iam = GcpIam::start(&env.endpoint).await.unwrap();
    let writer = iam.service_account("kfo-writer", Role::Writer).unwrap();
    let reader = iam.service_account("kfo-reader", Role::Reader).unwrap();

    let w = store(&iam, &writer, &bucket).await;
    w.put(put("p/3.6.1.4/config.json", "{}")).await.unwrap();
    assert!(w.touch("p/3.6.1.4/config.json").await.unwrap());
    let r = store(&iam, &reader, &bucket).await;
    assert_eq!(r.list("p/").await.unwrap().len(), 1);
    assert!(r.get("p/3.6.1.4/config.json").await.unwrap().is_some());
    let e = r.put(put("p/x", "{}")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "a reader's write: {e}");

    // A key the account does not have, and a deleted key: refused (401).
    let wrong = iam.unregistered_key(&reader).unwrap();
    let e = store(&iam, &wrong, &bucket)
        .await
        .list("p/")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
    iam.revoke(&writer);
    let e = w.head("p/3.6.1.4/config.json").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");

    let (proxied, unauthenticated, forbidden) = iam.counts();
    assert!(proxied >= 4, "{proxied}");
    assert_eq!((unauthenticated, forbidden), (2, 1));
    assert_eq!(
        iam.token_requests(),
        (0, 0),
        "google-cloud-auth called token_uri: it no longer self-signs; test the exchange instead"
    );
    // The bearer credentials were self-signed JWTs naming the key.
    let bearers = iam.bearers();
    assert!(
        bearers.iter().all(|b| b.split('.').count() == 3),
        "not JWTs: {} bearers",
        bearers.len()
    );
}

#[tokio::test]
async fn the_iam_double_checks_both_ways_a_key_becomes_a_credential() {
    let env = gcs().await;
    let bucket = env.bucket("gcs-token").await.unwrap();
    let iam = GcpIam::start(&env.endpoint).await.unwrap();
    let key = iam.service_account("kong-dp", Role::Reader).unwrap();
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = |key: &ServiceAccountKey, aud: &str| {
        sign_jwt(
            key,
            &json!({"iss": key.client_email, "aud": aud,
                    "scope": "https://www.googleapis.com/auth/devstorage.read_only",
                    "iat": now, "exp": now + 3600}),
        )
        .unwrap()
    };
    let exchange = async |assertion: String| {
        let resp = http
            .post(&iam.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
            ))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let list = async |token: &str| {
        http.get(format!("{}/storage/v1/b/{bucket}/o", iam.endpoint))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    // The JWT-bearer grant: the key's own assertion gets an access token that lists; also
    // when posted as JSON, as Kong's lua-resty-gcp does.
    let (status, body) = exchange(assertion(&key, &iam.token_uri)).await;
    assert_eq!(status, 200, "{body}");
    let as_json = http
        .post(&iam.token_uri)
        .json(
            &json!({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                      "assertion": assertion(&key, &iam.token_uri)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(as_json.status().as_u16(), 200);
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(list(&token).await, 200);
    // Signed by another key, or for another audience: no token.
    let wrong = iam.unregistered_key(&key).unwrap();
    let (status, body) = exchange(assertion(&wrong, &iam.token_uri)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = exchange(assertion(&key, "https://example.invalid/token")).await;
    assert_eq!(status, 400);
    // A self-signed JWT for storage works as a bearer as it is; an unsigned one does not.
    let self_signed = sign_jwt(
        &key,
        &json!({"iss": key.client_email, "sub": key.client_email,
                "aud": "https://storage.googleapis.com/", "iat": now, "exp": now + 3600}),
    )
    .unwrap();
    assert_eq!(list(&self_signed).await, 200);
    let mut forged: Vec<&str> = self_signed.split('.').collect();
    forged[2] = "AAAA";
    assert_eq!(list(&forged.join(".")).await, 401);
    // The key is deleted: its access token and its JWTs stop working.
    iam.revoke(&key);
    assert_eq!(list(&token).await, 401);
    assert_eq!(list(&self_signed).await, 401);
    assert_eq!(iam.token_requests(), (4, 2));
}

/// A namespace, a fresh bucket, the IAM with a writer and a reader key in the Secrets
/// `fallback-write` / `fallback-read` (key `GCP_SERVICE_ACCOUNT`), a Kong CP double and its
/// certificate; policies and operator processes are the test's.
struct GcsSetup {
    client: kube::Client,
    ns: String,
    bucket: String,
    gcs: &'static kfo_testenv::GcsEnv,
    iam: GcpIam,
    writer: ServiceAccountKey,
    reader: ServiceAccountKey,
    cp: kfo_testenv::KongCp,
    kubeconfig: String,
    pushes: u64,
    /// The bucket without the IAM: what the test reads to check.
    raw: GcsStore,
}

const VERSION: &str = "3.6.1.4";
const KMS_KEY: &str = "projects/kfo-test/locations/us/keyRings/kong/cryptoKeys/fallback";

impl GcsSetup {
    async fn new(prefix: &str) -> GcsSetup {
        use kube::CustomResourceExt;
        let env = kfo_testenv::kube().await;
        env.install_crd(&kong_fallback_operator::api::FallbackConfigPolicy::crd())
            .await
            .unwrap();
        let client = env.client().await.unwrap();
        let ns = env.namespace(prefix).await.unwrap();
        let gcs = gcs().await;
        let bucket = gcs.bucket(prefix).await.unwrap();
        let iam = GcpIam::start(&gcs.endpoint).await.unwrap();
        let writer = iam.service_account("kfo-writer", Role::Writer).unwrap();
        let reader = iam.service_account("kong-reader", Role::Reader).unwrap();
        let cp = kfo_testenv::KongCp::start(kfo_testenv::Mtls::Shared, "3.10.0.0")
            .await
            .unwrap();
        let setup = GcsSetup {
            raw: GcsStore::new(Some(&gcs.endpoint), &GcsCredentials::Anonymous, &bucket)
                .await
                .unwrap(),
            client,
            ns,
            bucket,
            gcs,
            iam,
            writer,
            reader,
            cp,
            kubeconfig: env.kubeconfig_path().display().to_string(),
            pushes: 0,
        };
        let cert = json!({"tls.crt": setup.cp.certs.cert_pem, "tls.key": setup.cp.certs.key_pem});
        for (name, data) in [
            ("kong-cluster-cert", cert),
            (
                "fallback-write",
                json!({"GCP_SERVICE_ACCOUNT": setup.writer.json}),
            ),
            (
                "fallback-read",
                json!({"GCP_SERVICE_ACCOUNT": setup.reader.json}),
            ),
        ] {
            setup.set_secret(name, data).await;
        }
        setup
    }

    /// Creates or replaces the Secret `name`.
    async fn set_secret(&self, name: &str, data: serde_json::Value) {
        use k8s_openapi::api::core::v1::Secret;
        let api: kube::Api<Secret> = kube::Api::namespaced(self.client.clone(), &self.ns);
        let string_data = serde_json::from_value(data).unwrap();
        match api.get_opt(name).await.unwrap() {
            Some(mut s) => {
                s.data = None;
                s.string_data = Some(string_data);
                api.replace(name, &Default::default(), &s).await.unwrap();
            }
            None => {
                let mut s: Secret = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}
                }))
                .unwrap();
                s.string_data = Some(string_data);
                api.create(&Default::default(), &s).await.unwrap();
            }
        }
    }

    /// The policy `prod`: `gcs://<bucket>/kong` with the two Secrets, and `extra` merged
    /// into the spec.
    async fn policy(&self, extra: serde_json::Value) -> kube::Api<FallbackConfigPolicy> {
        let mut spec = json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {
                "url": format!("gcs://{}/kong", self.bucket),
                "readCredentials": {"secretName": "fallback-read"},
                "writeCredentials": {"secretName": "fallback-write"},
                "validationInterval": "1s"
            }
        });
        merge(&mut spec, extra);
        let api = kube::Api::<FallbackConfigPolicy>::namespaced(self.client.clone(), &self.ns);
        api.create(&Default::default(), &crate::cluster::policy("prod", spec))
            .await
            .unwrap();
        api
    }

    /// An operator process: its GCS calls go to the IAM's proxy through
    /// `STORAGE_EMULATOR_HOST`, given as Google's libraries take it (`host:port`).
    fn start(&self, name: &str) -> kfo_testenv::Proc {
        let emulator = self.iam.endpoint.trim_start_matches("http://");
        kfo_testenv::Proc::start(
            &kfo_testenv::unique_name(name),
            std::path::Path::new(env!("CARGO_BIN_EXE_kong-fallback-operator")),
            &[
                "run".into(),
                "--identity".into(),
                name.into(),
                "--namespace".into(),
                self.ns.clone(),
                "--http-addr".into(),
                "127.0.0.1:0".into(),
            ],
            &[
                ("KUBECONFIG", self.kubeconfig.as_str()),
                ("STORAGE_EMULATOR_HOST", emulator),
                ("RUST_LOG", "info,kong_fallback_operator=debug"),
            ],
        )
        .unwrap()
    }

    /// Pushes a new configuration from the CP double; its hash.
    fn push(&mut self) -> String {
        self.pushes += 1;
        let table = format!(
            r#"{{"_format_version":"3.0","_transform":false,"services":[{{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"svc-{}","host":"example.com","port":443}}],"routes":[{{"id":"2f55b0b3-04a1-4e47-8c0f-c0d6f0b2b3a2","service":"9748f662-7711-4a90-8186-dc02f10eb0f5","paths":["/mock"]}}]}}"#,
            self.pushes
        );
        let hash = kong_fallback_operator::kong::config::config_hashes(
            &serde_json::from_str(&table).unwrap(),
        )
        .config;
        self.cp.push(&table, &hash);
        hash
    }

    /// Waits until `config.json` holds `hash`; the replica that wrote it.
    async fn wait_stored(&self, hash: &str, secs: u64) -> String {
        use kong_fallback_operator::export::runner::{META_CONFIG_HASH, META_WRITER};
        let key = format!("kong/{VERSION}/config.json");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(o)) = self.raw.head(&key).await
                && o.metadata.get(META_CONFIG_HASH).map(String::as_str) == Some(hash)
            {
                return o.metadata.get(META_WRITER).cloned().unwrap_or_default();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{hash} not stored within {secs}s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The object resource as the JSON API gives it (metageneration, metadata...).
    async fn resource(&self, key: &str) -> Option<serde_json::Value> {
        let resp = reqwest::Client::new()
            .get(format!(
                "{}/storage/v1/b/{}/o/{}",
                self.gcs.endpoint,
                self.bucket,
                key.replace('/', "%2F")
            ))
            .send()
            .await
            .unwrap();
        resp.status()
            .is_success()
            .then_some(resp.json().await.unwrap())
    }

    async fn lease_holder(&self) -> Option<String> {
        let lease = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            self.client.clone(),
            &self.ns,
        )
        .get_opt("prod")
        .await
        .ok()??;
        let holder = lease.spec?.holder_identity?;
        holder.split('_').next().map(str::to_owned)
    }

    /// Every secret value of the setup: private keys and the bearer JWTs the store saw.
    fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = [&self.writer, &self.reader]
            .iter()
            .map(|k| k.private_key_pem.lines().nth(1).unwrap().to_owned())
            .collect();
        s.push(self.cp.certs.key_pem.lines().nth(1).unwrap().to_owned());
        // NB: the signature part: the header and the claims are not secret.
        s.extend(
            self.iam
                .bearers()
                .iter()
                .filter_map(|b| b.rsplit('.').next().map(str::to_owned)),
        );
        s.sort();
        s.dedup();
        s
    }

    /// Asserts that no secret value is in `logs`, the policy (status) or the Events.
    async fn assert_no_secret_anywhere(&self, logs: &[&kfo_testenv::Proc]) {
        let policy = kube::Api::<FallbackConfigPolicy>::namespaced(self.client.clone(), &self.ns)
            .get("prod")
            .await
            .unwrap();
        let events = kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
            self.client.clone(),
            &self.ns,
        )
        .list(&Default::default())
        .await
        .unwrap();
        let mut seen = vec![(
            "status or Events".to_owned(),
            format!(
                "{}{}",
                serde_json::to_string(&policy).unwrap(),
                serde_json::to_string(&events).unwrap()
            ),
        )];
        for p in logs {
            seen.push((
                p.log_path().display().to_string(),
                std::fs::read_to_string(p.log_path()).unwrap(),
            ));
        }
        let secrets = self.secrets();
        assert!(secrets.len() > 3, "no bearer was seen");
        for (what, text) in &seen {
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "a secret value in {what}");
            }
        }
    }
}

use kong_fallback_operator::api::FallbackConfigPolicy;

/// Merges `extra` into `base` (objects recursively, anything else replaced).
fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

#[tokio::test]
async fn operator_mode_on_gcs_with_a_service_account_key_exports_mirrors_and_survives_a_kill() {
    use kong_fallback_operator::controller::exporters::node_id;
    use kong_fallback_operator::kong::StorageUrl;
    let mut s = GcsSetup::new("gcs-operator").await;
    let api = s
        .policy(json!({
            "exporter": {
                "mode": "Operator",
                "versions": [VERSION],
                "minInterval": "0s",
                "historyLimit": 2,
                "controlPlane": {"endpoint": s.cp.endpoint, "clusterCertSecret": "kong-cluster-cert"}
            },
            "storage": {"gcsOptions": {"kmsKeyName": KMS_KEY, "storageClass": "NEARLINE"}},
            "election": {"leaseDuration": "8s", "renewDeadline": "6s", "retryPeriod": "1s"}
        }))
        .await;
    let ops = [("kfo-a", s.start("kfo-a")), ("kfo-b", s.start("kfo-b"))];
    let first = crate::wait::until("a leader", async || s.lease_holder().await).await;

    // Exports with the writer key land at Kong's key, written by the Lease holder.
    let mut hash = String::new();
    for _ in 0..3 {
        hash = s.push();
        assert_eq!(s.wait_stored(&hash, 30).await, first);
    }
    let url = StorageUrl::parse(&format!("gcs://{}/kong", s.bucket)).unwrap();
    // NB: the history entry is written (and pruned) after config.json.
    crate::wait::until("historyLimit 2: two history entries", async || {
        let history = s.raw.list(&url.history_prefix(VERSION)).await.ok()?;
        (history.len() == 2 && history.iter().any(|o| o.key.contains(&hash))).then_some(())
    })
    .await;
    let p = crate::wait::until("status with the export and Reachable", async || {
        let p = api.get("prod").await.ok()?;
        let exported = p
            .status
            .as_ref()?
            .exports
            .iter()
            .any(|e| e.config_hash == hash);
        let reachable = condition(&p, "StorageReachable")?.0 == "True";
        (exported && reachable).then_some(p)
    })
    .await;
    // gcsOptions on every insert: the storage class as the emulator keeps it, the KMS key
    // as the request carried it (fake-gcs-server drops kmsKeyName).
    let stored = s
        .resource(&format!("kong/{VERSION}/config.json"))
        .await
        .unwrap();
    assert_eq!(stored["storageClass"], "NEARLINE", "{stored}");
    let uploads = s.iam.uploads();
    assert!(
        uploads
            .iter()
            .any(|u| u.name == format!("kong/{VERSION}/config.json")),
        "{uploads:?}"
    );
    for u in &uploads {
        assert_eq!(u.kms_key_name.as_deref(), Some(KMS_KEY), "{u:?}");
        assert_eq!(u.storage_class.as_deref(), Some("NEARLINE"), "{u:?}");
    }
    let e = &p.status.as_ref().unwrap().exports[0];
    assert_eq!(
        (e.version.as_str(), e.key.as_str()),
        (VERSION, format!("kong/{VERSION}/config.json").as_str())
    );
    assert_eq!(
        condition(&p, "Exporting").unwrap().0,
        "True",
        "{:?}",
        condition(&p, "Exporting")
    );

    // The mirror: `election/<node id>`, created once, then refreshed by metadata updates
    // (same generation and creation time, a newer metageneration); others are removed.
    let uid = p.metadata.uid.clone().unwrap();
    let reg = format!("{}{}", url.election_prefix(VERSION), node_id(&uid, VERSION));
    let before = crate::wait::until("the registration", async || s.resource(&reg).await).await;
    let native = format!("{}0000-native-node", url.election_prefix(VERSION));
    s.raw.put(put(&native, "")).await.unwrap();
    tokio::time::sleep(kong_fallback_operator::election::mirror::REFRESH * 2).await;
    let after = s.resource(&reg).await.expect("still registered");
    assert_eq!(after["generation"], before["generation"], "not rewritten");
    assert_eq!(after["timeCreated"], before["timeCreated"]);
    assert_ne!(
        after["metadata"]["refreshed"], before["metadata"]["refreshed"],
        "refreshed by a metadata update: {before} -> {after}"
    );
    let left: Vec<String> = s
        .raw
        .list(&url.election_prefix(VERSION))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&reg),
        "the other registration is removed"
    );

    // SIGKILL the leader: the other replica takes over, exports, and keeps the registration.
    let killed = &ops.iter().find(|(n, _)| *n == first).unwrap().1;
    killed.signal("KILL").unwrap();
    let hash = s.push();
    let second = s.wait_stored(&hash, 8 + 1 + 25).await;
    assert_ne!(second, first, "a new writer after the kill");
    // The new leader has the same node id: it refreshes the registration it finds, whose
    // creation time (the register time Kong reads) stays the oldest.
    tokio::time::sleep(kong_fallback_operator::election::mirror::REFRESH).await;
    let kept = s.resource(&reg).await.expect("registered");
    assert_eq!(kept["timeCreated"], before["timeCreated"], "{kept}");
    assert_eq!(kept["generation"], before["generation"], "{kept}");

    // No credential was ever exchanged at token_uri, none was refused, and no secret value
    // is in a log, the status or an Event.
    assert_eq!(s.iam.token_requests(), (0, 0));
    let (proxied, unauthenticated, forbidden) = s.iam.counts();
    assert!(proxied > 10, "{proxied}");
    assert_eq!((unauthenticated, forbidden), (0, 0));
    s.assert_no_secret_anywhere(&[&ops[0].1, &ops[1].1]).await;

    // doctor, with what a data plane gets (the reader key) and the same emulator variable.
    let storage = format!("gcs://{}/kong", s.bucket);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
        .args(["doctor", "--kong-version", VERSION])
        .env_clear()
        .env("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", &storage)
        .env("GCP_SERVICE_ACCOUNT", &s.reader.json)
        .env(
            "STORAGE_EMULATOR_HOST",
            s.iam.endpoint.trim_start_matches("http://"),
        )
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("routes=1 services=1") && text.contains("would load"),
        "{text}"
    );
    assert!(!text.contains(s.reader.private_key_pem.lines().nth(1).unwrap()));
}

/// NB: a wrong key and a deleted (revoked) key get one reason, `Credentials`: the
/// operator's client never exchanges its key at `token_uri` (see the module comment), so
/// both fail at the store with the same answer, 401 "Invalid Credentials", which is all
/// GCS says about either. A key that cannot sign at all is `StorageUnusable`, found
/// without asking the store. A missing bucket is `BucketMissing`, also on fake-gcs-server,
/// whose 404s do not say what is missing.
#[tokio::test]
async fn storage_reachable_on_gcs_tells_a_refused_key_from_a_missing_bucket() {
    let s = GcsSetup::new("gcs-reach").await;
    let api = s
        .policy(json!({"exporter": {"mode": "None", "versions": [VERSION]}}))
        .await;
    let op = s.start("kfo-reach");
    let wait_reason = async |reason: &str| {
        let mut last = None;
        for _ in 0..150 {
            last = api
                .get("prod")
                .await
                .ok()
                .and_then(|p| condition(&p, "StorageReachable"));
            if let Some(c) = last.as_ref().filter(|c| c.1 == reason) {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "StorageReachable not {reason} within 30 s: {last:?}; IAM (proxied, 401, 403): {:?}",
            s.iam.counts()
        );
    };
    // The reader key reads (an absent config.json is fine: the store answered).
    let (status, _, message) = wait_reason("Reachable").await;
    assert_eq!(status, "True", "{message}");

    // A wrong key: the account's name, another key pair. GCS answers 401.
    let wrong = s.iam.unregistered_key(&s.reader).unwrap();
    s.set_secret("fallback-read", json!({"GCP_SERVICE_ACCOUNT": wrong.json}))
        .await;
    let (status, _, message) = wait_reason("Credentials").await;
    assert_eq!(status, "False");
    assert!(message.contains("roles/storage.objectViewer"), "{message}");

    // A key the client cannot use at all (a PKCS #1 key where Google's JSON has PKCS #8):
    // found without asking the store.
    let mut unusable: serde_json::Value = serde_json::from_str(&s.reader.json).unwrap();
    unusable["private_key"] =
        json!("-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----\n");
    s.set_secret(
        "fallback-read",
        json!({"GCP_SERVICE_ACCOUNT": unusable.to_string()}),
    )
    .await;
    let (status, _, message) = wait_reason("StorageUnusable").await;
    assert_eq!(status, "False");
    assert!(message.contains("cannot sign a token"), "{message}");
    assert!(!message.contains("MIIBOgIBAAJBAK"), "{message}");

    // The right key again, then the key is deleted (its tokens are revoked): 401 again,
    // and the same reason: GCS does not say which (see the test's note).
    s.set_secret(
        "fallback-read",
        json!({"GCP_SERVICE_ACCOUNT": s.reader.json}),
    )
    .await;
    wait_reason("Reachable").await;
    s.iam.revoke(&s.reader);
    let (status, _, _) = wait_reason("Credentials").await;
    assert_eq!(status, "False");

    // A missing bucket, with a working key.
    let reader2 = s
        .iam
        .service_account("kong-reader-2", Role::Reader)
        .unwrap();
    s.set_secret(
        "fallback-read",
        json!({"GCP_SERVICE_ACCOUNT": reader2.json}),
    )
    .await;
    wait_reason("Reachable").await;
    api.patch(
        "prod",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"spec": {"storage": {"url": format!("gcs://{}-gone/kong", s.bucket)}}}),
        ),
    )
    .await
    .unwrap();
    let (status, _, message) = wait_reason("BucketMissing").await;
    assert_eq!(status, "False");
    assert!(message.contains("-gone"), "{message}");
    assert_eq!(s.iam.token_requests(), (0, 0));
    s.assert_no_secret_anywhere(&[&op]).await;
}

#[tokio::test]
async fn backup_pods_mode_on_gcs_designates_a_pod_and_kongs_gcs_election_agrees() {
    use k8s_openapi::api::core::v1::Pod;
    use kong_fallback_operator::election::mirror::{Flavor, kong_elect, parse};
    use kong_fallback_operator::inject::{self, SecretFacts};
    use kong_fallback_operator::kong::StorageUrl;
    let s = GcsSetup::new("gcs-backup").await;
    let api = s
        .policy(json!({
            "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
            "exporter": {"mode": "BackupPods"}
        }))
        .await;
    let policy = api.get("prod").await.unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(s.client.clone(), &s.ns);
    // Two Ready backup pods, created with what the webhook injects.
    let mut facts = SecretFacts::default();
    for name in ["fallback-write", "fallback-read"] {
        facts.record(&s.ns, name, Some(["GCP_SERVICE_ACCOUNT".to_owned()].into()));
    }
    let mut uids = Vec::new();
    for name in ["kong-backup-0", "kong-backup-1"] {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": s.ns, "labels": {"app": "kong-backup"}},
            "spec": {"containers": [{"name": "proxy", "image": format!("kong/kong-gateway:{VERSION}")}]}
        }))
        .unwrap();
        let o = inject::inject(&pod, std::slice::from_ref(&policy), &facts);
        let mut doc = serde_json::to_value(&pod).unwrap();
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(o.patch)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let pod: Pod = serde_json::from_value(doc).unwrap();
        // The backup pod gets the write key, by reference.
        let env = serde_json::to_string(&pod.spec.as_ref().unwrap().containers[0].env).unwrap();
        assert!(
            env.contains(r#""name":"fallback-write","key":"GCP_SERVICE_ACCOUNT""#)
                || env.contains(r#""key":"GCP_SERVICE_ACCOUNT","name":"fallback-write""#),
            "{env}"
        );
        assert!(
            !env.contains(&s.writer.key_id),
            "a key value in the pod spec"
        );
        let created = pods.create(&Default::default(), &pod).await.unwrap();
        uids.push(created.metadata.uid.unwrap());
        let status = json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status(name, &Default::default(), &kube::api::Patch::Merge(&status))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let op = s.start("kfo-backup");

    // The oldest Ready pod is designated; its node id is registered as
    // `election/<node id>` (GCS flavour) with the write key, and Kong's GCS election (Kong's
    // default interval) elects it.
    let url = StorageUrl::parse(&format!("gcs://{}/kong", s.bucket)).unwrap();
    let prefix = url.election_prefix(VERSION);
    let leader = crate::wait::until("kong-backup-0 designated and elected", async || {
        let leader = api.get("prod").await.ok()?.status?.leader?;
        let d = leader.backup_pods.iter().find(|d| d.version == VERSION)?;
        let regs: Vec<_> = s
            .raw
            .list(&prefix)
            .await
            .ok()?
            .iter()
            .filter_map(|o| parse(Flavor::Gcs, &prefix, o))
            .collect();
        let elected = kong_elect(
            &regs,
            std::time::SystemTime::now(),
            Duration::from_secs(600),
        )
        .map(|r| r.node_id.clone());
        (d.node_id == uids[0] && elected.as_deref() == Some(uids[0].as_str())).then_some(leader)
    })
    .await;
    assert_eq!(leader.backup_pod.as_deref(), Some("kong-backup-0"));
    let keys: Vec<String> = s
        .raw
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, [format!("{prefix}{}", uids[0])]);
    let p = crate::wait::until("StorageReachable", async || {
        let p = api.get("prod").await.ok()?;
        (condition(&p, "StorageReachable")?.1 == "Reachable").then_some(p)
    })
    .await;
    assert_eq!(condition(&p, "StorageReachable").unwrap().0, "True");
    assert_eq!(s.iam.token_requests(), (0, 0));
    assert_eq!(s.iam.counts().1, 0, "no request refused");
    s.assert_no_secret_anywhere(&[&op]).await;
}

/// A native Kong 3.6+ backup node's GCS election, written from DOMAIN.md §4 and Kong's
/// `kong/clustering/config_sync_backup/strategies/gcs.lua` (Enterprise), not from the
/// product's code: register as `election/<node_id>` with objects.update, or objects.insert
/// when the update fails; the register time is the object's `timeCreated`, the refresh time
/// its `updated`; fresh when `now <= updated + interval + 5 s`; the smallest register time
/// wins, ties to the smallest node id.
struct GcsNativePeer {
    http: reqwest::Client,
    endpoint: String,
    bucket: String,
    prefix: String,
    node_id: String,
    interval: Duration,
}

impl GcsNativePeer {
    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            self.bucket,
            name.replace('/', "%2F")
        )
    }

    /// Registers (update, else insert).
    async fn register(&self) {
        let name = format!("{}{}", self.prefix, self.node_id);
        let updated = self
            .http
            .put(self.object_url(&name))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if updated.status().is_success() {
            return;
        }
        let inserted = self
            .http
            .post(format!(
                "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
                self.endpoint,
                self.bucket,
                name.replace('/', "%2F")
            ))
            .body("")
            .send()
            .await
            .unwrap();
        assert!(inserted.status().is_success(), "{inserted:?}");
    }

    /// Who Kong's election elects, judged at `now` (the peer's clock).
    async fn elect_at(&self, now: std::time::SystemTime) -> Option<String> {
        let list: serde_json::Value = self
            .http
            .get(format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket))
            .query(&[("prefix", self.prefix.as_str()), ("maxResults", "1000")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let time = |v: &serde_json::Value| {
            v.as_str()?
                .parse::<jiff::Timestamp>()
                .ok()
                .map(std::time::SystemTime::from)
        };
        let mut best: Option<(std::time::SystemTime, String)> = None;
        for o in list["items"].as_array().into_iter().flatten() {
            let Some(node) = o["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(&self.prefix))
            else {
                continue;
            };
            let (Some(created), Some(updated)) = (time(&o["timeCreated"]), time(&o["updated"]))
            else {
                continue;
            };
            // NB: the peer's clock may be driven ahead of the store's: a round at `now`
            // would have refreshed its own registration at `now`.
            let updated = if node == self.node_id {
                updated.max(now)
            } else {
                updated
            };
            if now > updated + self.interval + Duration::from_secs(5) {
                continue;
            }
            let candidate = (created, node.to_owned());
            if best.as_ref().is_none_or(|b| candidate < *b) {
                best = Some(candidate);
            }
        }
        best.map(|b| b.1)
    }

    async fn round(&self) -> Option<String> {
        self.register().await;
        self.elect_at(std::time::SystemTime::now()).await
    }
}

/// NB: fake-gcs-server does not move `updated` on a metadata update (real GCS does), so
/// the operator's registration, refreshed by metadata patches, keeps its creation time as
/// `updated` there. The peer runs with Kong's default interval (600 s), which no part of
/// this test outlasts, and the freshness rule is checked by driving the peer's clock
/// (`elect_at`). That the refresh is a metadata update (same generation and creation time)
/// is checked on the emulator in the Operator-mode test above.
#[tokio::test]
async fn a_native_kong_gcs_peer_never_elects_itself_while_the_operator_leads() {
    use kong_fallback_operator::election::mirror::{Flavor, Mirror};
    use kong_fallback_operator::election::{Claim, Gate};
    use kong_fallback_operator::kong::StorageUrl;
    let env = gcs().await;
    let bucket = env.bucket("gcs-peer").await.unwrap();
    let url = StorageUrl::parse(&format!("gcs://{bucket}/kong")).unwrap();
    let store: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(
        GcsStore::new(Some(&env.endpoint), &GcsCredentials::Anonymous, &bucket)
            .await
            .unwrap(),
    );
    let peer = GcsNativePeer {
        http: reqwest::Client::new(),
        endpoint: env.endpoint.clone(),
        bucket: bucket.clone(),
        prefix: url.election_prefix(VERSION),
        // Sorts before any UUID: a tie would go to the peer.
        node_id: "0000-native".into(),
        interval: Duration::from_secs(600),
    };
    // Registered before the operator: alone, and older, it leads.
    assert_eq!(peer.round().await.as_deref(), Some("0000-native"));
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let leading = |epoch: i32| Claim {
        holder: Some(format!("leader-{epoch}")),
        epoch,
        since: None,
        leading_until: Some(std::time::Instant::now() + Duration::from_secs(3600)),
        lease_uid: None,
    };
    let mirror = |node: &str| Mirror {
        store: store.clone(),
        flavor: Flavor::Gcs,
        url: url.clone(),
        version: VERSION.into(),
        node_id: node.into(),
    };
    let (gate, control) = Gate::new();
    control.claims.send(leading(1)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(mirror("operator-leader-1").run(gate, stop_rx.clone()));

    crate::wait::until("the operator's registration, alone", async || {
        let regs = store.list(&url.election_prefix(VERSION)).await.ok()?;
        let keys: Vec<&str> = regs.iter().map(|o| o.key.as_str()).collect();
        (keys.len() == 1 && keys[0].ends_with("/operator-leader-1")).then_some(())
    })
    .await;
    // The peer's older registration is removed; re-created at its next round, it is younger
    // than the operator's. Over rounds spanning several mirror refreshes, the peer never
    // elects itself.
    let mut elected = BTreeMap::<Option<String>, u32>::new();
    let deadline =
        tokio::time::Instant::now() + kong_fallback_operator::election::mirror::REFRESH * 3;
    while tokio::time::Instant::now() < deadline {
        *elected.entry(peer.round().await).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        elected.keys().collect::<Vec<_>>(),
        [&Some("operator-leader-1".to_owned())],
        "{elected:?}"
    );

    // A new leader (another replica): once the old one steps down, the peer follows it.
    let (gate2, control2) = Gate::new();
    control2.claims.send(leading(2)).unwrap();
    let second = tokio::spawn(mirror("operator-leader-2").run(gate2, stop_rx.clone()));
    control
        .claims
        .send(Claim {
            leading_until: None,
            ..leading(1)
        })
        .unwrap();
    crate::wait::until("the peer follows the new leader", async || {
        (peer.round().await.as_deref() == Some("operator-leader-2")).then_some(())
    })
    .await;

    // The operator dies without cleaning up: its registration stays fresh for
    // `interval + 5 s` after its last refresh; the peer leads once its clock is past that.
    first.abort();
    second.abort();
    drop(stop);
    let now = std::time::SystemTime::now();
    assert_eq!(peer.round().await.as_deref(), Some("operator-leader-2"));
    assert_eq!(
        peer.elect_at(now + peer.interval).await.as_deref(),
        Some("operator-leader-2"),
        "still fresh within the interval"
    );
    assert_eq!(
        peer.elect_at(now + peer.interval + Duration::from_secs(6))
            .await
            .as_deref(),
        Some("0000-native")
    );
}

#[tokio::test]
async fn gcs_options_are_for_gcs_urls_and_documented_for_kubectl_explain() {
    use kube::CustomResourceExt;
    let env = kfo_testenv::kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("gcs-options").await.unwrap();
    let api = kube::Api::<FallbackConfigPolicy>::namespaced(client, &ns);
    let policy = |url: &str, options: serde_json::Value| {
        crate::cluster::policy(
            "p",
            json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {"url": url, "region": "us-east-1",
                            "readCredentials": {"secretName": "r"}, "gcsOptions": options},
                "exporter": {"mode": "None"}
            }),
        )
    };
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let good = json!({"kmsKeyName": KMS_KEY, "storageClass": "COLDLINE"});
    api.create(&dry, &policy("gcs://bkt/kong", good.clone()))
        .await
        .unwrap();
    let e = api
        .create(&dry, &policy("s3://bkt/kong", good))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("use them with a gcs:// url"), "{e}");
    let e = api
        .create(
            &dry,
            &policy("gcs://bkt/kong", json!({"kmsKeyName": "alias/kong"})),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("kmsKeyName"), "{e}");

    let out = env
        .kubectl(&[
            "explain",
            "fallbackconfigpolicies.spec.storage.gcsOptions",
            "--recursive=false",
        ])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kmsKeyName") && text.contains("Cloud KMS") && text.contains("storageClass"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
