//! Reading the Secrets policies name, through a cache that the controller's metadata watch
//! of Secrets keeps honest.
//!
//! A reconcile read each Secret its policy names two or three times (the facts the webhook
//! uses, the storage probe, the exporters' plan), and every policy did so on its own: when
//! an operator started on 200 policies sharing one credentials Secret, that was ~900 GETs
//! of the same object in its first seconds, a fifth of all its requests (bench P4).
//!
//! A value is served from the cache only while the watch reports the resourceVersion it
//! was read at. A change, a deletion, or a Secret the watch has not listed yet means a GET,
//! as before. A changed Secret also re-triggers the policies that name it once the watch
//! sees it (the controller's `watches_stream`), so those read the new value then, as any
//! informer-based controller would. Only Secrets a policy names are ever read, so no
//! other Secret's value reaches this process; an entry whose Secret is gone is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

/// The metadata of the Secrets in the controller's scope, as its watch has them.
pub type SecretMetas = Store<PartialObjectMeta<Secret>>;

/// Reads Secrets, through the cache when the controller has one.
#[derive(Clone)]
pub struct SecretReader {
    client: Client,
    cache: Option<Arc<Cache>>,
}

struct Cache {
    known: SecretMetas,
    values: Mutex<HashMap<(String, String), Secret>>,
}

impl SecretReader {
    /// Every read is a GET (commands that run once: cleanup, doctor).
    pub fn direct(client: Client) -> Self {
        SecretReader {
            client,
            cache: None,
        }
    }

    /// Reads served from memory while `known` reports the resourceVersion they were read at.
    pub fn cached(client: Client, known: SecretMetas) -> Self {
        SecretReader {
            client,
            cache: Some(Arc::new(Cache {
                known,
                values: Mutex::default(),
            })),
        }
    }

    /// The Secret `ns`/`name`; `None` when it does not exist.
    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<Secret>, kube::Error> {
        let key = (ns.to_owned(), name.to_owned());
        if let Some(cache) = &self.cache {
            let watched = cache
                .known
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|m| m.resource_version());
            let values = cache.lock();
            if let (Some(rv), Some(held)) = (watched, values.get(&key))
                && held.resource_version().as_deref() == Some(rv.as_str())
            {
                return Ok(Some(held.clone()));
            }
        }
        let read = Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?;
        if let Some(cache) = &self.cache {
            let mut values = cache.lock();
            match &read {
                Some(s) => {
                    values.insert(key.clone(), s.clone());
                }
                None => {
                    values.remove(&key);
                }
            }
            // NB: a Secret deleted while no policy reads it again would stay: drop what the
            // watch does not have. (Before its first listing that is everything: misses,
            // never a wrong value, since a value is served only at the watched version.)
            values.retain(|k, _| {
                *k == key
                    || cache
                        .known
                        .get(&ObjectRef::new(&k.1).within(&k.0))
                        .is_some()
            });
        }
        Ok(read)
    }

    /// How many Secret values the cache holds (for tests).
    pub fn cached_values(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.lock().len())
    }
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Secret>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }
}
