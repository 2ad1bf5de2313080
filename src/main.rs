//! The `kong-fallback-operator` command line: a thin shell over the library.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use kong_fallback_operator::{api, controller, telemetry};

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
    },
    /// Print the FallbackConfigPolicy CRD as YAML.
    Crd,
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
        Command::Run { identity } => {
            let client = kube::Client::try_default().await.context(
                "failed to build a Kubernetes client (no kubeconfig and not in a cluster?)",
            )?;
            controller::run(client, identity).await?;
        }
    }
    Ok(())
}
