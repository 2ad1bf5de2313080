//! The test environment itself: its processes never outlive the test binary, even when a
//! test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Run only by `processes_are_reaped_when_a_test_fails`, as a child test binary.
#[tokio::test]
#[ignore = "helper: started by processes_are_reaped_when_a_test_fails"]
async fn helper_starts_processes_then_fails() {
    let gcs = kfo_testenv::gcs().await;
    let minio = kfo_testenv::minio().await;
    println!("TESTENV-PIDS {} {}", gcs.pid(), minio.pid());
    panic!("this helper test fails on purpose");
}

#[test]
fn processes_are_reaped_when_a_test_fails() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "testenv::helper_starts_processes_then_fails",
            "--nocapture",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the helper test was meant to fail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("TESTENV-PIDS "))
        .unwrap_or_else(|| {
            panic!(
                "no pids printed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let pids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);

    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        // A killed child may linger as a zombie until reparented and reaped: gone or zombie is fine.
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived its test binary"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn alive(pid: u32) -> bool {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    match std::fs::read_to_string(stat) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn unique_names_are_valid_bucket_and_namespace_names() {
    let a = kfo_testenv::unique_name("My_Test");
    let b = kfo_testenv::unique_name("My_Test");
    assert_ne!(a, b);
    for n in [&a, &b] {
        assert!(n.len() <= 63 && n.starts_with("my-test-"), "{n}");
        assert!(
            n.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
            "{n}"
        );
    }
}

/// Listening TCP sockets of `pid`, as (address, port) with the address in hex as
/// /proc/net/tcp{,6} writes it.
fn listening_sockets(pid: u32) -> Vec<(String, u16)> {
    let fd_dir = Path::new("/proc").join(pid.to_string()).join("fd");
    let inodes: Vec<String> = std::fs::read_dir(fd_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (addr, port) = f[1].split_once(':').unwrap();
                out.push((addr.to_owned(), u16::from_str_radix(port, 16).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_process_listens_on_loopback_only() {
    let kube = kfo_testenv::kube().await;
    let minio = kfo_testenv::minio().await;
    let gcs = kfo_testenv::gcs().await;
    let mut pids = kube.pids().to_vec();
    pids.extend([minio.pid(), gcs.pid()]);
    for pid in pids {
        let sockets = listening_sockets(pid);
        assert!(!sockets.is_empty(), "process {pid} listens on nothing?");
        for (addr, port) in sockets {
            // 127.0.0.1 in /proc/net/tcp is 0100007F; ::1 (or v4-mapped 127.0.0.1) in tcp6.
            let loopback = addr == "0100007F"
                || addr == "00000000000000000000000001000000"
                || addr == "0000000000000000FFFF00000100007F";
            assert!(
                loopback,
                "process {pid} listens on {addr}:{port}, not loopback"
            );
        }
    }
}
