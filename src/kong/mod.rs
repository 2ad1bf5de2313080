//! The Kong domain: storage URLs and object keys, gateway versions, the configuration
//! document and its hash, and the names Kong reads from its environment. Pure: no I/O, no Kubernetes.

pub mod config;
pub mod env;
pub mod storage_url;
pub mod version;

pub use storage_url::{Provider, StorageUrl, StorageUrlError};
pub use version::{
    ImageVersionError, KongVersion, KongVersionError, VERSION_ANNOTATION, version_from_image,
};
