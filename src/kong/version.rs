//! Kong gateway versions as they appear in object keys: the node's full `kong.version`,
//! four numeric parts for Enterprise (`3.6.1.4`), three for open source (`3.9.1`).
//! A data plane imports only the key of its own identical full version.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KongVersion {
    parts: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a full Kong version: expected 3 or 4 numbers separated by dots, e.g. 3.6.1.4 (Enterprise) or 3.9.1"
)]
pub struct KongVersionError(pub String);

impl KongVersion {
    pub fn major(&self) -> u32 {
        self.parts[0]
    }
    pub fn minor(&self) -> u32 {
        self.parts[1]
    }
    /// Enterprise versions have a fourth part.
    pub fn is_enterprise(&self) -> bool {
        self.parts.len() == 4
    }
}

impl FromStr for KongVersion {
    type Err = KongVersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || KongVersionError(s.to_owned());
        let parts = s
            .split('.')
            .map(|p| {
                // NB: no leading zeros, signs or spaces: the key must equal kong.version exactly.
                if p.is_empty()
                    || (p.len() > 1 && p.starts_with('0'))
                    || !p.bytes().all(|b| b.is_ascii_digit())
                {
                    Err(err())
                } else {
                    p.parse::<u32>().map_err(|_| err())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(3..=4).contains(&parts.len()) {
            return Err(err());
        }
        Ok(KongVersion { parts })
    }
}

impl fmt::Display for KongVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.parts.iter().map(u32::to_string).collect();
        f.write_str(&s.join("."))
    }
}

/// The pod annotation that states a data plane's full Kong version when its image tag
/// does not (a digest, `latest`, a floating `3.6` tag, a private re-tag).
pub const VERSION_ANNOTATION: &str = "fallback.kong-dp.io/kong-version";

/// Why an image does not name a full Kong version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageVersionError {
    #[error(
        "image {0:?} has no tag (or only a digest); set the pod annotation {VERSION_ANNOTATION}"
    )]
    NoTag(String),
    #[error(
        "image tag {tag:?} of {image:?} does not name a full Kong version (e.g. 3.6.1.4); set the pod annotation {VERSION_ANNOTATION}"
    )]
    NotFull { image: String, tag: String },
}

/// The full Kong version an image tag names: `kong/kong-gateway:3.6.1.4` and
/// `kong/kong-gateway:3.6.1.4-ubuntu` give `3.6.1.4`, `kong:3.9.1` gives `3.9.1`.
///
/// Limits: the tag is trusted to match `kong.version` inside the image, as Kong's own
/// images do; floating tags (`3.6`, `latest`), digests and re-tagged private images carry
/// no full version, so they are refused rather than guessed.
pub fn version_from_image(image: &str) -> Result<KongVersion, ImageVersionError> {
    let no_digest = image.split('@').next().unwrap_or(image);
    // The tag follows the last ':' after the last '/' (a registry may carry a port).
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let Some((_, tag)) = last.rsplit_once(':') else {
        return Err(ImageVersionError::NoTag(image.to_owned()));
    };
    let numeric = tag.split(['-', '_']).next().unwrap_or(tag);
    numeric
        .parse::<KongVersion>()
        .map_err(|_| ImageVersionError::NotFull {
            image: image.to_owned(),
            tag: tag.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_versions_are_read_from_kong_image_tags() {
        for (image, v) in [
            ("kong/kong-gateway:3.6.1.4", "3.6.1.4"),
            ("kong/kong-gateway:3.12.0.0-ubuntu", "3.12.0.0"),
            ("kong:3.9.1", "3.9.1"),
            (
                "registry.example.com:5000/mirror/kong-gateway:3.10.0.1-rhel@sha256:abcd",
                "3.10.0.1",
            ),
        ] {
            assert_eq!(version_from_image(image).unwrap().to_string(), v, "{image}");
        }
    }

    #[test]
    fn floating_tags_digests_and_latest_are_reported_with_the_fix() {
        assert!(matches!(
            version_from_image("kong/kong-gateway"),
            Err(ImageVersionError::NoTag(_))
        ));
        assert!(matches!(
            version_from_image("registry.example.com:5000/kong-gateway@sha256:abcd"),
            Err(ImageVersionError::NoTag(_))
        ));
        for image in [
            "kong/kong-gateway:3.6",
            "kong:latest",
            "kong/kong-gateway:3.6-ubuntu",
        ] {
            let e = version_from_image(image).unwrap_err();
            assert!(matches!(e, ImageVersionError::NotFull { .. }), "{image}");
            assert!(e.to_string().contains(VERSION_ANNOTATION), "{e}");
        }
    }

    #[test]
    fn enterprise_and_open_source_versions_parse_and_print_unchanged() {
        for s in ["3.6.1.4", "3.12.0.0", "3.9.1"] {
            let v: KongVersion = s.parse().unwrap();
            assert_eq!(v.to_string(), s);
        }
        let v: KongVersion = "3.6.1.4".parse().unwrap();
        assert_eq!((v.major(), v.minor(), v.is_enterprise()), (3, 6, true));
    }

    #[test]
    fn short_or_decorated_versions_are_refused() {
        for s in [
            "3.6",
            "3",
            "3.6.1.4.5",
            "v3.6.1",
            "3.06.1",
            "3.6.x",
            "3.6.1-ubuntu",
            "",
            "3..1",
        ] {
            assert!(s.parse::<KongVersion>().is_err(), "{s}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        let a: KongVersion = "3.9.0".parse().unwrap();
        let b: KongVersion = "3.10.0".parse().unwrap();
        assert!(a < b);
    }
}
