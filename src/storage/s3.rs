//! S3 and S3-compatible stores, through aws-sdk-s3.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// Static credentials, e.g. read from a policy's Secret. `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// How to reach one S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub region: String,
    /// S3-compatible endpoint (`AWS_CONFIG_STORAGE_ENDPOINT`); path-style addressing is
    /// used with it, as Kong does.
    pub endpoint: Option<String>,
    pub credentials: StaticCredentials,
}

/// An S3 client for `settings`. Kong always uses path-style addressing; so do we, so the
/// operator and the data planes resolve a bucket the same way on every store.
pub fn client(settings: &S3Settings) -> aws_sdk_s3::Client {
    let c = &settings.credentials;
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "kong-fallback-operator",
        ))
        .force_path_style(true);
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint.trim_end_matches('/'));
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let c = StaticCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: Some("token-value".into()),
        };
        let s = format!(
            "{:?}",
            S3Settings {
                region: "r".into(),
                endpoint: None,
                credentials: c
            }
        );
        assert!(s.contains("AKIAEXAMPLE"));
        assert!(
            !s.contains("very-secret-value") && !s.contains("token-value"),
            "{s}"
        );
    }
}
