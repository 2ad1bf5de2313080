//! `doctor`: what a new Kong data plane would load from storage right now.
//!
//! It reads the same environment a Kong data plane reads, fetches
//! `<prefix>/<version>/config.json` as an importer would, and checks it the way the import
//! would. [`diagnose`] is pure; [`access_from_env`] turns Kong's environment into storage
//! access; `main` does the fetch.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::kong::config::{config_hashes, validate_config};
use crate::kong::{Provider, StorageUrl, env};
use crate::storage::gcs::GcsCredentials;
use crate::storage::s3::{PutExtras, S3Credentials, S3Settings, StaticCredentials};
use crate::storage::{Access, Object};

/// What `doctor` found.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub key: String,
    /// False when a new data plane would come up empty.
    pub would_load: bool,
    pub age: Option<Duration>,
    pub size: Option<u64>,
    /// Kong's hash of the stored configuration, as the importing data plane computes it.
    pub kong_hash: Option<String>,
    /// The exporter's metadata: `uploader`, and the control plane's hash when the operator wrote it.
    pub uploader: Option<String>,
    pub exported_hash: Option<String>,
    pub entities: Vec<(String, usize)>,
    pub problems: Vec<String>,
}

/// Checks `object` (what storage holds at `key`) as a data plane's import would.
pub fn diagnose(key: &str, version: &str, object: Option<&Object>, now: SystemTime) -> Report {
    let mut r = Report {
        key: key.to_owned(),
        would_load: false,
        age: None,
        size: None,
        kong_hash: None,
        uploader: None,
        exported_hash: None,
        entities: Vec::new(),
        problems: Vec::new(),
    };
    let Some(object) = object else {
        r.problems.push(format!(
            "no object at {key}: a new data plane of version {version} would come up empty (is an exporter running for this exact version?)"
        ));
        return r;
    };
    r.size = Some(object.info.size);
    r.age = now.duration_since(object.info.last_modified).ok();
    r.uploader = object.metadata.get("uploader").cloned();
    r.exported_hash = object.metadata.get("config-hash").cloned();
    let value: serde_json::Value = match serde_json::from_slice(&object.body) {
        Ok(v) => v,
        Err(e) => {
            r.problems.push(format!(
                "{key} is not valid JSON ({e}): the import would fail"
            ));
            return r;
        }
    };
    match validate_config(&value) {
        Ok(summary) => {
            r.kong_hash = Some(config_hashes(&value).config);
            r.would_load = !summary.is_empty();
            if summary.is_empty() {
                r.problems.push(format!(
                    "{key} holds an empty configuration: a new data plane would serve nothing"
                ));
            }
            r.entities = summary.entities;
        }
        Err(e) => r
            .problems
            .push(format!("{key} is not a configuration Kong can load: {e}")),
    }
    r
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "object:     {}", self.key)?;
        if let Some(size) = self.size {
            writeln!(f, "size:       {size} bytes")?;
        }
        if let Some(age) = self.age {
            writeln!(f, "age:        {}s", age.as_secs())?;
        }
        if let Some(u) = &self.uploader {
            writeln!(f, "uploader:   {u}")?;
        }
        if let Some(h) = &self.kong_hash {
            writeln!(f, "kong hash:  {h}")?;
        }
        if let Some(h) = &self.exported_hash {
            writeln!(f, "cp hash:    {h}")?;
        }
        if !self.entities.is_empty() {
            let counts: Vec<String> = self
                .entities
                .iter()
                .map(|(n, c)| format!("{n}={c}"))
                .collect();
            writeln!(f, "entities:   {}", counts.join(" "))?;
        }
        for p in &self.problems {
            writeln!(f, "problem:    {p}")?;
        }
        if self.would_load {
            writeln!(
                f,
                "verdict:    a new data plane would load this configuration"
            )
        } else {
            writeln!(f, "verdict:    a new data plane would come up EMPTY")
        }
    }
}

/// Storage access from the environment a Kong data plane reads (DOMAIN.md §1).
/// `endpoint` overrides `AWS_CONFIG_STORAGE_ENDPOINT`, and for GCS `STORAGE_EMULATOR_HOST`
/// (an emulator, as Google's client libraries read it); `anonymous` is for GCS emulators only.
pub fn access_from_env(
    url: &StorageUrl,
    get: impl Fn(&str) -> Option<String>,
    endpoint: Option<String>,
    anonymous: bool,
) -> Result<Access, String> {
    let get = |k: &str| get(k).filter(|v| !v.is_empty());
    match url.provider {
        Provider::S3 => {
            let region = get(env::AWS_REGION)
                .or_else(|| get(env::AWS_DEFAULT_REGION))
                .ok_or(
                    "S3 region is not configured: set AWS_REGION (Kong refuses S3 without one)",
                )?;
            // NB: without keys, the AWS SDK's default chain, as Kong's own AWS library
            // falls back to its chain: IRSA, EKS Pod Identity, instance profile.
            let credentials = match (get(env::AWS_ACCESS_KEY_ID), get(env::AWS_SECRET_ACCESS_KEY)) {
                (Some(id), Some(secret)) => StaticCredentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: get(env::AWS_SESSION_TOKEN),
                }
                .into(),
                (None, None) => S3Credentials::Ambient,
                _ => {
                    return Err("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither to use the ambient AWS identity (IRSA, EKS Pod Identity)".into());
                }
            };
            Ok(Access::S3 {
                settings: S3Settings {
                    region,
                    endpoint: endpoint.or_else(|| get(env::AWS_CONFIG_STORAGE_ENDPOINT)),
                    credentials,
                    ca_pem: None,
                },
                extras: PutExtras::default(),
            })
        }
        Provider::Gcs => Ok(Access::Gcs {
            endpoint: endpoint.or_else(|| {
                crate::storage::gcs::emulator_endpoint(
                    get(crate::storage::gcs::EMULATOR_HOST_ENV).as_deref(),
                )
            }),
            credentials: match (anonymous, get(env::GCP_SERVICE_ACCOUNT)) {
                (true, _) => GcsCredentials::Anonymous,
                (false, Some(json)) => GcsCredentials::ServiceAccountJson(json),
                (false, None) => GcsCredentials::Ambient,
            },
            extras: Default::default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectInfo;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn obj(body: &str, age_secs: u64) -> Object {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Object {
            info: ObjectInfo {
                key: "k".into(),
                size: body.len() as u64,
                last_modified: now - Duration::from_secs(age_secs),
                created: now,
                version: "1".into(),
            },
            body: Bytes::from(body.to_owned()),
            content_type: Some("application/json".into()),
            metadata: BTreeMap::from([("uploader".into(), "kfo-0".into())]),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    #[test]
    fn a_good_config_would_load_and_is_described() {
        let body = r#"{"_format_version":"3.0","services":[{"id":"s"}],"routes":[{"id":"r","service":"s"}]}"#;
        let r = diagnose(
            "p/3.6.1.4/config.json",
            "3.6.1.4",
            Some(&obj(body, 42)),
            now(),
        );
        assert!(r.would_load, "{r}");
        assert_eq!(r.age, Some(Duration::from_secs(42)));
        assert_eq!(
            r.entities,
            [("routes".to_owned(), 1), ("services".to_owned(), 1)]
        );
        assert_eq!(r.uploader.as_deref(), Some("kfo-0"));
        assert_eq!(r.kong_hash.as_ref().map(String::len), Some(32));
        let text = r.to_string();
        assert!(
            text.contains("routes=1 services=1") && text.contains("would load"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_object_means_an_empty_data_plane() {
        let r = diagnose("p/3.6.1.4/config.json", "3.6.1.4", None, now());
        assert!(!r.would_load);
        assert!(
            r.problems[0].contains("no object at p/3.6.1.4/config.json"),
            "{:?}",
            r.problems
        );
        assert!(r.to_string().contains("come up EMPTY"));
    }

    #[test]
    fn empty_invalid_or_malformed_configs_would_not_load() {
        for (body, needle) in [
            (
                r#"{"_format_version":"3.0","workspaces":[{"id":"w"}]}"#,
                "empty configuration",
            ),
            (
                r#"{"_format_version":"9.9"}"#,
                "not a configuration Kong can load",
            ),
            ("{not json", "not valid JSON"),
        ] {
            let r = diagnose("k", "3.6.1.4", Some(&obj(body, 1)), now());
            assert!(!r.would_load, "{body}");
            assert!(
                r.problems.iter().any(|p| p.contains(needle)),
                "{body}: {:?}",
                r.problems
            );
        }
    }

    #[test]
    fn s3_access_needs_a_region_and_keys_like_kong() {
        let url = StorageUrl::parse("s3://bkt/p").unwrap();
        let e = access_from_env(&url, |_| None, None, false).unwrap_err();
        assert!(e.contains("S3 region is not configured"), "{e}");
        let vars = |k: &str| match k {
            "AWS_DEFAULT_REGION" => Some("eu-west-1".to_owned()),
            "AWS_ACCESS_KEY_ID" => Some("id".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_owned()),
            "AWS_CONFIG_STORAGE_ENDPOINT" => Some("http://minio:9000/".to_owned()),
            _ => None,
        };
        let Access::S3 { settings, .. } = access_from_env(&url, vars, None, false).unwrap() else {
            panic!("not S3")
        };
        assert_eq!(settings.region, "eu-west-1");
        assert_eq!(settings.endpoint.as_deref(), Some("http://minio:9000/"));
        assert!(matches!(settings.credentials, S3Credentials::Static(_)));
    }

    #[test]
    fn s3_access_without_keys_uses_the_ambient_identity_and_half_a_key_is_refused() {
        let url = StorageUrl::parse("s3://bkt/p").unwrap();
        let region = |k: &str| (k == "AWS_REGION").then(|| "eu-west-1".to_owned());
        let Access::S3 { settings, .. } = access_from_env(&url, region, None, false).unwrap()
        else {
            panic!("not S3")
        };
        assert!(matches!(settings.credentials, S3Credentials::Ambient));
        let half = |k: &str| match k {
            "AWS_REGION" => Some("eu-west-1".to_owned()),
            "AWS_ACCESS_KEY_ID" => Some("id".to_owned()),
            _ => None,
        };
        let e = access_from_env(&url, half, None, false).unwrap_err();
        assert!(
            e.contains("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{e}"
        );
    }

    #[test]
    fn gcs_access_uses_the_service_account_or_the_ambient_identity() {
        let url = StorageUrl::parse("gcs://bkt/p").unwrap();
        let sa = |k: &str| (k == "GCP_SERVICE_ACCOUNT").then(|| "{}".to_owned());
        assert!(matches!(
            access_from_env(&url, sa, None, false).unwrap(),
            Access::Gcs {
                credentials: GcsCredentials::ServiceAccountJson(_),
                ..
            }
        ));
        assert!(matches!(
            access_from_env(&url, |_| None, None, false).unwrap(),
            Access::Gcs {
                credentials: GcsCredentials::Ambient,
                endpoint: None,
                ..
            }
        ));
    }

    #[test]
    fn gcs_access_goes_to_the_emulator_the_environment_names_unless_told_otherwise() {
        let url = StorageUrl::parse("gcs://bkt/p").unwrap();
        let vars = |k: &str| (k == "STORAGE_EMULATOR_HOST").then(|| "127.0.0.1:4443".to_owned());
        let Access::Gcs { endpoint, .. } = access_from_env(&url, vars, None, false).unwrap() else {
            panic!("not GCS")
        };
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        let Access::Gcs { endpoint, .. } =
            access_from_env(&url, vars, Some("http://other:1".into()), false).unwrap()
        else {
            panic!("not GCS")
        };
        assert_eq!(endpoint.as_deref(), Some("http://other:1"));
    }
}
