//! The `kong-fallback-operator` command line: a thin shell over the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kong_fallback_operator::kong::{KongVersion, StorageUrl};
use kong_fallback_operator::{api, controller, doctor, http, storage, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes operator for Kong Gateway data plane resilience"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "KFO_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: telemetry::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster).
    Run {
        /// This replica's identity, for Events and (later) the election; the pod name.
        #[arg(long, env = "POD_NAME", default_value = "kong-fallback-operator")]
        identity: String,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "KFO_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Where to serve /metrics, /healthz and /readyz (plain HTTP).
        #[arg(long, env = "KFO_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: SocketAddr,
    },
    /// Print the FallbackConfigPolicy CRD as YAML.
    Crd,
    /// Show what a new Kong data plane would load from storage now, reading the same
    /// environment a data plane reads. Exits 1 if it would come up empty.
    Doctor {
        /// The data plane's full Kong version, e.g. 3.6.1.4.
        #[arg(long = "kong-version", env = "KFO_KONG_VERSION")]
        version: String,
        /// The storage URL (default: what the data plane is given).
        #[arg(long, env = "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE")]
        storage: String,
        /// An S3-compatible endpoint (default: AWS_CONFIG_STORAGE_ENDPOINT), or a GCS emulator.
        #[arg(long)]
        endpoint: Option<String>,
        /// Use no GCS credentials (emulators only).
        #[arg(long)]
        gcs_anonymous: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // NB: kube (ring or aws-lc-rs) and the storage SDKs (aws-lc-rs) both bring rustls;
    // installing one process-wide provider avoids an ambiguous default at the first handshake.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    match cli.command {
        Command::Crd => {
            print!("{}", api::crd_yaml().context("failed to render the CRD")?);
        }
        Command::Run {
            identity,
            namespace,
            http_addr,
        } => {
            let client = kube::Client::try_default().await.context(
                "failed to build a Kubernetes client (no kubeconfig and not in a cluster?)",
            )?;
            let settings = controller::Settings {
                namespace,
                ..controller::Settings::new(identity)
            };
            let listener = tokio::net::TcpListener::bind(http_addr)
                .await
                .with_context(|| format!("cannot serve metrics and probes on {http_addr}"))?;
            tracing::info!(addr = %http_addr, "serving /metrics, /healthz and /readyz");
            let server = tokio::spawn(http::serve(
                listener,
                settings.metrics.clone(),
                Arc::clone(&settings.health),
            ));
            controller::run(client, settings).await?;
            server.abort();
        }
        Command::Doctor {
            version,
            storage: url,
            endpoint,
            gcs_anonymous,
        } => {
            let version: KongVersion = version.parse()?;
            let url = StorageUrl::parse(&url)?;
            let access =
                doctor::access_from_env(&url, |k| std::env::var(k).ok(), endpoint, gcs_anonymous)
                    .map_err(anyhow::Error::msg)?;
            let store = storage::open(&url, access)
                .await
                .map_err(anyhow::Error::msg)?;
            let key = url.config_key(&version.to_string());
            let object = store.get(&key).await?;
            let report = doctor::diagnose(
                &key,
                &version.to_string(),
                object.as_ref(),
                std::time::SystemTime::now(),
            );
            print!("{report}");
            if !report.would_load {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
