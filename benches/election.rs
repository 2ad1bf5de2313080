//! Election benchmark (figures, not assertions). `make bench B=P2` runs it.
//!
//! - P2: failover time with three operator processes on one policy against the test
//!   apiserver, MinIO and the Kong CP double. Kill rounds: SIGKILL the leader, push a new
//!   configuration at once, and time until the new leader has stored it. SIGTERM rounds:
//!   SIGTERM the leader, wait for it to exit (it releases the Lease), push, and time from the
//!   signal until the new leader has stored it. A fresh replica replaces each stopped one.
//!   The lease timings are shortened (printed) so that 20 rounds of each fit in minutes;
//!   the kill figure scales with leaseDuration, the SIGTERM figure does not. Run for both
//!   `exporter.standby` modes: `warm` (followers keep control-plane sessions) and `cold`
//!   (only the leader connects, so a takeover also waits for the new session's first
//!   configuration).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

#[path = "../tests/common/cluster.rs"]
mod cluster;
#[path = "../tests/common/fleet.rs"]
mod fleet;

use fleet::{Fleet, Operator, Timings};

const ROUNDS: usize = 20;

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

async fn p2(standby: &str) {
    let timings = Timings {
        lease: 4,
        renew: 3,
        retry: 1,
    };
    let mut fleet = Fleet::with_standby(
        &format!("bench-p2-{}", standby.to_lowercase()),
        timings,
        standby,
    )
    .await;
    let mut ops: Vec<Operator> = (0..3).map(|i| fleet.start(&format!("kfo-{i}"))).collect();
    let mut kill = Vec::new();
    let mut term = Vec::new();
    for round in 0..2 * ROUNDS {
        let sigkill = round % 2 == 0;
        // Steady state: a leader that has stored the latest configuration.
        let hash = fleet.push();
        let ((_, leader), _) = fleet
            .wait_stored(&hash, Duration::from_secs(60))
            .await
            .expect("a steady leader");
        let idx = ops.iter().position(|o| o.name == leader).unwrap();
        let old = ops.remove(idx);
        let start = Instant::now();
        let hash = if sigkill {
            old.proc.signal("KILL").unwrap();
            fleet.push()
        } else {
            old.proc.signal("TERM").unwrap();
            assert!(
                old.proc.wait_exit(Duration::from_secs(15)).await,
                "SIGTERM ends it"
            );
            fleet.push()
        };
        let ((_, new_leader), _) = fleet
            .wait_stored(&hash, Duration::from_secs(60))
            .await
            .expect("a new leader exports");
        assert_ne!(new_leader, leader);
        let took = start.elapsed().as_secs_f64();
        if sigkill {
            kill.push(took);
        } else {
            term.push(took);
        }
        eprintln!(
            "P2 round {round}: {} {leader} -> {new_leader} in {took:.2} s",
            if sigkill { "SIGKILL" } else { "SIGTERM" }
        );
        drop(old);
        ops.push(fleet.start(&format!("kfo-{}", round + 3)));
        // Let the replacement connect to the control plane before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "bench: P2 standby={} lease_s={} renew_s={} retry_s={} rounds={ROUNDS} kill_p50_s={:.2} kill_max_s={:.2} term_p50_s={:.2} term_max_s={:.2} target_kill_s={} target_term_s=2",
        standby.to_lowercase(),
        timings.lease,
        timings.renew,
        timings.retry,
        percentile(&mut kill, 0.5),
        // NB: the maximum, labelled as such: 20 samples have no p99.
        percentile(&mut kill, 1.0),
        percentile(&mut term, 0.5),
        percentile(&mut term, 1.0),
        timings.lease + 2,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only: Option<String> = std::env::args().skip(1).find(|a| a.starts_with('P'));
    if only.as_deref().is_none_or(|o| o == "P2") {
        rt.block_on(p2("Warm"));
        rt.block_on(p2("Cold"));
    }
}
