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
            "helper_starts_processes_then_fails",
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
