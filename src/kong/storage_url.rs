//! `cluster_fallback_config_storage` URLs and the object keys Kong derives from them.
//!
//! Kong accepts `s3://bucket/prefix` and `gcs://bucket/prefix`; any other scheme is a
//! configuration error on the node. Keys are `<prefix>/<version>/config.json` (and
//! `.../election/...`) with the path's leading `/` dropped and duplicate slashes collapsed,
//! the way Kong's URI normaliser does it. We are stricter than Kong where Kong would read
//! the URL differently from us, and refuse:
//! - an **empty prefix** (`s3://bucket`, `s3://bucket/`): Kong parses the URL with
//!   LuaSocket's `socket.url.parse` (`src/url.lua` in lunarmodules/luasocket); without a path
//!   its storage strategy fails at start, and with a bare `/` the key keeps a leading slash
//!   (`/3.6.1.4/config.json`) that no importer reads;
//! - a query, a fragment, `;params`, credentials or a port, which LuaSocket splits off the
//!   path or host, so Kong would look under another bucket or prefix;
//! - `.` and `..` segments and `%XX` escapes, which URL normalisers resolve or decode and
//!   S3 and GCS keep literally: the same prefix could name two different keys;
//! - any other character outside `A-Z a-z 0-9 . _ - ~`.

use std::fmt;

/// Which object store a storage URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Amazon S3 or any S3-compatible store (`s3://`).
    S3,
    /// Google Cloud Storage (`gcs://`).
    Gcs,
}

impl Provider {
    pub fn scheme(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
        }
    }
}

/// A parsed `s3://bucket/prefix` or `gcs://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageUrl {
    pub provider: Provider,
    pub bucket: String,
    /// Normalised: no leading or trailing `/`, no empty segments; never empty.
    pub prefix: String,
}

/// Why a storage URL was refused; the message says what a valid one looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageUrlError {
    #[error("storage URL must start with s3:// or gcs:// (got {0:?})")]
    Scheme(String),
    #[error(
        "storage URL {0:?} has no bucket: expected s3://<bucket>/<prefix> or gcs://<bucket>/<prefix>"
    )]
    MissingBucket(String),
    #[error("storage URL {url:?} has an invalid bucket name {bucket:?}: {why}")]
    Bucket {
        url: String,
        bucket: String,
        why: &'static str,
    },
    #[error(
        "storage URL {0:?} must not contain a query, a fragment, credentials or a port: Kong would fold them into the bucket or prefix"
    )]
    Extra(String),
    #[error("storage URL {0:?} contains whitespace or control characters")]
    Whitespace(String),
    #[error(
        "storage URL {0:?} has no prefix: use s3://<bucket>/<prefix> (e.g. s3://bucket/kong); Kong cannot use a bucket's root (without a path its storage strategy fails at start, and with a bare \"/\" it looks for /<version>/config.json)"
    )]
    EmptyPrefix(String),
    #[error("storage URL {url:?} has an invalid prefix segment {segment:?}: {why}")]
    Prefix {
        url: String,
        segment: String,
        why: &'static str,
    },
}

impl StorageUrl {
    pub fn parse(url: &str) -> Result<Self, StorageUrlError> {
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StorageUrlError::Whitespace(url.to_owned()));
        }
        let (provider, rest) = if let Some(rest) = url.strip_prefix("s3://") {
            (Provider::S3, rest)
        } else if let Some(rest) = url.strip_prefix("gcs://") {
            (Provider::Gcs, rest)
        } else {
            return Err(StorageUrlError::Scheme(url.to_owned()));
        };
        if rest.contains(['?', '#', '@', ';']) {
            return Err(StorageUrlError::Extra(url.to_owned()));
        }
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageUrlError::MissingBucket(url.to_owned()));
        }
        if bucket.contains(':') {
            return Err(StorageUrlError::Extra(url.to_owned()));
        }
        if let Err(why) = check_bucket(bucket) {
            return Err(StorageUrlError::Bucket {
                url: url.to_owned(),
                bucket: bucket.to_owned(),
                why,
            });
        }
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            if let Err(why) = check_segment(segment) {
                return Err(StorageUrlError::Prefix {
                    url: url.to_owned(),
                    segment: segment.to_owned(),
                    why,
                });
            }
        }
        let prefix = join_segments([path]);
        if prefix.is_empty() {
            return Err(StorageUrlError::EmptyPrefix(url.to_owned()));
        }
        Ok(StorageUrl {
            provider,
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// `<prefix>/<version>/config.json`: the object a Kong node of `version` imports.
    pub fn config_key(&self, version: &str) -> String {
        join_segments([self.prefix.as_str(), version, "config.json"])
    }

    /// `<prefix>/<version>/election/`: where Kong 3.6+ exporters register for the election.
    pub fn election_prefix(&self, version: &str) -> String {
        let mut p = join_segments([self.prefix.as_str(), version, "election"]);
        p.push('/');
        p
    }
}

impl StorageUrl {
    /// `<prefix>/<version>/history/`: the operator's bounded history of exported configs.
    pub fn history_prefix(&self, version: &str) -> String {
        let mut p = join_segments([self.prefix.as_str(), version, "history"]);
        p.push('/');
        p
    }
}

impl fmt::Display for StorageUrl {
    /// The canonical form, as injected into `KONG_CLUSTER_FALLBACK_CONFIG_STORAGE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}",
            self.provider.scheme(),
            self.bucket,
            self.prefix
        )
    }
}

/// Joins path parts with `/`, dropping empty segments: Kong's `prefix/version/config.json`
/// with the leading slash removed and duplicate slashes collapsed.
fn join_segments<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts
        .into_iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// One `/`-separated segment of the prefix: characters every URL parser, normaliser and
/// object store reads the same way, and not a dot segment.
fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment == "." || segment == ".." {
        return Err(
            "\".\" and \"..\" segments are resolved by URL normalisers but kept by the store",
        );
    }
    if segment.contains('%') {
        return Err("%XX escapes are decoded by URL normalisers but kept by the store");
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'))
    {
        return Err("a prefix has only letters, digits, '.', '_', '-', '~' and '/'");
    }
    Ok(())
}

/// The rules S3 and GCS share for bucket names (3–63 chars here; GCS allows longer dotted
/// names, which we refuse rather than half-support).
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("a bucket name has only lowercase letters, digits, '-', '_' and '.'");
    }
    let first = bucket.as_bytes()[0];
    let last = bucket.as_bytes()[bucket.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("a bucket name starts and ends with a letter or a digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_url_with_prefix() {
        let u = StorageUrl::parse("s3://test-bucket/test-prefix").unwrap();
        assert_eq!(u.provider, Provider::S3);
        assert_eq!(u.bucket, "test-bucket");
        assert_eq!(u.prefix, "test-prefix");
        assert_eq!(u.config_key("3.6.0.0"), "test-prefix/3.6.0.0/config.json");
    }

    #[test]
    fn trailing_and_duplicate_slashes_are_collapsed_like_kong() {
        let u = StorageUrl::parse("s3://bucket/prefix/").unwrap();
        assert_eq!(u.config_key("3.6.0.0"), "prefix/3.6.0.0/config.json");
        let u = StorageUrl::parse("gcs://bucket//a//b///").unwrap();
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.config_key("3.12.0.0"), "a/b/3.12.0.0/config.json");
        assert_eq!(u.to_string(), "gcs://bucket/a/b");
    }

    #[test]
    fn an_empty_prefix_is_refused_because_kong_cannot_use_the_bucket_root() {
        for url in [
            "s3://bucket",
            "s3://bucket/",
            "s3://bucket//",
            "gcs://bucket/",
        ] {
            let err = StorageUrl::parse(url).unwrap_err();
            assert_eq!(err, StorageUrlError::EmptyPrefix(url.to_owned()), "{url}");
            assert!(err.to_string().contains("s3://<bucket>/<prefix>"), "{err}");
        }
    }

    #[test]
    fn prefixes_kong_would_read_differently_are_refused() {
        for url in [
            "s3://bucket/./kong",
            "s3://bucket/kong/..",
            "s3://bucket/a/../b",
            "s3://bucket/a%20b",
            "s3://bucket/a%2Fb",
            "s3://bucket/kong;type=a",
            "s3://bucket/k\\ong",
            "s3://bucket/k'ong",
            "gcs://bucket/kong/*",
        ] {
            let err = StorageUrl::parse(url).unwrap_err();
            assert!(
                matches!(
                    err,
                    StorageUrlError::Prefix { .. } | StorageUrlError::Extra(_)
                ),
                "{url}: {err}"
            );
        }
        // Dots inside a segment are ordinary characters.
        let u = StorageUrl::parse("s3://bucket/kong.v1/.cfg/...").unwrap();
        assert_eq!(
            u.config_key("3.6.1.4"),
            "kong.v1/.cfg/.../3.6.1.4/config.json"
        );
        let u = StorageUrl::parse("s3://bucket/a_b-c~d").unwrap();
        assert_eq!(u.to_string(), "s3://bucket/a_b-c~d");
    }

    #[test]
    fn election_prefix_ends_with_a_slash() {
        let u = StorageUrl::parse("gcs://b-1/kong/").unwrap();
        assert_eq!(u.election_prefix("3.6.0.0"), "kong/3.6.0.0/election/");
    }

    #[test]
    fn unknown_scheme_is_refused() {
        for url in [
            "http://bucket/p",
            "S3://bucket/p",
            "gs://bucket/p",
            "bucket/p",
            "",
        ] {
            assert!(
                matches!(StorageUrl::parse(url), Err(StorageUrlError::Scheme(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn missing_bucket_is_refused() {
        for url in ["s3://", "s3:///prefix", "gcs:///"] {
            assert_eq!(
                StorageUrl::parse(url),
                Err(StorageUrlError::MissingBucket(url.to_owned()))
            );
        }
    }

    #[test]
    fn bad_bucket_names_are_refused_with_the_rule() {
        for url in [
            "s3://ab/p",
            "s3://Upper/p",
            "s3://-dash/p",
            "s3://dot./p",
            "s3://a b/p",
        ] {
            let err = StorageUrl::parse(url).unwrap_err();
            assert!(
                matches!(
                    err,
                    StorageUrlError::Bucket { .. } | StorageUrlError::Whitespace(_)
                ),
                "{url}: {err}"
            );
        }
        let msg = StorageUrl::parse("s3://ab/p").unwrap_err().to_string();
        assert!(msg.contains("3 to 63"), "{msg}");
    }

    #[test]
    fn query_fragment_credentials_and_port_are_refused() {
        for url in [
            "s3://bucket/p?x=1",
            "s3://bucket/p#f",
            "s3://user@bucket/p",
            "s3://bucket:9000/p",
        ] {
            assert_eq!(
                StorageUrl::parse(url),
                Err(StorageUrlError::Extra(url.to_owned())),
                "{url}"
            );
        }
    }
}
