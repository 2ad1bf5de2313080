//! A protocol-faithful Kong control plane test double (hybrid mode, sync v1), written from
//! DOMAIN.md and KONG-PROTOCOL.md. The real Kong CP cannot run here; this one behaves
//! like it where a data plane can tell:
//!
//! - TLS with client certificates: `shared` mode compares the SHA-256 digest of the
//!   client's certificate with the CP's own and closes without a response (Kong's 444) on
//!   a mismatch; `pki` mode verifies the chain against the CA.
//! - `GET /v1/outlet?node_id=&node_hostname=&node_version=` upgrade; HTTP 400 without
//!   `node_id` or `node_version`.
//! - The first frame must be a binary `basic_info` with a `plugins` list, else close.
//! - Version rule: same major and DP minor <= CP minor, else `kong_version_incompatible`
//!   and close.
//! - Config pushes: one unfragmented binary frame, gzip of the `reconfigure` JSON, on
//!   connect and on every push; withheld (socket kept open) when a configured plugin is
//!   missing from the DP's list or has an incompatible version (`plugin_set_incompatible`,
//!   `plugin_version_incompatible`).
//! - After `basic_info` only PINGs with a 32-byte payload are allowed; anything else ends
//!   the session; 45 s without a ping ends it too. The CP never pings.
//! - A DP is recorded (its `clustering_data_planes` row) at its first PING, on a refused
//!   version, and when its sync status changes; only with a UUID `node_id` and a hostname
//!   (Kong's upsert fails otherwise, and the session goes on unrecorded).
//! - A frame larger than `cluster_max_payload` (16 MiB) is not sent: the session drops.
//! - Payloads are rewritten for older DPs as Kong's compat layer does (a subset of
//!   `removed_fields.lua`), keeping the CP's `config_hash`.
//! - Pushes to connected DPs are debounced like `db_update_frequency` (5 s): the first
//!   goes at once, later ones at most once per period, the newest winning.
//!
//! The control-plane side follows Kong's `kong/clustering/control_plane.lua`
//! (`handle_cp_websocket`, `push_config_loop`) and `kong/clustering/compat/init.lua`.
//!
//! Deviations: the websocket library answers a PING with a PONG echoing its payload, where
//! Kong sends an empty PONG (data planes ignore PONG payloads). A DP that connects while a
//! debounced push is pending gets the newest configuration at once (Kong sends its cached
//! payload when other DPs are connected).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::{SinkExt, StreamExt};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Kong's `cluster_mtls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtls {
    Shared,
    Pki,
    /// pki, with a CP certificate that names the CP only in its subject CN (no
    /// subjectAltName), as many internal CAs still issue them; Kong's data planes accept it.
    PkiCnOnly,
}

/// What a data plane (or the operator) is given to reach this CP: the contents of the
/// cluster certificate Secret and the TLS server name.
#[derive(Clone, Debug)]
pub struct ClusterCerts {
    pub mode: Mtls,
    /// `tls.crt`
    pub cert_pem: String,
    /// `tls.key`
    pub key_pem: String,
    /// `ca.crt` (pki mode).
    pub ca_pem: Option<String>,
    /// The name the CP's certificate is valid for.
    pub server_name: String,
}

/// What the CP knows about a connected data plane (its `clustering_data_planes` row).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataPlane {
    pub node_id: String,
    pub hostname: String,
    pub version: String,
    pub plugins: Vec<(String, String)>,
    /// The hash of the last PING.
    pub config_hash: Option<String>,
    pub sync_status: String,
    pub connected: bool,
    /// How many reconfigure frames were sent to it.
    pub configs_sent: u32,
    /// How many PINGs it sent.
    pub pings: u32,
}

/// Kong's `PING_WAIT`.
const LIVENESS: Duration = Duration::from_secs(45);
/// Kong's default `cluster_max_payload`.
const MAX_PAYLOAD: usize = 16 << 20;
/// Kong's default `db_update_frequency`.
const PUSH_DEBOUNCE: Duration = Duration::from_secs(5);

/// Fields Kong's compat layer deletes from a plugin's `config` for a DP older than the
/// version (`kong/clustering/compat/removed_fields.lua`, keys as `string_to_number` gives
/// them). A subset: enough for a payload that differs between two DP versions.
const REMOVED_FIELDS: &[(u64, &str, &str)] = &[
    (3_006_000_000, "basic-auth", "realm"),
    (3_007_000_000, "key-auth", "realm"),
];

struct Shared {
    /// The gzip'd reconfigure frame and the plugins (name, CP version) it configures: the
    /// newest pushed (the debounced push sends it to connected DPs).
    current: Option<(Arc<Vec<u8>>, Vec<String>)>,
    /// The raw table, hash and timestamp of `current`, for per-DP rewrites.
    current_raw: Option<(String, String, f64)>,
    /// Kong's `PING_WAIT`.
    liveness: Duration,
    /// Kong's `cluster_max_payload`, the largest frame sent or received.
    max_payload: usize,
    /// Kong's `db_update_frequency`.
    debounce: Duration,
    /// Why sessions ended, in order (Kong's error log lines, in short).
    ended: Vec<String>,
    /// Kong Enterprise's `allow_inconsistent_data_plane_plugins = on`: instead of
    /// withholding, strip the plugins a DP lacks from what it is sent (the hash stays).
    strip_missing_plugins: bool,
    /// `wasm = on` with these filters installed: a DP must announce every one of them.
    wasm_filters: Vec<String>,
    dps: BTreeMap<u64, DataPlane>,
    /// The CP's own version of custom plugins; bundled ones have the CP's core version.
    plugin_versions: BTreeMap<String, String>,
    next_id: u64,
    rejected_handshakes: u32,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            current: None,
            current_raw: None,
            liveness: LIVENESS,
            max_payload: MAX_PAYLOAD,
            debounce: PUSH_DEBOUNCE,
            ended: Vec::new(),
            strip_missing_plugins: false,
            wasm_filters: Vec::new(),
            dps: BTreeMap::new(),
            plugin_versions: BTreeMap::new(),
            next_id: 0,
            rejected_handshakes: 0,
        }
    }
}

/// A running CP double. Dropping it stops the listener and closes every session.
pub struct KongCp {
    /// `127.0.0.1:<port>`: the `cluster_control_plane` value.
    pub endpoint: String,
    /// Certificates for a data plane that this CP accepts.
    pub certs: ClusterCerts,
    /// The CP's Kong version.
    pub version: String,
    shared: Arc<Mutex<Shared>>,
    /// Wakes the debounced push loop.
    pushed: Arc<tokio::sync::Notify>,
    frozen: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Drop for KongCp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl KongCp {
    /// Starts a CP of `version` (e.g. `3.10.0.0`) on a free loopback port.
    pub async fn start(mode: Mtls, version: &str) -> Result<KongCp> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let pki = ClusterPki::generate(mode)?;
        let tls = Arc::new(pki.server_config()?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (push, push_rx) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let (frozen, frozen_rx) = watch::channel(false);
        let pushed = Arc::new(tokio::sync::Notify::new());
        // Kong's push_config_loop: wait for a change, push, then sleep db_update_frequency
        // (changes meanwhile coalesce into one push of the newest).
        {
            let (shared, pushed, mut stop_rx) = (shared.clone(), pushed.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = pushed.notified() => {}
                        _ = stop_rx.changed() => return,
                    }
                    push.send_modify(|n| *n += 1);
                    let debounce = shared.lock().unwrap().debounce;
                    tokio::select! {
                        _ = tokio::time::sleep(debounce) => {}
                        _ = stop_rx.changed() => return,
                    }
                }
            });
        }
        let cp_version = version.to_owned();
        let shared_cert_digest = Sha256::digest(&pki.cp_cert_der).to_vec();
        {
            let shared = shared.clone();
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    let conn = tokio::select! {
                        c = listener.accept() => c,
                        _ = stop_rx.changed() => return,
                    };
                    let Ok((tcp, _)) = conn else { continue };
                    let session = Session {
                        shared: shared.clone(),
                        tls: tls.clone(),
                        mode,
                        shared_cert_digest: shared_cert_digest.clone(),
                        cp_version: cp_version.clone(),
                        push: push_rx.clone(),
                        frozen: frozen_rx.clone(),
                        stop: stop_rx.clone(),
                    };
                    tokio::spawn(session.run(tcp));
                }
            });
        }
        Ok(KongCp {
            endpoint: addr.to_string(),
            certs: pki.dp_certs,
            version: version.to_owned(),
            shared,
            pushed,
            frozen,
            stop,
        })
    }

    /// Kong's `PING_WAIT` (45 s): a DP silent this long is dropped.
    pub fn set_liveness(&self, liveness: Duration) {
        self.shared.lock().unwrap().liveness = liveness;
    }

    /// Kong's `cluster_max_payload` (16 MiB), for sessions that start afterwards.
    pub fn set_max_payload(&self, bytes: usize) {
        self.shared.lock().unwrap().max_payload = bytes;
    }

    /// Kong's `db_update_frequency` (5 s): the pause after each push to connected DPs.
    pub fn set_push_debounce(&self, debounce: Duration) {
        self.shared.lock().unwrap().debounce = debounce;
    }

    /// A hung CP: with `true`, sessions read nothing (so answer no PING) and send nothing.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Why sessions ended so far, in order (e.g. "invalid hash", "payload too big").
    pub fn ended_sessions(&self) -> Vec<String> {
        self.shared.lock().unwrap().ended.clone()
    }

    /// Publishes `config_table` (raw JSON) with `config_hash` to every connected DP and to
    /// later ones, as a CP does after a change. Returns the frame size (compressed).
    pub fn push(&self, config_table: &str, config_hash: &str) -> usize {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let frame = reconfigure_frame(config_table, config_hash, timestamp);
        let size = frame.len();
        let plugins = configured_plugins(config_table);
        {
            let mut shared = self.shared.lock().unwrap();
            shared.current = Some((Arc::new(frame), plugins));
            shared.current_raw = Some((config_table.to_owned(), config_hash.to_owned(), timestamp));
        }
        self.pushed.notify_one();
        size
    }

    /// Sends `frame` as it is (any bytes: garbage, a gzip bomb, a frame over a limit) to
    /// every connected DP and to later ones, in place of a configuration. For fault tests:
    /// a real CP never does this.
    pub fn push_frame(&self, frame: Vec<u8>) {
        {
            let mut shared = self.shared.lock().unwrap();
            shared.current = Some((Arc::new(frame), Vec::new()));
            shared.current_raw = None;
        }
        self.pushed.notify_one();
    }

    /// Turns Wasm on with `filters` installed: a DP whose `basic_info` lacks any of them is
    /// withheld the configuration (`filter_set_incompatible`), as Kong's
    /// `check_configuration_compatibility` does (`kong/clustering/compat/init.lua`).
    pub fn set_wasm_filters(&self, filters: &[&str]) {
        self.shared.lock().unwrap().wasm_filters =
            filters.iter().map(|f| (*f).to_owned()).collect();
    }

    /// Behaves as Kong Enterprise with `allow_inconsistent_data_plane_plugins = on`: a DP
    /// that lacks a configured plugin is sent the configuration without it, instead of
    /// nothing (`update_compatible_payload` in Kong EE's `kong/clustering/compat/init.lua`).
    pub fn strip_missing_plugins(&self, on: bool) {
        self.shared.lock().unwrap().strip_missing_plugins = on;
    }

    /// Installs a custom plugin of `version` on the CP (for the plugin version check).
    pub fn install_plugin(&self, name: &str, version: &str) {
        self.shared
            .lock()
            .unwrap()
            .plugin_versions
            .insert(name.to_owned(), version.to_owned());
    }

    /// The data planes that connected, in connection order.
    pub fn data_planes(&self) -> Vec<DataPlane> {
        self.shared.lock().unwrap().dps.values().cloned().collect()
    }

    /// How many TLS handshakes or certificate checks were refused.
    pub fn rejected_handshakes(&self) -> u32 {
        self.shared.lock().unwrap().rejected_handshakes
    }
}

/// The gzip'd reconfigure frame of `config_table`.
fn reconfigure_frame(config_table: &str, config_hash: &str, timestamp: f64) -> Vec<u8> {
    let mut json = Vec::with_capacity(config_table.len() + 128);
    json.extend_from_slice(
        format!(r#"{{"type":"reconfigure","timestamp":{timestamp},"config_table":"#).as_bytes(),
    );
    json.extend_from_slice(config_table.as_bytes());
    json.extend_from_slice(format!(r#","config_hash":"{config_hash}"}}"#).as_bytes());
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&json).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// `config_table` without the plugin rows whose name the DP did not announce.
fn without_plugins(config_table: &str, dp: &[(String, String)]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(config_table).unwrap_or_default();
    if let Some(rows) = v["plugins"].as_array_mut() {
        rows.retain(|p| {
            p["name"]
                .as_str()
                .is_some_and(|name| dp.iter().any(|(n, _)| n == name))
        });
    }
    v.to_string()
}

/// Names of the plugins configured in `config_table` (Kong checks only those).
fn configured_plugins(config_table: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(config_table).unwrap_or_default();
    let mut names: Vec<String> = v["plugins"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

/// Kong's `string_to_number`: up to four dot-separated parts, each weighted by 1000.
fn version_num(v: &str) -> u64 {
    let mut base = 1_000_000_000u64;
    let mut num = 0;
    for part in v.splitn(4, '.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        num += base * digits.parse::<u64>().unwrap_or(0);
        base /= 1000;
    }
    num
}

/// `config_table` as Kong's compat layer rewrites it for a DP of `dp_version` (see
/// [`REMOVED_FIELDS`]); `None` when nothing changes.
fn compatible_table(config_table: &str, dp_version: &str) -> Option<String> {
    let dp = version_num(dp_version);
    let mut v: serde_json::Value = serde_json::from_str(config_table).ok()?;
    let mut changed = false;
    for plugin in v["plugins"].as_array_mut()?.iter_mut() {
        let name = plugin["name"].as_str().unwrap_or_default().to_owned();
        for (_, _, field) in REMOVED_FIELDS
            .iter()
            .filter(|(below, p, _)| dp < *below && *p == name)
        {
            if let Some(config) = plugin["config"].as_object_mut() {
                changed |= config.remove(*field).is_some();
            }
        }
    }
    changed.then(|| v.to_string())
}

/// Whether `s` is a UUID as Kong's schema `uuid` type takes it (8-4-4-4-12 hex digits).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `(major, minor)` of a version with at least three numeric parts (Kong's pattern).
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?;
    patch.chars().next().filter(char::is_ascii_digit)?;
    Some((major, minor))
}

struct Session {
    shared: Arc<Mutex<Shared>>,
    tls: Arc<rustls::ServerConfig>,
    mode: Mtls,
    shared_cert_digest: Vec<u8>,
    cp_version: String,
    push: watch::Receiver<u64>,
    frozen: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Session {
    fn ended(&self, why: &str) {
        self.shared.lock().unwrap().ended.push(why.to_owned());
    }

    /// Kong's `update_sync_status`: upserts the DP's row, which fails (and is only
    /// logged) for a `node_id` that is not a UUID or a missing hostname.
    fn record(&self, id: &mut Option<u64>, dp: &DataPlane) {
        if !is_uuid(&dp.node_id) || dp.hostname.is_empty() {
            return;
        }
        let mut s = self.shared.lock().unwrap();
        let id = *id.get_or_insert_with(|| {
            s.next_id += 1;
            s.next_id
        });
        s.dps.insert(id, dp.clone());
    }

    fn reject(&self) {
        self.shared.lock().unwrap().rejected_handshakes += 1;
    }

    async fn run(mut self, tcp: tokio::net::TcpStream) {
        // NB: nginx serves with tcp_nodelay on; without it small frames wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let Ok(tls) = acceptor.accept(tcp).await else {
            self.reject();
            return;
        };
        if self.mode == Mtls::Shared {
            let digest = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Sha256::digest(c.as_ref()).to_vec());
            if digest.as_deref() != Some(&self.shared_cert_digest[..]) {
                // Kong: ngx.exit(444), close without a response.
                self.reject();
                return;
            }
        }

        let query = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
        let q = query.clone();
        // NB: the error type is tungstenite's.
        #[allow(clippy::result_large_err)]
        let callback =
            move |req: &Request, resp: Response| -> std::result::Result<Response, ErrorResponse> {
                let bad = |msg: &str| {
                    let mut r = ErrorResponse::new(Some(msg.to_owned()));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                };
                if req.uri().path() != "/v1/outlet" {
                    let mut r = ErrorResponse::new(None);
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    return Err(r);
                }
                // NB: Kong reads the query raw (ngx.var.arg_*), without URL-decoding.
                let params: BTreeMap<String, String> = req
                    .uri()
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                if !params.contains_key("node_id") || !params.contains_key("node_version") {
                    return Err(bad("node_id and node_version are required"));
                }
                *q.lock().unwrap() = params;
                Ok(resp)
            };
        let max_payload = self.shared.lock().unwrap().max_payload;
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_payload))
            .max_frame_size(Some(max_payload));
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(config)).await
        else {
            return;
        };
        let params = query.lock().unwrap().clone();

        // basic_info: a binary frame with a plugins table, else close.
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        let Ok(Some(Ok(Message::Binary(data)))) = first else {
            // NB: Kong validates only a binary frame; a text one makes its handler index a
            // string and die. Either way the session ends.
            self.ended("first frame is not a binary basic_info");
            let _ = ws.close(None).await;
            return;
        };
        let info: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
        let Some(plugins) = info["plugins"]
            .as_array()
            .filter(|_| info["type"] == "basic_info")
        else {
            self.ended("invalid basic_info");
            let _ = ws.close(None).await;
            return;
        };
        let plugins: Vec<(String, String)> = plugins
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["version"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let dp_filters: Vec<String> = info["filters"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let dp_version = params.get("node_version").cloned().unwrap_or_default();
        // The DP's row, written by `record` (None: not written yet).
        let mut id = None;
        let mut dp = DataPlane {
            node_id: params.get("node_id").cloned().unwrap_or_default(),
            hostname: params.get("node_hostname").cloned().unwrap_or_default(),
            version: dp_version.clone(),
            plugins: plugins.clone(),
            // Kong: the initial hash, until the first PING.
            config_hash: Some("0".repeat(32)),
            sync_status: "unknown".into(),
            connected: true,
            ..Default::default()
        };

        let compatible = match (major_minor(&dp_version), major_minor(&self.cp_version)) {
            (Some((dmaj, dmin)), Some((cmaj, cmin))) => dmaj == cmaj && dmin <= cmin,
            _ => false,
        };
        if !compatible {
            dp.sync_status = "kong_version_incompatible".into();
            dp.connected = false;
            self.record(&mut id, &dp);
            self.ended("kong_version_incompatible");
            let _ = ws.close(None).await;
            return;
        }
        dp.sync_status = "normal".into();
        let (liveness, max_payload) = {
            let s = self.shared.lock().unwrap();
            (s.liveness, s.max_payload)
        };
        let same_version = version_num(&dp_version) == version_num(&self.cp_version);

        let mut sent_version = 0u64;
        let mut pending = true; // push on connect
        let mut first_check = true;
        let mut last_ping = tokio::time::Instant::now();
        let why = loop {
            let frozen = *self.frozen.borrow_and_update();
            if pending && !frozen {
                pending = false;
                sent_version = *self.push.borrow_and_update();
                let (current, raw, strip, wasm) = {
                    let s = self.shared.lock().unwrap();
                    (
                        s.current.clone(),
                        s.current_raw.clone(),
                        s.strip_missing_plugins,
                        s.wasm_filters.clone(),
                    )
                };
                if let Some((frame, configured)) = current {
                    let check = if wasm.iter().any(|f| !dp_filters.contains(f)) {
                        Err("filter_set_incompatible")
                    } else {
                        self.plugin_check(&configured, &plugins)
                    };
                    // Strip mode: a DP that lacks plugins gets the table without them.
                    let table = match (&check, &raw) {
                        (Err("plugin_set_incompatible"), Some((table, _, _))) if strip => {
                            Ok(Some(without_plugins(table, &plugins)))
                        }
                        (Ok(()), _) => Ok(None),
                        (Err(e), _) => Err(*e),
                    };
                    // Kong's update_compatible_payload: rewritten for another version, the
                    // original hash kept.
                    let frame = table.map(|stripped| {
                        let Some((table, hash, ts)) = &raw else {
                            return frame;
                        };
                        let base = stripped.as_deref().unwrap_or(table);
                        let compat = (!same_version)
                            .then(|| compatible_table(base, &dp_version))
                            .flatten();
                        match (compat, stripped) {
                            (Some(t), _) | (None, Some(t)) => {
                                Arc::new(reconfigure_frame(&t, hash, *ts))
                            }
                            (None, None) => frame,
                        }
                    });
                    let previous = dp.sync_status.clone();
                    match frame {
                        Ok(frame) => {
                            dp.sync_status = "normal".into();
                            // Kong: send_frame refuses a frame over max_payload_len, the
                            // writer thread fails and the connection drops.
                            if frame.len() > max_payload {
                                break "payload too big";
                            }
                            if ws
                                .send(Message::Binary((*frame).clone().into()))
                                .await
                                .is_err()
                            {
                                break "send failed";
                            }
                            dp.configs_sent += 1;
                        }
                        // Withheld: the session stays up, nothing is sent.
                        Err(status) => dp.sync_status = status.to_owned(),
                    }
                    // Kong writes the row when the status changes (not for the first check,
                    // made before the session's first write).
                    let changed = !first_check && dp.sync_status != previous;
                    if changed || id.is_some() {
                        self.record(&mut id, &dp);
                    }
                    first_check = false;
                }
            }
            let deadline = last_ping + liveness;
            tokio::select! {
                msg = ws.next(), if !frozen => match msg {
                    // Kong's order: close, empty payload, length, then type.
                    Some(Ok(Message::Ping(payload))) if payload.len() == 32 => {
                        last_ping = tokio::time::Instant::now();
                        dp.config_hash = Some(String::from_utf8_lossy(&payload).into_owned());
                        dp.pings += 1;
                        self.record(&mut id, &dp);
                    }
                    Some(Ok(Message::Close(_))) | None => break "closed by the data plane",
                    Some(Ok(Message::Ping(_))) => break "invalid hash",
                    Some(Ok(Message::Pong(_))) => break "invalid frame: pong",
                    Some(Ok(Message::Text(_))) => break "invalid frame: text",
                    Some(Ok(Message::Binary(_))) => break "invalid frame: binary",
                    Some(Ok(Message::Frame(_))) => break "invalid frame",
                    Some(Err(_)) => break "read failed",
                },
                changed = self.push.changed() => {
                    if changed.is_err() { break "stopped"; }
                    pending = *self.push.borrow() != sent_version;
                }
                _ = self.frozen.changed() => {
                    // Thawed: what was pushed meanwhile goes out; silence counts from now.
                    pending = *self.push.borrow() != sent_version;
                    last_ping = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(deadline), if !frozen => break "no ping within PING_WAIT",
                _ = self.stop.changed() => break "stopped",
            }
        };
        self.ended(why);
        let _ = ws.close(None).await;
        dp.connected = false;
        if id.is_some() {
            self.record(&mut id, &dp);
        }
    }

    /// Kong's per-push check of the configured plugins against the DP's list: each must be
    /// there, with the CP's major version and a minor not above the CP's.
    fn plugin_check(
        &self,
        configured: &[String],
        dp: &[(String, String)],
    ) -> std::result::Result<(), &'static str> {
        let installed = self.shared.lock().unwrap().plugin_versions.clone();
        for name in configured {
            let Some((_, v)) = dp.iter().find(|(n, _)| n == name) else {
                return Err("plugin_set_incompatible");
            };
            let cp_version = installed.get(name).unwrap_or(&self.cp_version);
            if let (Some((dmaj, dmin)), Some((cmaj, cmin))) =
                (major_minor(v), major_minor(cp_version))
                && (dmaj != cmaj || cmin < dmin)
            {
                return Err("plugin_version_incompatible");
            }
        }
        Ok(())
    }
}

/// The certificates of one CP double.
struct ClusterPki {
    mode: Mtls,
    cp_cert_der: CertificateDer<'static>,
    cp_cert_pem: String,
    cp_key_pem: String,
    ca_pem: Option<String>,
    dp_certs: ClusterCerts,
}

impl ClusterPki {
    fn generate(mode: Mtls) -> Result<ClusterPki> {
        match mode {
            Mtls::Shared => {
                // Like `kong hybrid gen_cert`: one self-signed cert, CN kong_clustering,
                // shared by the CP and every DP.
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(vec!["kong_clustering".to_owned()])?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, "kong_clustering");
                let cert = params.self_signed(&key)?;
                let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
                Ok(ClusterPki {
                    mode,
                    cp_cert_der: cert.der().clone(),
                    cp_cert_pem: cert_pem.clone(),
                    cp_key_pem: key_pem.clone(),
                    ca_pem: None,
                    dp_certs: ClusterCerts {
                        mode,
                        cert_pem,
                        key_pem,
                        ca_pem: None,
                        server_name: "kong_clustering".into(),
                    },
                })
            }
            Mtls::Pki | Mtls::PkiCnOnly => {
                let (ca_pem, issuer) = crate::pki::ca("kong-cluster-ca")?;
                // NB: not the dialled host (127.0.0.1): the client must check this name.
                let server_name = "kong-cp.kong.svc".to_owned();
                let cp_key = KeyPair::generate()?;
                let mut cp_params = if mode == Mtls::PkiCnOnly {
                    CertificateParams::new(Vec::<String>::new())?
                } else {
                    let mut p = CertificateParams::new(vec![server_name.clone()])?;
                    p.subject_alt_names
                        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
                    p
                };
                cp_params
                    .distinguished_name
                    .push(DnType::CommonName, "kong-cp.kong.svc");
                let cp = cp_params.signed_by(&cp_key, &issuer)?;
                let dp_key = KeyPair::generate()?;
                let mut dp_params = CertificateParams::new(vec!["kong-dp.kong.svc".to_owned()])?;
                dp_params
                    .distinguished_name
                    .push(DnType::CommonName, "kong-dp.kong.svc");
                let dp = dp_params.signed_by(&dp_key, &issuer)?;
                Ok(ClusterPki {
                    mode,
                    cp_cert_der: cp.der().clone(),
                    cp_cert_pem: cp.pem(),
                    cp_key_pem: cp_key.serialize_pem(),
                    ca_pem: Some(ca_pem.clone()),
                    dp_certs: ClusterCerts {
                        mode,
                        cert_pem: dp.pem(),
                        key_pem: dp_key.serialize_pem(),
                        ca_pem: Some(ca_pem.clone()),
                        server_name,
                    },
                })
            }
        }
    }

    fn server_config(&self) -> Result<rustls::ServerConfig> {
        let certs = vec![CertificateDer::from_pem_slice(self.cp_cert_pem.as_bytes())?];
        let key = PrivateKeyDer::from_pem_slice(self.cp_key_pem.as_bytes())?;
        let verifier: Arc<dyn ClientCertVerifier> = match self.mode {
            Mtls::Shared => Arc::new(AnyClientCert(rustls::crypto::aws_lc_rs::default_provider())),
            Mtls::Pki | Mtls::PkiCnOnly => {
                let mut roots = rustls::RootCertStore::empty();
                let ca = self.ca_pem.as_deref().context("pki mode has a CA")?;
                roots.add(CertificateDer::from_pem_slice(ca.as_bytes())?)?;
                WebPkiClientVerifier::builder(Arc::new(roots)).build()?
            }
        };
        Ok(rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?)
    }
}

/// Shared mode: nginx's `ssl_verify_client optional_no_ca` takes any certificate; the
/// digest comparison after the handshake decides.
#[derive(Debug)]
struct AnyClientCert(rustls::crypto::CryptoProvider);

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_need_three_numeric_parts() {
        assert_eq!(major_minor("3.6.1.4"), Some((3, 6)));
        assert_eq!(major_minor("3.10.0"), Some((3, 10)));
        assert_eq!(major_minor("3.6"), None);
        assert_eq!(major_minor("x.6.1"), None);
    }

    #[test]
    fn only_configured_plugins_are_listed() {
        let t = r#"{"plugins":[{"name":"key-auth"},{"name":"acl"},{"name":"key-auth"}]}"#;
        assert_eq!(configured_plugins(t), ["acl", "key-auth"]);
        assert!(configured_plugins(r#"{"services":[]}"#).is_empty());
    }
}
