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
    #[error(
        "image tag {tag:?} of the Kong Enterprise image {image:?} has three parts; Enterprise versions have four (e.g. 3.6.1.4): set the pod annotation {VERSION_ANNOTATION}"
    )]
    EnterpriseNeedsFour { image: String, tag: String },
    #[error(
        "image {0:?} is not one of Kong's images (kong, kong/kong, kong/kong-gateway), so its tag is not trusted to be the Kong version; set the pod annotation {VERSION_ANNOTATION}, or list the repository in spec.dataPlanes.imageRepositories"
    )]
    NotKong(String),
}

/// The repositories of Kong's own images, whose tags are the gateway's version.
const KONG_REPOSITORIES: [&str; 4] = ["kong", "library/kong", "kong/kong", "kong/kong-gateway"];

/// `image` split into (registry, path, tag): `kong/kong-gateway:3.6.1.4` is
/// (`docker.io`, `kong/kong-gateway`, `3.6.1.4`). The digest is dropped.
fn split_image(image: &str) -> (&str, &str, Option<&str>) {
    let no_digest = image.split('@').next().unwrap_or(image);
    // The tag follows the last ':' after the last '/' (a registry may carry a port).
    let slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match no_digest[slash..].rfind(':') {
        Some(i) => (&no_digest[..slash + i], Some(&no_digest[slash + i + 1..])),
        None => (no_digest, None),
    };
    // As Docker reads a reference: the first part is a registry if it has a '.' or a ':'
    // or is `localhost`.
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest, tag)
        }
        _ => ("docker.io", name, tag),
    }
}

/// The full Kong version an image tag names, when the image is one of Kong's
/// (`kong`, `kong/kong`, `kong/kong-gateway`, from any registry that keeps the path) or a
/// repository in `trusted` (`registry/path` or `path`): `kong/kong-gateway:3.6.1.4` and
/// `kong/kong-gateway:3.6.1.4-ubuntu` give `3.6.1.4`, `kong:3.9.1` gives `3.9.1`.
///
/// Limits: the tag is trusted to match `kong.version` inside the image, as Kong's own
/// images do; floating tags (`3.6`, `latest`), digests, other images and Enterprise tags
/// with three parts carry no full version, so they are refused rather than guessed.
pub fn version_from_image(
    image: &str,
    trusted: &[String],
) -> Result<KongVersion, ImageVersionError> {
    let (registry, path, tag) = split_image(image);
    let Some(tag) = tag else {
        return Err(ImageVersionError::NoTag(image.to_owned()));
    };
    let full = format!("{registry}/{path}");
    let known = KONG_REPOSITORIES.contains(&path);
    if !known && !trusted.iter().any(|t| t == path || *t == full) {
        return Err(ImageVersionError::NotKong(image.to_owned()));
    }
    let numeric = tag.split(['-', '_']).next().unwrap_or(tag);
    let version = numeric
        .parse::<KongVersion>()
        .map_err(|_| ImageVersionError::NotFull {
            image: image.to_owned(),
            tag: tag.to_owned(),
        })?;
    // NB: Enterprise's kong.version has four parts (3.6.1.4); a three-part tag of the
    // Enterprise image is a floating tag, and its key would never be read.
    if path.rsplit('/').next() == Some("kong-gateway") && !version.is_enterprise() {
        return Err(ImageVersionError::EnterpriseNeedsFour {
            image: image.to_owned(),
            tag: tag.to_owned(),
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_from_image(image: &str) -> Result<KongVersion, ImageVersionError> {
        super::version_from_image(image, &[])
    }

    #[test]
    fn full_versions_are_read_from_kong_image_tags() {
        for (image, v) in [
            ("kong/kong-gateway:3.6.1.4", "3.6.1.4"),
            ("kong/kong-gateway:3.12.0.0-ubuntu", "3.12.0.0"),
            ("kong:3.9.1", "3.9.1"),
            ("docker.io/library/kong:3.9.1", "3.9.1"),
            ("kong/kong:3.10.0", "3.10.0"),
            (
                "registry.example.com:5000/kong/kong-gateway:3.10.0.1-rhel@sha256:abcd",
                "3.10.0.1",
            ),
        ] {
            assert_eq!(version_from_image(image).unwrap().to_string(), v, "{image}");
        }
    }

    #[test]
    fn other_images_are_trusted_only_when_the_policy_names_their_repository() {
        for image in [
            "envoyproxy/envoy:1.30.0",
            "nginx:1.27.3",
            "registry.example.com:5000/mirror/kong-gateway:3.10.0.1",
            "localhost/kong-gateway:3.6.1.4",
        ] {
            assert!(
                matches!(
                    version_from_image(image),
                    Err(ImageVersionError::NotKong(_))
                ),
                "{image}"
            );
        }
        let e = version_from_image("nginx:1.27.3").unwrap_err().to_string();
        assert!(e.contains("spec.dataPlanes.imageRepositories"), "{e}");
        let trusted = [
            "registry.example.com:5000/mirror/kong-gateway".to_owned(),
            "platform/kong".to_owned(),
        ];
        let v = super::version_from_image(
            "registry.example.com:5000/mirror/kong-gateway:3.10.0.1",
            &trusted,
        );
        assert_eq!(v.unwrap().to_string(), "3.10.0.1");
        let v = super::version_from_image("platform/kong:3.9.1", &trusted);
        assert_eq!(v.unwrap().to_string(), "3.9.1");
    }

    #[test]
    fn an_enterprise_image_needs_all_four_parts() {
        for image in ["kong/kong-gateway:3.6.1", "kong/kong-gateway:3.10.0-ubuntu"] {
            assert!(
                matches!(
                    version_from_image(image),
                    Err(ImageVersionError::EnterpriseNeedsFour { .. })
                ),
                "{image}"
            );
        }
        let trusted = ["mirror.example.com/team/kong-gateway".to_owned()];
        let e = super::version_from_image("mirror.example.com/team/kong-gateway:3.6.1", &trusted);
        assert!(
            matches!(e, Err(ImageVersionError::EnterpriseNeedsFour { .. })),
            "{e:?}"
        );
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
