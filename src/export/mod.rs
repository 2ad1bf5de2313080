//! Export: configurations from the control plane to `<prefix>/<version>/config.json`.
//!
//! Built so far: the pure decisions (what to write and when: dedupe, never empty,
//! coalescing, retry backoff; the bounded history). The loop that feeds them from the
//! control-plane client and writes through the storage layer comes with the CP client.

pub mod decision;
pub mod history;

pub use decision::{Dropped, Exporter, Next, Snapshot, backoff};
