//! `make demo`: the operator at work on an embedded default, on this machine only.
//!
//! Starts a local Kubernetes control plane (etcd + kube-apiserver) and MinIO, installs the
//! CRD with the real kubectl, creates a `kong` namespace with read and write credentials
//! (a read-only MinIO principal and the root key), applies the MinIO example policy
//! pointed at the local MinIO, runs `kong-fallback-operator run` against it, and shows
//! what a person would look at. Runs until Ctrl-C; everything stops with it.
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

    step("applying deploy/examples/minio-operator-mode.yaml, pointed at the local MinIO");
    let example =
        std::fs::read_to_string(repo_root().join("deploy/examples/minio-operator-mode.yaml"))?
            .replace("http://minio.minio:9000", &minio.endpoint)
            .replace("s3://kong-fallback/prod", &format!("s3://{bucket}/prod"));
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
        if !out.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the operator did not report status within 60s; its log:\n{}",
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
    step(&format!(
        "ready in {:.0}s. Not built yet: injection, election and export (they arrive with the next issues).\n    Try: KUBECONFIG={kubeconfig} kubectl get fcp -A\n    Ctrl-C stops everything.",
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
