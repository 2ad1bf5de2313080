//! `make demo`: the operator at work on an embedded default, on this machine only.
//!
//! Starts a local Kubernetes control plane (etcd + kube-apiserver), MinIO and the Kong
//! control plane test double, installs the CRD with the real kubectl, creates a `kong`
//! namespace with the cluster certificate and read/write credentials (a read-only MinIO
//! principal and the root key), applies the MinIO example policy pointed at them, runs
//! `kong-fallback-operator run`, pushes a configuration from the CP double, and shows what
//! a person would look at: the exported object, what a new data plane would load
//! (`doctor`), and `kubectl get fcp`. Runs until Ctrl-C; everything stops with it.
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

    step("installing the CRD with kubectl apply -f crds/");
    kubectl(kube, &["apply", "--server-side", "-f", "crds/"]).await?;
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

    step("running kong-fallback-operator run");
    let bin = std::env::var_os("KFO_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/kong-fallback-operator"));
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build` (make demo does)",
            bin.display()
        );
    }
    let kubeconfig = kube.kubeconfig_path().display().to_string();
    let operator = Proc::start(
        "operator",
        &bin,
        &["run".into()],
        &[("KUBECONFIG", &kubeconfig)],
    )?;
    eprintln!("    logs: {}", operator.log_path().display());

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
        "ready in {:.0}s. Not built yet: injection into pods, the election (leader column), metrics.\n    Try: KUBECONFIG={kubeconfig} kubectl get fcp -A\n    Ctrl-C stops everything.",
        started.elapsed().as_secs_f64()
    ));
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    step("stopping");
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
