//! Export: configurations from the control plane to `<prefix>/<version>/config.json`.
//!
//! [`decision`] holds the pure rules (what to write and when: dedupe, never empty,
//! coalescing, retry backoff), [`history`] the bounded rollback history, and [`runner`]
//! the thin loop from control-plane events to storage writes and reports. Every write
//! waits for a permit from the election's [`crate::election::Gate`] and is conditional on
//! the object last seen (S3 `If-Match` / `If-None-Match`, GCS `ifGenerationMatch`) with the
//! Lease's epoch in its metadata, so a replaced leader cannot overwrite a newer export.
//! [`early`] starts a large configuration's write while its checks run, committed only
//! once the checked snapshot proves to be the bytes staged.

pub mod decision;
pub mod early;
pub mod history;
pub mod runner;

pub use decision::{Dropped, Exporter, Next, Snapshot, backoff};
