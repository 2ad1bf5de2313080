//! The export pipeline (control-plane client + export runner) wired like the operator
//! wires it, for tests and benchmarks. Included with `#[path]`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use kfo_testenv::KongCp;
use kong_fallback_operator::api::MtlsMode;
use kong_fallback_operator::cp_client::{self, ClientSettings};
use kong_fallback_operator::export::runner::{self, ExportTarget, Report};
use kong_fallback_operator::kong::StorageUrl;
use kong_fallback_operator::storage::ObjectStore;
use tokio::sync::{mpsc, watch};

/// Where a CP double listens and the shared-mode certificate a DP presents to it.
pub struct CpAddress {
    pub endpoint: String,
    pub server_name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pipeline {
    reports: mpsc::Receiver<Report>,
    _stop: watch::Sender<bool>,
}

impl Pipeline {
    pub fn start(
        cp: &KongCp,
        version: &str,
        store: Arc<dyn ObjectStore>,
        url: &str,
        min_interval: Duration,
    ) -> Pipeline {
        let cp = CpAddress {
            endpoint: cp.endpoint.clone(),
            server_name: cp.certs.server_name.clone(),
            cert_pem: cp.certs.cert_pem.clone(),
            key_pem: cp.certs.key_pem.clone(),
        };
        Pipeline::connect(&cp, version, store, url, min_interval)
    }

    /// As [`Pipeline::start`], to a CP double of another process.
    pub fn connect(
        cp: &CpAddress,
        version: &str,
        store: Arc<dyn ObjectStore>,
        url: &str,
        min_interval: Duration,
    ) -> Pipeline {
        let v: kong_fallback_operator::kong::KongVersion = version.parse().unwrap();
        let settings = ClientSettings {
            endpoint: cp.endpoint.clone(),
            server_name: cp.server_name.clone(),
            mtls: MtlsMode::Shared,
            cert_pem: cp.cert_pem.clone(),
            key_pem: cp.key_pem.clone(),
            ca_pem: None,
            node_id: "5f3c1d6e-2b8a-4f0e-9c1d-7a6b5e4d3c2b".into(),
            hostname: "kfo-test".into(),
            plugins: cp_client::plugins::announced(&v, &[], None),
            version: v,
            filters: Vec::new(),
            max_frame: cp_client::DEFAULT_MAX_FRAME,
            max_config: 64 << 20,
            keepalive: Default::default(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let (rep_tx, reports) = mpsc::channel(1024);
        tokio::spawn(cp_client::run(settings, ev_tx, stop_rx.clone()));
        let target = ExportTarget {
            url: StorageUrl::parse(url).unwrap(),
            version: version.to_owned(),
            uploader: "kfo-test-replica".into(),
            writer: "kfo-test-replica".into(),
            owner: "kong/prod".into(),
            plugins: None,
            min_interval,
            history_limit: 3,
        };
        tokio::spawn(runner::run(
            target,
            store,
            ev_rx,
            rep_tx,
            kong_fallback_operator::election::Gate::always(),
            stop_rx,
        ));
        Pipeline {
            reports,
            _stop: stop,
        }
    }

    pub async fn until<T>(&mut self, secs: u64, f: impl FnMut(Report) -> Option<T>) -> T {
        super::wait::next_matching(&mut self.reports, secs, f).await
    }

    pub async fn exported(&mut self) -> (String, String) {
        self.until(15, |r| {
            if let Report::Exported { key, hash, .. } = r {
                Some((key, hash))
            } else {
                None
            }
        })
        .await
    }
}
