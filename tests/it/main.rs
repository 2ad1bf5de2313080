//! Every integration test, in one test binary.
//!
//! One binary instead of one per file: the product, the storage SDKs and kube are linked
//! once (a debug link of them is large and slow), and the test environment (one
//! kube-apiserver, one MinIO, one fake-gcs-server, started lazily) is shared by all tests.
//! Run one group with `cargo test --test it storage::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/cluster.rs"]
mod cluster;
#[path = "../common/fleet.rs"]
mod fleet;
#[path = "../common/pipeline.rs"]
mod pipeline;
#[path = "../common/stores.rs"]
mod stores;
#[path = "../common/wait.rs"]
mod wait;

mod api;
mod chart;
mod cleanup;
mod controller;
mod cp_client;
mod doctor;
mod ecosystem;
mod election;
mod export;
mod faults;
mod gcs_e2e;
mod generated;
mod identity;
mod install;
mod layout;
mod monitoring;
mod storage;
mod testenv;
mod upgrade;
mod webhook;
