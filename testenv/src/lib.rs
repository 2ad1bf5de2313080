//! Test support for kong-fallback-operator: real components on loopback.
//!
//! - [`kube()`]: etcd + kube-apiserver (secure serving, RBAC, a generated kubeconfig),
//! - [`minio()`]: a MinIO server (root credentials, fresh buckets, read-only principals),
//! - [`minio_tls()`]: another one serving TLS only, with a certificate from a private CA,
//! - [`gcs()`]: fake-gcs-server, the GCS emulator (fresh buckets),
//! - [`GcpIam`]: service-account keys, a token endpoint and an authenticating proxy in
//!   front of the emulator (one per test),
//! - [`PodIdentityAgent`], [`MinioEnv::with_openid`]: AWS workload identities (EKS Pod
//!   Identity, IRSA) against MinIO, without static keys,
//! - [`toxiproxy()`]: Toxiproxy, for TCP faults between a client and any of them.
//!
//! Each is started once per test binary, on first use, and shared: a test takes its own
//! namespace or bucket, so tests run in parallel. The binaries are built from Go modules
//! by `tools/ensure-bin` (cached per machine). Every process is started with a parent-death
//! signal from one long-lived thread, so nothing outlives the test binary, whether the
//! tests pass, fail or the binary is killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_identity;
pub mod configs;
mod gcp_iam;
mod gcs;
mod kong_cp;
mod kube;
mod minio;
mod pki;
mod process;
mod toxiproxy;

pub use aws_identity::{MinioOpenId, PodIdentityAgent, STS_AUDIENCE, StsArnShim};
pub use gcp_iam::{GcpIam, Role, ServiceAccountKey, Upload, sign_jwt};
pub use gcs::{GcsEnv, gcs};
pub use kong_cp::{ClusterCerts, DataPlane, KongCp, Mtls};
pub use kube::{EmptyCluster, KubeEnv, RestartableCluster, kube};
pub use minio::{
    KMS_KEY as MINIO_KMS_KEY, MinioEnv, ReadOnlyCredentials, StoredVersion, TemporaryCredentials,
    minio, minio_tls,
};
pub use process::{Proc, binary, repo_root};
pub use toxiproxy::{Proxy, Stream, Toxic, Toxiproxy, toxiproxy};

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique within this test run, usable as a namespace or bucket name
/// (lowercase, starts with a letter, at most 40 characters).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    if p.is_empty() {
        p.push('t');
    }
    format!("{p}-{}-{n}", std::process::id())
}
