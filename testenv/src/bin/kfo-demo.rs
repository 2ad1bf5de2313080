//! `make demo`: the operator at work on an embedded default, on this machine only.
//!
//! Starts a local Kubernetes control plane (etcd + kube-apiserver), MinIO and the Kong
//! control plane test double, installs deploy/ with the real kubectl (CRD, RBAC, webhook
//! registration), creates a `kong` namespace with the cluster certificate and read/write
//! credentials (a read-only MinIO principal and the root key), applies the MinIO example
//! policy pointed at them, runs two operator replicas (the first also serving the webhook),
//! creates data-plane pods, pushes a configuration from the CP double, and shows what a
//! person would look at: a pod's injected env, the leader, the exported object, what a new
//! data plane would load (`doctor`), and `kubectl get fcp`. Runs until Ctrl-C; everything
//! stops with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kfo_testenv::{Proc, repo_root};

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    step("starting a local Kubernetes control plane (etcd + kube-apiserver; built on first use)");
    let kube = kfo_testenv::kube().await;
    eprintln!(
        "    apiserver {}  kubeconfig {}",
        kube.apiserver_url,
        kube.kubeconfig_path().display()
    );

    step("starting MinIO (the S3-compatible store)");
    let minio = kfo_testenv::minio().await;
    let bucket = minio.bucket("kong-fallback").await?;
    eprintln!("    endpoint {}  bucket {bucket}", minio.endpoint);

    step("starting the Kong control plane test double (hybrid mode, shared mTLS, Kong 3.10.0.0)");
    let cp = kfo_testenv::KongCp::start(kfo_testenv::Mtls::Shared, "3.10.0.0").await?;
    eprintln!("    cluster endpoint {}", cp.endpoint);

    step("installing deploy/kong-fallback-operator.yaml with kubectl apply --server-side");
    kubectl(kube, &["create", "namespace", "kong-fallback-operator"]).await?;
    kubectl(
        kube,
        &[
            "apply",
            "--server-side",
            "-f",
            "deploy/kong-fallback-operator.yaml",
        ],
    )
    .await?;
    // The operator runs on this machine, not in a pod: point the registration at its URL.
    let webhook_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let webhook_url = format!("https://127.0.0.1:{webhook_port}/mutate");
    kubectl(
        kube,
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "kong-fallback-operator",
            "--type=json",
            &format!(
                r#"-p=[{{"op":"replace","path":"/webhooks/0/clientConfig","value":{{"url":"{webhook_url}"}}}}]"#
            ),
        ],
    )
    .await?;
    kubectl(
        kube,
        &[
            "wait",
            "--for=condition=Established",
            "crd/fallbackconfigpolicies.fallback.kong-dp.io",
        ],
    )
    .await?;

    step("creating namespace kong with read-only and write credentials");
    kubectl(kube, &["create", "namespace", "kong"]).await?;
    let ro = minio.read_only_credentials(&bucket).await?;
    kubectl(
        kube,
        &[
            "-n",
            "kong",
            "create",
            "secret",
            "generic",
            "fallback-read",
            &format!("--from-literal=AWS_ACCESS_KEY_ID={}", ro.access_key_id),
            &format!(
                "--from-literal=AWS_SECRET_ACCESS_KEY={}",
                ro.secret_access_key
            ),
            &format!("--from-literal=AWS_SESSION_TOKEN={}", ro.session_token),
        ],
    )
    .await?;
    kubectl(
        kube,
        &[
            "-n",
            "kong",
            "create",
            "secret",
            "generic",
            "fallback-write",
            &format!("--from-literal=AWS_ACCESS_KEY_ID={}", minio.root_user),
            &format!(
                "--from-literal=AWS_SECRET_ACCESS_KEY={}",
                minio.root_password
            ),
        ],
    )
    .await?;

    let certs = repo_root().join("target/kfo-demo-certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::write(certs.join("tls.crt"), &cp.certs.cert_pem)?;
    std::fs::write(certs.join("tls.key"), &cp.certs.key_pem)?;
    let (crt, key) = (certs.join("tls.crt"), certs.join("tls.key"));
    kubectl(
        kube,
        &[
            "-n",
            "kong",
            "create",
            "secret",
            "tls",
            "kong-cluster-cert",
            &format!("--cert={}", crt.display()),
            &format!("--key={}", key.display()),
        ],
    )
    .await?;
    std::fs::remove_dir_all(&certs)?;

    step(
        "applying deploy/examples/minio-operator-mode.yaml, pointed at the local MinIO and CP (data planes run Kong 3.6.1.4)",
    );
    let example =
        std::fs::read_to_string(repo_root().join("deploy/examples/minio-operator-mode.yaml"))?
            .replace("http://minio.minio:9000", &minio.endpoint)
            .replace("s3://kong-fallback/prod", &format!("s3://{bucket}/prod"))
            .replace("kong-cp.kong.svc:8005", &cp.endpoint)
            .replace(
                "    mode: Operator\n",
                "    mode: Operator\n    versions: [\"3.6.1.4\"]    # no data-plane pods run here to read it from\n",
            );
    let policy = kfo_testenv::repo_root().join("target/kfo-demo-policy.yaml");
    std::fs::write(&policy, example)?;
    kubectl(kube, &["apply", "-f", &policy.display().to_string()]).await?;

    step("running two replicas: kong-fallback-operator run (kfo-0 also serves the webhook)");
    // NB: `make demo` builds it with cargo, which honours CARGO_TARGET_DIR (relative to
    // the repository root, where make runs).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| repo_root().join(dir))
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = std::env::var_os("KFO_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("debug/kong-fallback-operator"));
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build` (make demo does)",
            bin.display()
        );
    }
    let kubeconfig = kube.kubeconfig_path().display().to_string();
    let operator = Proc::start(
        "kfo-0",
        &bin,
        &[
            "run".into(),
            "--identity=kfo-0".into(),
            "--http-addr=127.0.0.1:0".into(),
            "--webhook".into(),
            format!("--webhook-addr=127.0.0.1:{webhook_port}"),
            format!("--webhook-url={webhook_url}"),
            "--operator-namespace=kong-fallback-operator".into(),
        ],
        &[("KUBECONFIG", &kubeconfig)],
    )?;
    let standby = Proc::start(
        "kfo-1",
        &bin,
        &[
            "run".into(),
            "--identity=kfo-1".into(),
            "--http-addr=127.0.0.1:0".into(),
        ],
        &[("KUBECONFIG", &kubeconfig)],
    )?;
    eprintln!(
        "    logs: {} and {}",
        operator.log_path().display(),
        standby.log_path().display()
    );

    step(
        "creating two Kong data-plane pods (app=kong-dp; no kubelet runs here, they stay Pending)",
    );
    let pod = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"kong","labels":{{"app":"kong-dp"}}}},"spec":{{"containers":[{{"name":"proxy","image":"kong/kong-gateway:3.6.1.4","env":[{{"name":"KONG_ROLE","value":"data_plane"}}]}}]}}}}"#
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    let mut injected = 0;
    while injected < 2 {
        operator.check_alive()?;
        let name = format!("kong-dp-{n}");
        n += 1;
        let file = repo_root().join(format!("target/kfo-demo-{name}.json"));
        std::fs::write(&file, pod(&name))?;
        kubectl(kube, &["create", "-f", &file.display().to_string()]).await?;
        std::fs::remove_file(&file)?;
        let annotation = kubectl_out(
            kube,
            &[
                "-n",
                "kong",
                "get",
                "pod",
                &name,
                "-o",
                "jsonpath={.metadata.annotations.fallback\\.kong-dp\\.io/injected}",
            ],
        )
        .await?;
        if annotation.trim().is_empty() {
            // The webhook is not registered yet: this pod is reported as not injected.
            kubectl(
                kube,
                &["-n", "kong", "delete", "pod", &name, "--grace-period=0"],
            )
            .await?;
            if Instant::now() > deadline {
                bail!(
                    "the webhook did not inject within 60s:\n{}",
                    operator.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            injected += 1;
        }
    }

    step("pushing a configuration from the control plane (1 service, 1 route, key-auth)");
    let table = r#"{"_format_version":"3.0","_transform":false,"services":[{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"httpbin","host":"httpbin.org","port":443,"protocol":"https"}],"routes":[{"id":"2f55b0b3-04a1-4e47-8c0f-c0d6f0b2b3a2","service":"9748f662-7711-4a90-8186-dc02f10eb0f5","paths":["\/mock"]}],"plugins":[{"id":"0b1d3c3e-7b7e-4c52-a0f6-3d2f1e0c9a11","name":"key-auth","config":{"key_names":["apikey"]},"enabled":true}]}"#;
    // NB: Kong's hash of this table (what a real CP sends; `doctor` recomputes it).
    cp.push(table, "86a96454087b25065d2dc9a47e6947dc");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        operator.check_alive()?;
        let out = kubectl_out(
            kube,
            &[
                "-n",
                "kong",
                "get",
                "fcp",
                "prod",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )
        .await?;
        if out.trim() == "True" {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the policy did not become Ready within 60s; the operator log:\n{}",
                operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let first = format!("kong-dp-{}", n - 2);
    step(&format!(
        "the env the webhook injected into pod {first} (credentials are Secret references)"
    ));
    let pod: serde_json::Value = serde_json::from_str(
        &kubectl_out(kube, &["-n", "kong", "get", "pod", &first, "-o", "json"]).await?,
    )?;
    for e in pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = e["name"].as_str().unwrap_or_default();
        match (&e["value"], &e["valueFrom"]["secretKeyRef"]) {
            (serde_json::Value::String(v), _) => println!("    {name}={v}"),
            (_, r) if r.is_object() => println!(
                "    {name}  <- Secret {}, key {}",
                r["name"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default()
            ),
            _ => println!("    {name}  <- {}", e["valueFrom"]),
        }
    }
    step("the leader: the policy's Lease");
    println!(
        "{}",
        kubectl_out(kube, &["-n", "kong", "get", "lease", "prod", "-o",
            "jsonpath=holder={.spec.holderIdentity}  transitions={.spec.leaseTransitions}  renewed={.spec.renewTime}{\"\\n\"}"]).await?
    );
    step("kubectl get fcp -n kong -o wide");
    println!(
        "{}",
        kubectl_out(kube, &["-n", "kong", "get", "fcp", "-o", "wide"]).await?
    );
    step("conditions");
    println!(
        "{}",
        kubectl_out(kube, &["-n", "kong", "get", "fcp", "prod", "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{\"\\n\"}{end}"]).await?
    );
    step("the exports in status");
    println!(
        "{}",
        kubectl_out(kube, &["-n", "kong", "get", "fcp", "prod", "-o",
            "jsonpath={range .status.exports[*]}{.version}  {.key}  hash={.configHash}  {.bytes} bytes  at {.time}{\"\\n\"}{end}"]).await?
    );

    step(
        "what a new Kong 3.6.1.4 data plane would load now (kong-fallback-operator doctor, with the read-only key)",
    );
    let doctor = tokio::process::Command::new(&bin)
        .args(["doctor", "--kong-version", "3.6.1.4"])
        .env_clear()
        .env(
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{bucket}/prod"),
        )
        .env("AWS_CONFIG_STORAGE_ENDPOINT", &minio.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", &ro.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &ro.secret_access_key)
        .env("AWS_SESSION_TOKEN", &ro.session_token)
        .output()
        .await?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );

    step(&format!(
        "ready in {:.0}s.\n    Try: KUBECONFIG={kubeconfig} kubectl get fcp,lease,pods -n kong\n    Ctrl-C stops everything.",
        started.elapsed().as_secs_f64()
    ));
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    step("stopping");
    drop(standby);
    drop(operator);
    Ok(())
}

async fn kubectl(kube: &kfo_testenv::KubeEnv, args: &[&str]) -> Result<()> {
    let out = kube.kubectl(args).await?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn kubectl_out(kube: &kfo_testenv::KubeEnv, args: &[&str]) -> Result<String> {
    let out = kube.kubectl(args).await?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
