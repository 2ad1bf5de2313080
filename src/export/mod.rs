//! Export: configurations from the control plane to `<prefix>/<version>/config.json`.
//!
//! [`decision`] holds the pure rules (what to write and when: dedupe, never empty,
//! coalescing, retry backoff), [`history`] the bounded rollback history, and [`runner`]
//! the thin loop from control-plane events to storage writes and reports. Not built yet:
//! gating writes on the election's claim and fencing them with conditional writes.

pub mod decision;
pub mod history;
pub mod runner;

pub use decision::{Dropped, Exporter, Next, Snapshot, backoff};
