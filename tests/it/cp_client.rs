//! The control-plane client against the Kong CP test double: mutual TLS in both modes,
//! the handshake, config pushes, withheld configs, version checks and bad frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use kfo_testenv::{KongCp, Mtls};
use kong_fallback_operator::api::MtlsMode;
use kong_fallback_operator::cp_client::{self, ClientError, ClientSettings, Event, FrameError};
use kong_fallback_operator::kong::config::config_hashes;
use tokio::sync::{mpsc, watch};

use crate::wait;

const TABLE: &str = r#"{"_format_version":"3.0","_transform":false,"services":[{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"httpbin","host":"httpbin.org","path":"\/anything","port":443}],"routes":[{"id":"2f55b0b3-04a1-4e47-8c0f-c0d6f0b2b3a2","service":"9748f662-7711-4a90-8186-dc02f10eb0f5","paths":["\/mock"]}],"plugins":[{"id":"p1","name":"key-auth","config":{"key_names":["apikey"]}}]}"#;

fn hash(table: &str) -> String {
    config_hashes(&serde_json::from_str(table).unwrap()).config
}

fn settings(cp: &KongCp, version: &str) -> ClientSettings {
    let v: kong_fallback_operator::kong::KongVersion = version.parse().unwrap();
    ClientSettings {
        endpoint: cp.endpoint.clone(),
        server_name: cp.certs.server_name.clone(),
        mtls: match cp.certs.mode {
            Mtls::Shared => MtlsMode::Shared,
            Mtls::Pki | Mtls::PkiCnOnly => MtlsMode::Pki,
        },
        cert_pem: cp.certs.cert_pem.clone(),
        key_pem: cp.certs.key_pem.clone(),
        ca_pem: cp.certs.ca_pem.clone(),
        node_id: "5f3c1d6e-2b8a-4f0e-9c1d-7a6b5e4d3c2b".into(),
        hostname: "kfo-test".into(),
        plugins: cp_client::plugins::announced(&v, &[], None),
        version: v,
        filters: Vec::new(),
        max_frame: cp_client::DEFAULT_MAX_FRAME,
        max_config: 64 << 20,
    }
}

struct Client {
    events: mpsc::Receiver<Event>,
    _stop: watch::Sender<bool>,
}

fn start(s: ClientSettings) -> Client {
    let (tx, events) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(cp_client::run(s, tx, stop_rx));
    Client {
        events,
        _stop: stop,
    }
}

impl Client {
    /// The next event matching `f` within `secs`, skipping others.
    async fn next<T>(&mut self, secs: u64, f: impl FnMut(Event) -> Option<T>) -> T {
        wait::next_matching(&mut self.events, secs, f).await
    }
}

async fn receives_pushes(mode: Mtls) {
    let cp = KongCp::start(mode, "3.10.0.0").await.unwrap();
    cp.push(TABLE, &hash(TABLE));
    let mut c = start(settings(&cp, "3.6.1.4"));
    let snap = c
        .next(10, |e| {
            if let Event::Snapshot(s) = e {
                Some(s)
            } else {
                None
            }
        })
        .await;
    assert_eq!(snap.hash, hash(TABLE));
    assert_eq!(
        &snap.config[..],
        TABLE.as_bytes(),
        "stored bytes are the CP's encoding"
    );
    assert_eq!(snap.summary.count("services"), 1);

    // The CP records the DP with the version and hash it reported.
    for _ in 0..50 {
        if cp.data_planes().first().and_then(|d| d.config_hash.clone()) == Some(hash(TABLE)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dp = &cp.data_planes()[0];
    assert_eq!(
        (dp.version.as_str(), dp.sync_status.as_str()),
        ("3.6.1.4", "normal")
    );
    assert_eq!(
        dp.config_hash.as_deref(),
        Some(hash(TABLE).as_str()),
        "pings carry the applied hash"
    );
    assert!(
        dp.plugins
            .iter()
            .any(|(n, v)| n == "key-auth" && v == "3.6.1")
    );

    // A change is pushed to the connected client.
    let second = TABLE.replace("httpbin.org", "example.com");
    cp.push(&second, &hash(&second));
    let snap = c
        .next(10, |e| {
            if let Event::Snapshot(s) = e {
                Some(s)
            } else {
                None
            }
        })
        .await;
    assert_eq!(snap.hash, hash(&second));
    assert_eq!(cp.rejected_handshakes(), 0);
}

#[tokio::test]
async fn the_client_receives_every_push_in_shared_mode() {
    receives_pushes(Mtls::Shared).await;
}

#[tokio::test]
async fn the_client_receives_every_push_in_pki_mode() {
    receives_pushes(Mtls::Pki).await;
}

/// Kong's data planes accept a CP certificate that names the CP only in its subject CN
/// (OpenSSL's host check falls back to it); so does the operator. The dialled host
/// (127.0.0.1) differs from the server name, as with Konnect.
#[tokio::test]
async fn the_client_accepts_a_pki_certificate_named_only_in_its_cn() {
    let cp = KongCp::start(Mtls::PkiCnOnly, "3.10.0.0").await.unwrap();
    assert!(!cp.endpoint.starts_with(&cp.certs.server_name));
    receives_pushes(Mtls::PkiCnOnly).await;
}

/// The CN fallback is only a fallback: another name, or a chain that does not lead to the
/// CA, is still refused.
#[tokio::test]
async fn a_cn_only_certificate_for_another_name_or_ca_is_refused() {
    let cp = KongCp::start(Mtls::PkiCnOnly, "3.10.0.0").await.unwrap();
    let stranger = KongCp::start(Mtls::PkiCnOnly, "3.10.0.0").await.unwrap();
    for s in [
        ClientSettings {
            server_name: "other.kong.svc".into(),
            ..settings(&cp, "3.6.1.4")
        },
        ClientSettings {
            ca_pem: stranger.certs.ca_pem.clone(),
            ..settings(&cp, "3.6.1.4")
        },
    ] {
        let mut c = start(s);
        let error = c
            .next(10, |e| match e {
                Event::Disconnected { error, .. } => Some(error),
                Event::Snapshot(_) => panic!("a refused certificate gave a config"),
                _ => None,
            })
            .await;
        assert!(matches!(error, ClientError::Tls { .. }), "{error}");
    }
}

#[tokio::test]
async fn a_wrong_client_certificate_is_refused_by_the_cp_and_reported() {
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let other = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    cp.push(TABLE, &hash(TABLE));
    let mut s = settings(&cp, "3.6.1.4");
    // Another cluster's certificate: our client trusts the CP only if it serves the same
    // certificate, so use the other one for both sides of the client.
    s.cert_pem = other.certs.cert_pem.clone();
    s.key_pem = other.certs.key_pem.clone();
    let mut c = start(s);
    let error = c
        .next(10, |e| {
            if let Event::Disconnected { error, .. } = e {
                Some(error)
            } else {
                None
            }
        })
        .await;
    assert!(matches!(error, ClientError::Tls { .. }), "{error}");
    assert!(error.to_string().contains("cluster certificate"), "{error}");

    // With the CP's CA but a certificate the CP does not know (pki mode): refused by the CP.
    let pki = KongCp::start(Mtls::Pki, "3.10.0.0").await.unwrap();
    let stranger = KongCp::start(Mtls::Pki, "3.10.0.0").await.unwrap();
    let mut s = settings(&pki, "3.6.1.4");
    s.cert_pem = stranger.certs.cert_pem.clone();
    s.key_pem = stranger.certs.key_pem.clone();
    let mut c = start(s);
    let error = c
        .next(10, |e| {
            if let Event::Disconnected { error, .. } = e {
                Some(error)
            } else {
                None
            }
        })
        .await;
    assert!(
        matches!(
            error,
            ClientError::Tls { .. } | ClientError::Handshake(_) | ClientError::Protocol(_)
        ),
        "{error}"
    );
    for _ in 0..50 {
        if pki.rejected_handshakes() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pki.rejected_handshakes() > 0,
        "the CP refused the stranger's certificate"
    );
    assert!(pki.data_planes().is_empty());
}

/// A data plane whose `KONG_PLUGINS` lacks a configured plugin: a CP that withholds sends
/// nothing, a CP with Kong EE's `allow_inconsistent_data_plane_plugins = on` strips it.
/// Either way what arrives is what such a data plane would receive.
#[tokio::test]
async fn a_restricted_plugin_list_gets_what_a_real_data_plane_would() {
    let v: kong_fallback_operator::kong::KongVersion = "3.6.1.4".parse().unwrap();
    let only: std::collections::BTreeSet<String> = ["rate-limiting".to_owned()].into();
    for strip in [false, true] {
        let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
        cp.strip_missing_plugins(strip);
        cp.push(TABLE, &hash(TABLE));
        let mut s = settings(&cp, "3.6.1.4");
        s.plugins = cp_client::plugins::announced(&v, &[], Some(&only));
        assert_eq!(s.plugins.len(), 1);
        let mut c = start(s);
        if strip {
            let snap = c
                .next(15, |e| match e {
                    Event::Snapshot(s) => Some(s),
                    _ => None,
                })
                .await;
            assert!(
                snap.summary.plugins.is_empty(),
                "{:?}",
                snap.summary.plugins
            );
            assert_eq!(snap.summary.count("services"), 1);
            assert_eq!(snap.hash, hash(TABLE), "the CP keeps the original hash");
        } else {
            c.next(15, |e| match e {
                Event::NoConfig => Some(()),
                Event::Snapshot(_) => panic!("withheld: a DP without key-auth gets nothing"),
                _ => None,
            })
            .await;
        }
    }
}

/// A CP with Wasm on withholds the configuration from a DP that does not announce every
/// filter it has; the policy's `exporter.wasmFilters` are announced.
#[tokio::test]
async fn wasm_filters_must_be_announced() {
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    cp.set_wasm_filters(&["rate-limiter"]);
    cp.push(TABLE, &hash(TABLE));
    let mut c = start(settings(&cp, "3.6.1.4"));
    c.next(15, |e| match e {
        Event::NoConfig => Some(()),
        Event::Snapshot(_) => panic!("withheld: the filter was not announced"),
        _ => None,
    })
    .await;
    assert!(
        cp.data_planes()
            .iter()
            .any(|d| d.sync_status == "filter_set_incompatible")
    );
    let mut s = settings(&cp, "3.6.1.4");
    s.filters = vec!["rate-limiter".into()];
    let mut c = start(s);
    let snap = c
        .next(15, |e| match e {
            Event::Snapshot(s) => Some(s),
            _ => None,
        })
        .await;
    assert_eq!(snap.hash, hash(TABLE));
}

#[tokio::test]
async fn a_config_with_an_unannounced_plugin_is_withheld_and_reported() {
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    cp.install_plugin("my-custom-auth", "1.2.0");
    let custom = TABLE.replace("\"key-auth\"", "\"my-custom-auth\"");
    cp.push(&custom, &hash(&custom));
    let mut c = start(settings(&cp, "3.6.1.4"));
    c.next(5, |e| matches!(e, Event::Connected).then_some(()))
        .await;
    c.next(15, |e| match e {
        Event::NoConfig => Some(()),
        Event::Snapshot(_) => panic!("the CP must withhold a config with an unknown plugin"),
        _ => None,
    })
    .await;
    assert_eq!(cp.data_planes()[0].sync_status, "plugin_set_incompatible");
    assert!(cp.data_planes()[0].connected, "the socket stays up");

    // Announcing the custom plugin fixes it.
    let mut s = settings(&cp, "3.6.1.4");
    s.plugins.push(("my-custom-auth".into(), "1.3.0".into()));
    let mut c = start(s.clone());
    c.next(15, |e| match e {
        Event::NoConfig => Some(()),
        Event::Snapshot(_) => panic!("a DP plugin newer than the CP's (1.3 > 1.2) must be refused"),
        _ => None,
    })
    .await;
    assert!(
        cp.data_planes()
            .iter()
            .any(|d| d.sync_status == "plugin_version_incompatible")
    );
    s.plugins.pop();
    s.plugins.push(("my-custom-auth".into(), "1.2.0".into()));
    let mut c = start(s);
    let snap = c
        .next(10, |e| {
            if let Event::Snapshot(s) = e {
                Some(s)
            } else {
                None
            }
        })
        .await;
    assert_eq!(snap.hash, hash(&custom));
}

#[tokio::test]
async fn a_data_plane_newer_than_the_cp_is_refused() {
    let cp = KongCp::start(Mtls::Shared, "3.6.0.0").await.unwrap();
    cp.push(TABLE, &hash(TABLE));
    let mut c = start(settings(&cp, "3.7.0.0"));
    let error = c
        .next(10, |e| {
            if let Event::Disconnected { error, .. } = e {
                Some(error)
            } else {
                None
            }
        })
        .await;
    assert!(matches!(error, ClientError::Closed(_)), "{error}");
    assert_eq!(cp.data_planes()[0].sync_status, "kong_version_incompatible");
}

#[tokio::test]
async fn an_oversized_config_is_refused_and_the_client_reconnects() {
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    cp.push(TABLE, &hash(TABLE));
    let mut s = settings(&cp, "3.6.1.4");
    s.max_config = 100;
    let mut c = start(s);
    let e = c
        .next(10, |e| {
            if let Event::Rejected(e) = e {
                Some(e)
            } else {
                None
            }
        })
        .await;
    assert_eq!(e, FrameError::TooLarge { max: 100 });
    let (error, retry_in) = c
        .next(10, |e| {
            if let Event::Disconnected { error, retry_in } = e {
                Some((error, retry_in))
            } else {
                None
            }
        })
        .await;
    assert!(matches!(error, ClientError::BadFrame(_)), "{error}");
    assert!(retry_in <= Duration::from_secs(3));
    c.next(10, |e| matches!(e, Event::Connected).then_some(()))
        .await;
}
