//! Object storage clients. This module owns how the operator talks to S3, S3-compatible
//! stores and GCS; the rest of the operator sees only what it exports.
//!
//! Built so far: client construction from a policy's storage settings (region, custom
//! endpoint with path-style addressing, static or session credentials; GCS with a
//! service-account JSON, the ambient identity, or anonymous access for an emulator).

pub mod gcs;
pub mod s3;
