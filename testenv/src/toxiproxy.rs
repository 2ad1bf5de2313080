//! Toxiproxy on loopback: real TCP faults between a client under test and a real server
//! (latency, a blackhole, resets, a bandwidth limit, a slow close, a cut connection).
//!
//! One `toxiproxy-server` per test binary; each test makes its own proxies (unique names).
//! Faults are toxics added through Toxiproxy's HTTP API; see
//! <https://github.com/Shopify/toxiproxy#toxics> for what each does.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::process::{Proc, binary, on_free_ports, wait_until};

/// The shared Toxiproxy server of this test binary.
pub struct Toxiproxy {
    /// `http://127.0.0.1:<port>`: its HTTP API.
    pub api: String,
    proc: Proc,
}

/// Starts toxiproxy-server on first use (building it if needed) and returns it.
pub async fn toxiproxy() -> &'static Toxiproxy {
    static ENV: OnceCell<Result<Toxiproxy, String>> = OnceCell::const_new();
    let env = ENV
        .get_or_init(|| async { Toxiproxy::start().await.map_err(|e| format!("{e:#}")) })
        .await;
    match env {
        Ok(env) => env,
        Err(e) => panic!("testenv: cannot start toxiproxy-server: {e}"),
    }
}

/// Which way a toxic acts: on what the client sends (`Upstream`) or what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// A fault, as a Toxiproxy toxic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Toxic {
    /// Every chunk waits this long.
    Latency(Duration),
    /// Data is dropped and the connection stays open (a half-open peer, a blackhole);
    /// closed after the duration if it is not zero.
    Blackhole(Duration),
    /// The connection is reset (RST) after the duration.
    ResetPeer(Duration),
    /// At most this many KiB per second.
    Bandwidth(u64),
    /// The close is delayed by the duration.
    SlowClose(Duration),
    /// The connection is closed after this many bytes.
    LimitData(u64),
}

impl Toxic {
    fn body(self, name: &str, stream: Stream) -> Value {
        let ms = |d: Duration| d.as_millis() as u64;
        let (kind, attributes) = match self {
            Toxic::Latency(d) => ("latency", json!({"latency": ms(d), "jitter": 0})),
            Toxic::Blackhole(d) => ("timeout", json!({"timeout": ms(d)})),
            Toxic::ResetPeer(d) => ("reset_peer", json!({"timeout": ms(d)})),
            Toxic::Bandwidth(kib) => ("bandwidth", json!({"rate": kib})),
            Toxic::SlowClose(d) => ("slow_close", json!({"delay": ms(d)})),
            Toxic::LimitData(b) => ("limit_data", json!({"bytes": b})),
        };
        json!({"name": name, "type": kind, "stream": stream.name(), "toxicity": 1.0,
               "attributes": attributes})
    }
}

/// One proxy: clients connect to [`Proxy::listen`] instead of the upstream.
pub struct Proxy {
    pub name: String,
    /// `127.0.0.1:<port>`.
    pub listen: String,
    api: String,
}

impl Toxiproxy {
    async fn start() -> Result<Toxiproxy> {
        let bin = tokio::task::spawn_blocking(|| binary("toxiproxy-server")).await??;
        on_free_ports(async |[port]| {
            let api = format!("http://127.0.0.1:{port}");
            let args = ["-host", "127.0.0.1", "-port", &port.to_string()].map(String::from);
            let proc = Proc::start("toxiproxy-server", &bin, &args, &[("LOG_LEVEL", "warn")])?;
            let version = format!("{api}/version");
            wait_until(&proc, Duration::from_secs(30), || async {
                matches!(reqwest::get(&version).await, Ok(r) if r.status().is_success())
            })
            .await?;
            Ok(Toxiproxy { api, proc })
        })
        .await
    }

    /// A new proxy to `upstream` (`host:port`) on a port Toxiproxy picks.
    pub async fn proxy(&self, prefix: &str, upstream: &str) -> Result<Proxy> {
        let name = crate::unique_name(prefix);
        let created: Value = call(
            reqwest::Client::new().post(format!("{}/proxies", self.api)).json(
                &json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true}),
            ),
        )
        .await
        .with_context(|| format!("creating proxy {name} to {upstream}"))?;
        let listen = created["listen"]
            .as_str()
            .context("Toxiproxy answered without a listen address")?
            .to_owned();
        Ok(Proxy {
            name,
            listen,
            api: self.api.clone(),
        })
    }

    pub fn check_alive(&self) -> Result<()> {
        self.proc.check_alive()
    }
}

impl Proxy {
    /// `http://<listen>`.
    pub fn http(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Adds `toxic` on `stream`, named `name` (to remove it later).
    pub async fn add(&self, name: &str, stream: Stream, toxic: Toxic) -> Result<()> {
        call(
            reqwest::Client::new()
                .post(format!("{}/proxies/{}/toxics", self.api, self.name))
                .json(&toxic.body(name, stream)),
        )
        .await
        .with_context(|| format!("adding toxic {name} to {}", self.name))?;
        Ok(())
    }

    /// Removes the toxic `name`.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let resp = reqwest::Client::new()
            .delete(format!("{}/proxies/{}/toxics/{name}", self.api, self.name))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("removing toxic {name}: {}", resp.status());
        }
        Ok(())
    }

    /// Cuts every connection and refuses new ones (`false`), or accepts again (`true`).
    pub async fn set_enabled(&self, enabled: bool) -> Result<()> {
        call(
            reqwest::Client::new()
                .post(format!("{}/proxies/{}", self.api, self.name))
                .json(&json!({"enabled": enabled})),
        )
        .await
        .with_context(|| format!("setting {} enabled={enabled}", self.name))?;
        Ok(())
    }
}

async fn call(req: reqwest::RequestBuilder) -> Result<Value> {
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Toxiproxy answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}
