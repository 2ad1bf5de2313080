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

/// The minor version of the Kubernetes API the operator is compiled against (the
/// k8s-openapi feature in Cargo.toml).
#[allow(
    clippy::needless_late_init,
    reason = "the k8s_if macros are statements"
)]
fn typed_minor() -> &'static str {
    // Exactly one of these expands; a feature not listed here fails to compile.
    let minor;
    k8s_openapi::k8s_if_1_33! { minor = "33"; }
    k8s_openapi::k8s_if_1_34! { minor = "34"; }
    k8s_openapi::k8s_if_1_35! { minor = "35"; }
    k8s_openapi::k8s_if_1_36! { minor = "36"; }
    k8s_openapi::k8s_if_1_37! { minor = "37"; }
    minor
}

#[tokio::test]
async fn the_apiserver_serves_the_api_the_operator_is_typed_against() {
    let client = kfo_testenv::kube().await.client().await.unwrap();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    assert_eq!(
        info.minor,
        typed_minor(),
        "tools/go/k8s builds Kubernetes {}, but Cargo.toml enables another k8s-openapi version",
        info.git_version
    );
}

/// `tools/ensure-bin` once more for every binary: all are cached by now (this test
/// builds what is missing first), so the second call must build nothing and answer paths
/// keyed by name, version and pin.
#[test]
fn a_second_ensure_bin_run_builds_nothing() {
    let script = kfo_testenv::repo_root().join("tools/ensure-bin");
    let first = Command::new(&script).arg("all").output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = Command::new(&script).arg("all").output().unwrap();
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !stderr.contains("building"),
        "the second run rebuilt: {stderr}"
    );
    assert_eq!(again.stdout, first.stdout, "the same binaries both times");
    let paths = String::from_utf8(again.stdout).unwrap();
    let names = [
        "etcd",
        "kube-apiserver",
        "kubectl",
        "minio",
        "fake-gcs-server",
        "helm",
        "toxiproxy-server",
        "actionlint",
        "argo-health",
        "kstatus",
        "promtool",
    ];
    let lines: Vec<&str> = paths.lines().collect();
    assert_eq!(lines.len(), names.len(), "{paths}");
    for (line, name) in lines.iter().zip(names) {
        let path = Path::new(line);
        assert!(path.is_file(), "{line} is not a file");
        assert_eq!(path.file_name().unwrap().to_str(), Some(name));
        // <cache>/<name>-<version>-<pin>/<name>
        let dir = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let rest = dir
            .strip_prefix(&format!("{name}-"))
            .unwrap_or_else(|| panic!("{line}: the directory is not keyed by the binary's name"));
        let (version, pin) = rest.rsplit_once('-').unwrap();
        assert!(!version.is_empty(), "{line}: no version in the key");
        assert!(
            pin.len() == 10 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}: no pin in the key"
        );
    }
}
