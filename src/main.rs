//! The `kong-fallback-operator` command line: a thin shell over the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kong_fallback_operator::kong::{KongVersion, StorageUrl};
use kong_fallback_operator::{api, cleanup, controller, doctor, http, storage, telemetry, webhook};

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

/// A size as a Kubernetes quantity (`64Mi`, `100M`, `1048576`).
fn parse_size(s: &str) -> Result<usize, String> {
    kong_fallback_operator::api::parse_quantity(s)
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| format!("{s:?} is not a positive size such as 64Mi"))
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster).
    Run {
        /// This replica's identity, for Events and the election (the Lease holder); the
        /// pod name.
        #[arg(long, env = "POD_NAME", default_value = "kong-fallback-operator")]
        identity: String,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "KFO_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Where to serve /metrics, /healthz and /readyz (plain HTTP).
        #[arg(long, env = "KFO_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: SocketAddr,
        /// The largest configuration (decompressed) any policy may make the operator hold,
        /// whatever its `exporter.maxConfigSize` says (a quantity, e.g. 64Mi). Size the
        /// memory limit at about three times this per exported version.
        #[arg(long, env = "KFO_MAX_CONFIG_SIZE", default_value = "64Mi", value_parser = parse_size)]
        max_config_size: usize,
        /// Namespaces whose policies may write with the operator's own cloud identity
        /// (`writeCredentials.ambient: true`), comma-separated; `*` for all. Default: none.
        #[arg(long, env = "KFO_AMBIENT_WRITE_NAMESPACES", value_delimiter = ',')]
        ambient_write_namespaces: Vec<String>,
        #[command(flatten)]
        webhook: WebhookArgs,
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
        /// An S3-compatible endpoint (default: AWS_CONFIG_STORAGE_ENDPOINT), or a GCS emulator
        /// (default: STORAGE_EMULATOR_HOST).
        #[arg(long)]
        endpoint: Option<String>,
        /// Use no GCS credentials (emulators only).
        #[arg(long)]
        gcs_anonymous: bool,
        /// The largest object to read (a quantity, e.g. 64Mi): a larger one is reported
        /// and not read, whatever size the store says it has.
        #[arg(long, default_value = "1Gi", value_parser = parse_size)]
        max_size: usize,
    },
    /// Ask an HTTP endpoint (the operator's /readyz) until it answers 2xx, for up to
    /// `--timeout` seconds; exit 1 if it never does. The chart's `helm test` pod runs it
    /// (the image has no shell or HTTP client of its own).
    Probe {
        /// e.g. http://kong-fallback-operator-metrics.kong-fallback-operator.svc:8080/readyz
        #[arg(long)]
        url: String,
        /// Seconds to keep asking.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Before uninstalling: for every policy, remove the operator's registrations from the
    /// store, delete its Lease and remove its finalizer, so that policies and their
    /// namespaces can be deleted without the operator. Exits non-zero only if an apiserver
    /// call fails; an unreachable store only warns.
    Cleanup {
        /// Only the policies of this namespace (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
        /// Scale this Deployment (in `--operator-namespace`) to zero and wait for its pods
        /// first: a running operator adds its finalizer back at once.
        #[arg(long)]
        stop_deployment: Option<String>,
        /// How long to wait for that Deployment's pods to go, in seconds.
        #[arg(long, default_value_t = 60)]
        stop_timeout: u64,
        /// The operator's namespace (the downward API's metadata.namespace).
        #[arg(
            long = "operator-namespace",
            env = "POD_NAMESPACE",
            default_value = "kong-fallback-operator"
        )]
        operator_namespace: String,
        /// Also delete the MutatingWebhookConfiguration `--webhook-configuration`.
        #[arg(long)]
        delete_webhook_configuration: bool,
        /// The MutatingWebhookConfiguration's name.
        #[arg(
            long = "webhook-configuration",
            default_value = "kong-fallback-operator"
        )]
        webhook_configuration: String,
        /// The bound of one policy's store work, in seconds.
        #[arg(long, default_value_t = 15)]
        store_timeout: u64,
    },
}

/// The injection webhook.
#[derive(clap::Args)]
struct WebhookArgs {
    /// Serve the pod injection webhook and keep its MutatingWebhookConfiguration current.
    #[arg(long = "webhook", env = "KFO_WEBHOOK")]
    enabled: bool,
    /// Where to serve the webhook (HTTPS).
    #[arg(
        long = "webhook-addr",
        env = "KFO_WEBHOOK_ADDR",
        default_value = "0.0.0.0:9443"
    )]
    addr: SocketAddr,
    /// The URL the apiserver calls, for an operator outside the cluster. Default: the
    /// Service `--webhook-service` in the operator's namespace, port 443.
    #[arg(long = "webhook-url", env = "KFO_WEBHOOK_URL")]
    url: Option<String>,
    /// The webhook's Service, in the operator's namespace.
    #[arg(
        long = "webhook-service",
        env = "KFO_WEBHOOK_SERVICE",
        default_value = "kong-fallback-operator-webhook"
    )]
    service: String,
    /// The operator's namespace (the downward API's metadata.namespace).
    #[arg(
        long = "operator-namespace",
        env = "POD_NAMESPACE",
        default_value = "kong-fallback-operator"
    )]
    operator_namespace: String,
    /// Read tls.crt, tls.key and ca.crt from this directory (cert-manager) instead of
    /// managing a CA and certificate in a Secret.
    #[arg(long = "webhook-cert-dir", env = "KFO_WEBHOOK_CERT_DIR")]
    cert_dir: Option<std::path::PathBuf>,
    /// The Secret of the self-managed CA and certificate, in the operator's namespace.
    #[arg(
        long = "webhook-secret",
        default_value = "kong-fallback-operator-webhook-tls"
    )]
    secret: String,
    /// What the apiserver does when the webhook cannot answer: ignore (the pod starts
    /// without the injection and the status reports it) or fail (the pod is refused).
    #[arg(long = "webhook-failure-policy", value_enum, default_value = "ignore")]
    failure_policy: webhook::registration::FailurePolicy,
    /// The MutatingWebhookConfiguration's name.
    #[arg(
        long = "webhook-configuration",
        default_value = "kong-fallback-operator"
    )]
    configuration: String,
}

impl WebhookArgs {
    fn settings(self) -> Option<webhook::Settings> {
        if !self.enabled {
            return None;
        }
        let svc = &self.service;
        let ns = &self.operator_namespace;
        let mut hosts = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
        ];
        let target = match &self.url {
            Some(url) => {
                if let Some(host) = url
                    .strip_prefix("https://")
                    .and_then(|r| r.split(['/', ':']).next())
                {
                    hosts.push(host.to_owned());
                }
                webhook::registration::Target::Url(url.clone())
            }
            None => webhook::registration::Target::Service {
                namespace: ns.clone(),
                name: svc.clone(),
                port: 443,
            },
        };
        let source = match self.cert_dir {
            Some(dir) => webhook::certs::Source::Files { dir },
            None => webhook::certs::Source::Managed {
                namespace: ns.clone(),
                name: self.secret,
                hosts,
                validity: std::time::Duration::from_secs(90 * 86_400),
            },
        };
        Some(webhook::Settings {
            addr: self.addr,
            listener: None,
            source,
            configuration: self.configuration,
            target,
            failure_policy: self.failure_policy,
            timeout_seconds: 5,
            cert_check: std::time::Duration::from_secs(60),
        })
    }
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
            max_config_size,
            ambient_write_namespaces,
            webhook,
        } => {
            let client = kube::Client::try_default().await.context(
                "failed to build a Kubernetes client (no kubeconfig and not in a cluster?)",
            )?;
            let settings = controller::Settings {
                namespace,
                webhook: webhook.settings(),
                max_config_bytes: max_config_size,
                ambient_write_namespaces,
                ..controller::Settings::new(identity)
            };
            let listener = tokio::net::TcpListener::bind(http_addr)
                .await
                .with_context(|| format!("cannot serve metrics and probes on {http_addr}"))?;
            tracing::info!(addr = %http_addr, "serving /metrics, /healthz and /readyz");
            if let Some(emulator) = storage::gcs::emulator_from_env() {
                tracing::warn!(%emulator, "STORAGE_EMULATOR_HOST is set: every GCS call goes to this emulator, not to Google");
            }
            let server = tokio::spawn(http::serve(
                listener,
                settings.metrics.clone(),
                Arc::clone(&settings.health),
            ));
            controller::run(client, settings).await?;
            server.abort();
        }
        Command::Cleanup {
            namespace,
            stop_deployment,
            stop_timeout,
            operator_namespace,
            delete_webhook_configuration,
            webhook_configuration,
            store_timeout,
        } => {
            let client = kube::Client::try_default().await.context(
                "failed to build a Kubernetes client (no kubeconfig and not in a cluster?)",
            )?;
            let options = cleanup::Options {
                namespace,
                stop_deployment: stop_deployment.map(|d| (operator_namespace, d)),
                stop_timeout: std::time::Duration::from_secs(stop_timeout),
                delete_webhook_configuration: delete_webhook_configuration
                    .then_some(webhook_configuration),
                store_timeout: std::time::Duration::from_secs(store_timeout),
            };
            cleanup::run(&client, &options, |line| println!("{line}")).await?;
        }
        Command::Probe { url, timeout } => {
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let answer = match http.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        (status.is_success(), format!("{status} {}", body.trim()))
                    }
                    Err(e) => (false, format!("no answer: {e}")),
                };
                if answer.0 {
                    println!("{url}: {}", answer.1);
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    eprintln!("{url}: {} (after {timeout} s)", answer.1);
                    std::process::exit(1);
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
        Command::Doctor {
            version,
            storage: url,
            endpoint,
            gcs_anonymous,
            max_size,
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
            let object = store.get_at_most(&key, max_size as u64).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_webhook_is_off_by_default_and_targets_its_service() {
        let cli = Cli::try_parse_from(["kfo", "run"]).unwrap();
        let Command::Run { webhook, .. } = cli.command else {
            panic!("run");
        };
        assert!(webhook.settings().is_none());
        let cli = Cli::try_parse_from(["kfo", "run", "--webhook", "--operator-namespace", "kfo"])
            .unwrap();
        let Command::Run { webhook, .. } = cli.command else {
            panic!("run");
        };
        let s = webhook.settings().unwrap();
        assert_eq!(
            s.target,
            webhook::registration::Target::Service {
                namespace: "kfo".into(),
                name: "kong-fallback-operator-webhook".into(),
                port: 443
            }
        );
        assert_eq!(
            s.failure_policy,
            webhook::registration::FailurePolicy::Ignore
        );
    }
}
