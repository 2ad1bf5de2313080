//! Be a Kong data plane towards the control plane (hybrid mode, sync v1) and yield every
//! configuration it publishes as a validated [`ConfigSnapshot`].
//!
//! One connection per target Kong version, reporting that version, because the control
//! plane tailors the payload to the data plane's version. The protocol, from
//! KONG-PROTOCOL.md: mutual TLS (shared: present and trust exactly the shared cluster
//! certificate; pki: present the DP certificate, trust the CA, check the server name);
//! `wss://<cp>/v1/outlet?node_id=&node_hostname=&node_version=`; a binary `basic_info`
//! first frame listing every plugin the CP may have configured; afterwards only PINGs
//! carrying the current config hash, at connect, after each config and every 30 s; any
//! inbound frame counts as liveness, 45 s of silence reconnects. Bad frames (too large,
//! bad gzip, bad JSON, unusable config) are reported, the last good snapshot stays, and
//! the connection is re-established.

pub mod frame;
pub mod plugins;

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use frame::{
    Arrival, ConfigSnapshot, EnvelopePeek, FrameError, decode, decode_announcing, peek_envelope,
};

/// The smallest inflated frame announced as [`Event::Inflated`]: S3's smallest part. A
/// staged write can start before the checks end once one part fits before the last, which
/// is sent after them (the store's own part size decides: `export::early`).
pub const ANNOUNCE_INFLATED_FROM: usize = 5 << 20;

use crate::api::MtlsMode;
use crate::kong::KongVersion;
use crate::kong::config::EMPTY_CONFIG_HASH;

/// Kong's `CLUSTERING_PING_INTERVAL`.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Kong's `PING_WAIT`: silence after which a side gives up on the other.
pub const LIVENESS: Duration = Duration::from_secs(45);
/// Kong's default `cluster_max_payload` (a compressed frame).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// A control plane pushes its configuration right after `basic_info`; none by then means
/// it is withholding it.
pub const NO_CONFIG_AFTER: Duration = Duration::from_secs(10);

/// How to reach the control plane as one data plane of one version.
#[derive(Clone)]
pub struct ClientSettings {
    /// `host:port` of the cluster listener.
    pub endpoint: String,
    /// TLS server name: `kong_clustering` in shared mode, else the CP's name.
    pub server_name: String,
    pub mtls: MtlsMode,
    /// `tls.crt` (with intermediates in pki mode).
    pub cert_pem: String,
    /// `tls.key`.
    pub key_pem: String,
    /// `ca.crt` (pki mode).
    pub ca_pem: Option<String>,
    pub node_id: String,
    pub hostname: String,
    pub version: KongVersion,
    /// `(name, version)` announced in `basic_info`.
    pub plugins: Vec<(String, String)>,
    /// Wasm filter names announced in `basic_info`.
    pub filters: Vec<String>,
    /// Largest compressed frame accepted (`cluster_max_payload`).
    pub max_frame: usize,
    /// Largest decompressed configuration accepted.
    pub max_config: usize,
    /// When to ping and when to give up on a silent control plane.
    pub keepalive: Keepalive,
}

/// The session's timers: Kong's constants, shorter only in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// A PING at least this often (besides the ones at connect and after each config).
    pub ping_interval: Duration,
    /// Silence from the control plane after which the session ends.
    pub liveness: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            ping_interval: PING_INTERVAL,
            liveness: LIVENESS,
        }
    }
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("endpoint", &self.endpoint)
            .field("server_name", &self.server_name)
            .field("mtls", &self.mtls)
            .field("key_pem", &"** redacted **")
            .field("node_id", &self.node_id)
            .field("version", &self.version.to_string())
            .field("plugins", &self.plugins.len())
            .finish()
    }
}

/// What the client reports to its owner.
#[derive(Debug)]
pub enum Event {
    /// The websocket is up and `basic_info` was sent.
    Connected,
    /// A large frame inflated, before its checks (from [`ANNOUNCE_INFLATED_FROM`] bytes):
    /// the JSON envelope, so the exporter may start writing its configuration while the
    /// checks run. The frame's [`Event::Snapshot`] (a slice of the same buffer) or
    /// [`Event::Rejected`] follows.
    Inflated(bytes::Bytes),
    /// A new configuration.
    Snapshot(ConfigSnapshot),
    /// Connected for [`NO_CONFIG_AFTER`] without receiving a configuration.
    NoConfig,
    /// A frame was refused; the connection is re-established.
    Rejected(FrameError),
    /// The session ended; the client reconnects after `retry_in`.
    Disconnected {
        error: ClientError,
        retry_in: Duration,
    },
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid client settings: {0}")]
    Settings(String),
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("TLS with {endpoint} failed: {detail} (check the cluster certificate and mtls mode)")]
    Tls { endpoint: String, detail: String },
    #[error("the control plane refused the websocket upgrade: {0}")]
    Handshake(String),
    #[error("the control plane closed the connection{0}")]
    Closed(String),
    #[error("no frame from the control plane for {0:?}")]
    Silent(Duration),
    #[error("a frame was refused: {0}")]
    BadFrame(FrameError),
    #[error("websocket error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A stable label for conditions and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::Settings(_) => "InvalidSettings",
            ClientError::Connect { .. } => "Unreachable",
            ClientError::Tls { .. } => "TlsFailed",
            ClientError::Handshake(_) => "HandshakeRefused",
            ClientError::Closed(_) => "Closed",
            ClientError::Silent(_) => "Silent",
            ClientError::BadFrame(_) => "BadFrame",
            ClientError::Protocol(_) => "Protocol",
        }
    }
}

/// The `basic_info` frame (KONG-PROTOCOL.md §2): Wasm filters as a map of name to
/// `{name}`, as Kong's `data_plane.lua` sends them.
pub fn basic_info(plugins: &[(String, String)], filters: &[String]) -> String {
    let plugins: Vec<serde_json::Value> = plugins
        .iter()
        .map(|(name, version)| serde_json::json!({"name": name, "version": version}))
        .collect();
    let filters: serde_json::Map<String, serde_json::Value> = filters
        .iter()
        .map(|f| (f.clone(), serde_json::json!({"name": f})))
        .collect();
    serde_json::json!({"type": "basic_info", "plugins": plugins, "labels": {}, "process_conf": {}, "filters": filters})
        .to_string()
}

/// The upgrade URL. Kong reads the query raw, so only URL-safe values are sent.
pub fn outlet_url(s: &ClientSettings) -> String {
    let safe = |v: &str| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    let hostname = if safe(&s.hostname) {
        s.hostname.as_str()
    } else {
        "kong-fallback-operator"
    };
    format!(
        "wss://{}/v1/outlet?node_id={}&node_hostname={}&node_version={}",
        s.endpoint, s.node_id, hostname, s.version
    )
}

/// The TLS client configuration for `s`.
pub fn tls_config(s: &ClientSettings) -> Result<rustls::ClientConfig, ClientError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ClientError::Settings(format!("{what}: {e}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(s.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("tls.crt is not PEM", &e))?;
    let leaf = chain
        .first()
        .cloned()
        .ok_or_else(|| ClientError::Settings("tls.crt holds no certificate".into()))?;
    let key = PrivateKeyDer::from_pem_slice(s.key_pem.as_bytes())
        .map_err(|e| bad("tls.key is not a PEM private key", &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?;
    let builder = match s.mtls {
        // Shared mode: the CP serves the same certificate; trust exactly that one.
        MtlsMode::Shared => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                cert: leaf,
                provider,
            })),
        MtlsMode::Pki => {
            let ca = s.ca_pem.as_deref().ok_or_else(|| {
                ClientError::Settings(
                    "mtls pki needs ca.crt in the cluster certificate Secret".into(),
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots
                    .add(cert.map_err(|e| bad("ca.crt is not PEM", &e))?)
                    .map_err(|e| bad("ca.crt", &e))?;
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PkiVerifier {
                    roots: Arc::new(roots),
                    provider,
                }))
        }
    };
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("tls.crt/tls.key", &e))
}

/// pki mode as a Kong data plane checks the control plane: the chain must lead to `ca.crt`
/// (webpki, as rustls does it), and the name must be the server name, taken from the DNS
/// names of the certificate or, when it has none, from its subject CN. The CN fallback is
/// what Kong's own check does: lua-nginx-module's `sslhandshake` calls nginx's
/// `ngx_ssl_check_host`, i.e. OpenSSL's `X509_check_host` with flags 0, which reads the CN
/// when there is no DNS subjectAltName (`kong/clustering/utils.lua` `connect_cp` passes
/// `ssl_verify = true` and `cluster_server_name`). rustls/webpki alone never reads the CN.
#[derive(Debug)]
struct PkiVerifier {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PkiVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match rustls::client::verify_server_name(&cert, server_name) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => match server_name {
                ServerName::DnsName(name) if cn_names_host(end_entity, name.as_ref()) => {
                    Ok(ServerCertVerified::assertion())
                }
                _ => Err(e),
            },
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(&self.provider, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(&self.provider, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.provider)
    }
}

/// Whether a certificate without DNS subjectAltNames names `host` in a subject CN, as
/// OpenSSL's `X509_check_host` (flags 0) matches it: case-insensitive, with a wildcard only
/// as the whole leftmost label.
fn cn_names_host(cert: &CertificateDer<'_>, host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let has_dns = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(_)))
        });
    if has_dns {
        return false;
    }
    parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| host_matches(cn, host))
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest && rest.contains('.')),
        None => pattern == host,
    }
}

/// The handshake signature checks both verifiers share: the provider's own algorithms.
mod signatures {
    use super::{CertificateDer, DigitallySignedStruct, HandshakeSignatureValid, SignatureScheme};
    use rustls::crypto::CryptoProvider;

    pub(super) fn tls12(
        p: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }

    pub(super) fn tls13(
        p: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }

    pub(super) fn schemes(p: &CryptoProvider) -> Vec<SignatureScheme> {
        p.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts exactly one server certificate, as Kong's DP does in shared mode.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the control plane's certificate is not the shared cluster certificate".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(&self.provider, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(&self.provider, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.provider)
    }
}

/// One session: connect, announce, receive until it ends. `hash` is the current config
/// hash (pinged to the CP) and is updated with every snapshot.
pub async fn session(
    s: &ClientSettings,
    events: &mpsc::Sender<Event>,
    hash: &mut String,
    shutdown: &mut watch::Receiver<bool>,
) -> ClientError {
    let tls = match tls_config(s) {
        Ok(c) => Arc::new(c),
        Err(e) => return e,
    };
    let server_name = match ServerName::try_from(s.server_name.clone()) {
        Ok(n) => n,
        Err(e) => return ClientError::Settings(format!("server name {:?}: {e}", s.server_name)),
    };
    let tcp = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&s.endpoint),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return ClientError::Connect {
                endpoint: s.endpoint.clone(),
                detail: e.to_string(),
            };
        }
        Err(_) => {
            return ClientError::Connect {
                endpoint: s.endpoint.clone(),
                detail: "timed out".into(),
            };
        }
    };
    let _ = tcp.set_nodelay(true);
    let tls_stream = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return ClientError::Tls {
                endpoint: s.endpoint.clone(),
                detail: e.to_string(),
            };
        }
        Err(_) => {
            return ClientError::Tls {
                endpoint: s.endpoint.clone(),
                detail: "timed out".into(),
            };
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(s.max_frame))
        .max_frame_size(Some(s.max_frame));
    let ws = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(outlet_url(s), tls_stream, Some(config)),
    )
    .await;
    let mut ws = match ws {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return handshake_error(e),
        Err(_) => return ClientError::Handshake("timed out".into()),
    };
    if let Err(e) = ws
        .send(Message::Binary(
            basic_info(&s.plugins, &s.filters).into_bytes().into(),
        ))
        .await
    {
        return ClientError::Protocol(e.to_string());
    }
    if let Err(e) = ws
        .send(Message::Ping(hash.clone().into_bytes().into()))
        .await
    {
        return ClientError::Protocol(e.to_string());
    }
    let _ = events.send(Event::Connected).await;

    let Keepalive {
        ping_interval,
        liveness,
    } = s.keepalive;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut last_seen = tokio::time::Instant::now();
    let no_config = tokio::time::sleep(NO_CONFIG_AFTER);
    tokio::pin!(no_config);
    let mut got_config = false;
    loop {
        tokio::select! {
            msg = ws.next() => {
                last_seen = tokio::time::Instant::now();
                match msg {
                    Some(Ok(Message::Binary(data))) => {
                        let max = s.max_config;
                        let read = std::time::Instant::now();
                        // NB: a hint: dropped when the exporter is behind (the channel full).
                        let early = events.clone();
                        let decoded = tokio::task::spawn_blocking(move || {
                            let mut inflated = read;
                            let decoded = decode_announcing(&data, max, |json| {
                                inflated = std::time::Instant::now();
                                if json.len() >= ANNOUNCE_INFLATED_FROM {
                                    let _ = early.try_send(Event::Inflated(json.clone()));
                                }
                            });
                            (decoded, inflated, std::time::Instant::now())
                        })
                        .await;
                        match decoded {
                            Ok((Ok(Some(mut snapshot)), inflated, checked)) => {
                                snapshot.arrival = Some(Arrival { read, inflated, checked, decoded: std::time::Instant::now() });
                                got_config = true;
                                hash.clone_from(&snapshot.hash);
                                if let Err(e) = ws.send(Message::Ping(hash.clone().into_bytes().into())).await {
                                    return ClientError::Protocol(e.to_string());
                                }
                                let _ = events.send(Event::Snapshot(snapshot)).await;
                            }
                            Ok((Ok(None), ..)) => {}
                            Ok((Err(e), ..)) => {
                                let _ = events.send(Event::Rejected(e.clone())).await;
                                let _ = ws.close(None).await;
                                return ClientError::BadFrame(e);
                            }
                            Err(e) => return ClientError::Protocol(format!("decoder task failed: {e}")),
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return ClientError::Closed(frame.map(|f| format!(": {} {}", f.code, f.reason)).unwrap_or_default());
                    }
                    Some(Ok(_)) => {} // PONG and anything else: liveness only.
                    Some(Err(e)) => return protocol_error(e, s.max_frame),
                    None => return ClientError::Closed(String::new()),
                }
            }
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(hash.clone().into_bytes().into())).await {
                    return ClientError::Protocol(e.to_string());
                }
            }
            _ = tokio::time::sleep_until(last_seen + liveness) => {
                return ClientError::Silent(liveness);
            }
            _ = &mut no_config, if !got_config => {
                got_config = true; // report once per session
                let _ = events.send(Event::NoConfig).await;
            }
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return ClientError::Closed(" (shutting down)".into());
            }
        }
    }
}

fn handshake_error(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            ClientError::Handshake(format!("HTTP {} {body}", resp.status()))
        }
        other => ClientError::Handshake(other.to_string()),
    }
}

fn protocol_error(e: tokio_tungstenite::tungstenite::Error, max_frame: usize) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Capacity(_) => ClientError::BadFrame(FrameError::TooLarge { max: max_frame }),
        other => ClientError::Protocol(other.to_string()),
    }
}

/// Reconnect delay after `failures` consecutive sessions without a configuration:
/// 1 s doubling to 6 s, with ±25 % jitter so many clients do not reconnect in step.
///
/// NB: about Kong's own data plane, which retries after a random 5 to 10 s
/// (`reconnection_delay = math.random(5, 10)` in `kong/clustering/data_plane.lua`): the
/// operator must be back as soon as a data plane would (fault R3 measured 33 s after a
/// 60 s outage with a 30 s cap).
pub fn reconnect_delay(failures: u32, jitter: f64) -> Duration {
    let base = (1u64 << failures.min(3)).min(6) as f64;
    Duration::from_secs_f64(base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// A session that lasted this long was healthy, whatever it brought: the backoff starts over.
pub const STABLE_SESSION: Duration = Duration::from_secs(60);

/// Consecutive failures after a session that lasted `lasted` and did (or did not) bring a
/// new configuration. A session ends for good reasons too (a control plane restart, a
/// rollout of its pods): only short sessions without news count as failures.
pub fn failures_after(failures: u32, lasted: Duration, new_config: bool) -> u32 {
    if new_config || lasted >= STABLE_SESSION {
        0
    } else {
        failures.saturating_add(1)
    }
}

fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::Instant::now()) % 10_000) as f64 / 10_000.0
}

/// Runs sessions until `shutdown`, reconnecting with jittered backoff.
pub async fn run(
    s: ClientSettings,
    events: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hash = EMPTY_CONFIG_HASH.to_owned();
    let mut failures = 0u32;
    loop {
        let before = hash.clone();
        let started = tokio::time::Instant::now();
        let error = session(&s, &events, &mut hash, &mut shutdown).await;
        if *shutdown.borrow() {
            return;
        }
        failures = failures_after(failures, started.elapsed(), hash != before);
        let retry_in = reconnect_delay(failures, jitter());
        tracing::warn!(endpoint = %s.endpoint, version = %s.version, error = %error, ?retry_in, "control plane session ended");
        if events
            .send(Event::Disconnected { error, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClientSettings {
        ClientSettings {
            endpoint: "kong-cp.kong.svc:8005".into(),
            server_name: "kong_clustering".into(),
            mtls: MtlsMode::Shared,
            cert_pem: String::new(),
            key_pem: "-----BEGIN PRIVATE KEY-----secret".into(),
            ca_pem: None,
            node_id: "5f3c1d6e-2b8a-4f0e-9c1d-7a6b5e4d3c2b".into(),
            hostname: "kfo-0".into(),
            version: "3.6.1.4".parse().unwrap(),
            plugins: vec![("key-auth".into(), "3.6.1".into())],
            filters: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            max_config: 64 << 20,
            keepalive: Keepalive::default(),
        }
    }

    #[test]
    fn the_outlet_url_carries_node_id_hostname_and_full_version() {
        assert_eq!(
            outlet_url(&settings()),
            "wss://kong-cp.kong.svc:8005/v1/outlet?node_id=5f3c1d6e-2b8a-4f0e-9c1d-7a6b5e4d3c2b&node_hostname=kfo-0&node_version=3.6.1.4"
        );
        let mut s = settings();
        s.hostname = "a b&c".into();
        assert!(outlet_url(&s).contains("node_hostname=kong-fallback-operator&"));
    }

    #[test]
    fn basic_info_lists_plugins_with_versions() {
        let v: serde_json::Value =
            serde_json::from_str(&basic_info(&settings().plugins, &["rl".to_owned()])).unwrap();
        assert_eq!(v["type"], "basic_info");
        assert_eq!(
            v["plugins"][0],
            serde_json::json!({"name": "key-auth", "version": "3.6.1"})
        );
        assert_eq!(v["filters"], serde_json::json!({"rl": {"name": "rl"}}));
    }

    #[test]
    fn bad_certificates_are_settings_errors_not_panics() {
        let e = tls_config(&settings()).unwrap_err();
        assert!(matches!(e, ClientError::Settings(_)), "{e}");
        assert!(!format!("{:?}", settings()).contains("secret"));
    }

    #[test]
    fn cn_host_matching_follows_openssl() {
        assert!(host_matches("kong-cp.example.com", "KONG-CP.example.com"));
        assert!(host_matches("*.example.com", "cp.example.com"));
        assert!(!host_matches("*.example.com", "a.cp.example.com"));
        assert!(!host_matches("*.com", "example.com"));
        assert!(!host_matches("kong-cp", "kong-cp.example.com"));
    }

    #[test]
    fn a_stable_session_resets_the_backoff_even_without_a_new_config() {
        // Ten quick failures: the delay is at its cap.
        let mut f = 0;
        for _ in 0..10 {
            f = failures_after(f, Duration::from_secs(1), false);
        }
        assert_eq!(reconnect_delay(f, 0.5), Duration::from_secs(6));
        // Then an hour-long session that ends with the config unchanged (a CP restart).
        f = failures_after(f, Duration::from_secs(3600), false);
        assert_eq!(f, 0);
        assert_eq!(reconnect_delay(f, 0.5), Duration::from_secs(1));
        assert_eq!(failures_after(4, Duration::from_secs(2), true), 0);
        assert_eq!(failures_after(4, Duration::from_secs(2), false), 5);
    }

    #[test]
    fn reconnect_delays_grow_to_six_seconds_with_jitter_within_kongs_own() {
        assert_eq!(reconnect_delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(reconnect_delay(2, 0.5), Duration::from_secs(4));
        assert_eq!(reconnect_delay(3, 0.5), Duration::from_secs(6));
        assert_eq!(reconnect_delay(10, 0.5), Duration::from_secs(6));
        assert_eq!(reconnect_delay(10, 0.0), Duration::from_secs_f64(4.5));
        assert_eq!(reconnect_delay(10, 1.0), Duration::from_secs_f64(7.5));
    }
}
