//! fake-gcs-server on loopback: the GCS emulator of the tests (JSON API, in memory).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

use crate::process::{Proc, binary, on_free_ports, wait_until};

/// The shared emulator of this test binary.
pub struct GcsEnv {
    /// `http://127.0.0.1:<port>`: the endpoint override for the GCS client.
    pub endpoint: String,
    proc: Proc,
}

/// Starts fake-gcs-server on first use (building it if needed) and returns it.
pub async fn gcs() -> &'static GcsEnv {
    // NB: a failure is kept too, so the other tests of the binary fail at once with the
    // same message instead of each starting the processes again.
    static ENV: OnceCell<Result<GcsEnv, String>> = OnceCell::const_new();
    let env = ENV
        .get_or_init(|| async { GcsEnv::start().await.map_err(|e| format!("{e:#}")) })
        .await;
    match env {
        Ok(env) => env,
        Err(e) => panic!("testenv: cannot start fake-gcs-server: {e}"),
    }
}

impl GcsEnv {
    async fn start() -> Result<GcsEnv> {
        let bin = tokio::task::spawn_blocking(|| binary("fake-gcs-server")).await??;
        let (endpoint, proc) = on_free_ports(async |[port]| {
            let endpoint = format!("http://127.0.0.1:{port}");
            let proc = Proc::start(
                "fake-gcs-server",
                &bin,
                &[
                    "-scheme=http".into(),
                    "-host=127.0.0.1".into(),
                    format!("-port={port}"),
                    "-backend=memory".into(),
                    format!("-public-host=127.0.0.1:{port}"),
                    format!("-external-url={endpoint}"),
                    "-log-level=warn".into(),
                ],
                &[],
            )?;
            let http = reqwest::Client::new();
            let health = format!("{endpoint}/_internal/healthcheck");
            wait_until(&proc, Duration::from_secs(60), || async {
                matches!(http.get(&health).send().await, Ok(r) if r.status().is_success())
            })
            .await?;
            Ok((endpoint, proc))
        })
        .await?;
        Ok(GcsEnv { endpoint, proc })
    }

    /// Creates a fresh bucket named after `prefix` (JSON API) and returns its name.
    pub async fn bucket(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(prefix);
        let resp = reqwest::Client::new()
            .post(format!("{}/storage/v1/b?project=kfo-test", self.endpoint))
            .json(&serde_json::json!({"name": name}))
            .send()
            .await
            .with_context(|| format!("creating GCS bucket {name}"))?;
        if !resp.status().is_success() {
            bail!(
                "creating GCS bucket {name}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(name)
    }

    pub fn check_alive(&self) -> Result<()> {
        self.proc.check_alive()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
