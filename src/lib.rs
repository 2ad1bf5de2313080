//! kong-fallback-operator: makes Kong Gateway data plane resilience (fallback
//! configuration export and import) declarative on Kubernetes.
//!
//! Modules, from pure to I/O: [`api`] and [`kong`] are pure; [`storage`] talks to object
//! stores; [`controller`] talks to Kubernetes; [`metrics`] and [`http`] are what
//! Prometheus and the kubelet see; [`cleanup`] releases the policies for an uninstall.
#![forbid(unsafe_code)]

pub mod api;
pub mod cleanup;
pub mod controller;
pub mod cp_client;
pub mod doctor;
pub mod election;
pub mod export;
pub mod http;
pub mod inject;
pub mod kong;
pub mod metrics;
pub mod storage;
pub mod telemetry;
pub mod watch;
pub mod webhook;
