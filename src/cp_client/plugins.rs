//! The plugins announced in `basic_info`: the plugins the data planes of that version
//! actually have, so that the control plane sends the configuration a real data plane
//! would receive.
//!
//! A control plane withholds its configuration from a data plane that lacks a plugin it
//! has configured (`check_configuration_compatibility` in Kong's
//! `kong/clustering/compat/init.lua`: "configured <name> plugin <version> is missing from
//! data plane"), and Kong Enterprise with `allow_inconsistent_data_plane_plugins = on`
//! instead strips such plugins from the payload. Announcing more than the data planes have
//! would make the control plane send a configuration they cannot load. So we announce
//! Kong's bundled plugins and the policy's custom plugins, narrowed by the data planes'
//! own `KONG_PLUGINS` where they set it, and the exporter refuses a configuration that
//! names any other plugin ([`missing`]).
//!
//! Bundled plugins are announced per version ([`bundled_at`]): a 3.4 data plane has no
//! `ai-proxy`, an open-source one no Enterprise plugin.

use std::collections::BTreeSet;

use crate::kong::KongVersion;

/// Which builds of Kong bundle a plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edition {
    /// Open source and Enterprise.
    Both,
    /// Enterprise only (four-part versions).
    Enterprise,
}

/// A plugin Kong bundles (the `bundled` of Kong's `plugins` setting), from minor version
/// `since` until before `removed`.
#[derive(Clone, Copy, Debug)]
pub struct Bundled {
    pub name: &'static str,
    pub since: (u32, u32),
    pub removed: Option<(u32, u32)>,
    pub edition: Edition,
}

/// Kong Gateway's bundled plugins, 3.0 to 3.14. Open source: `kong/constants.lua` at each
/// 3.x tag. Enterprise: the plugin lists of Kong EE's `kong/enterprise_edition/constants.lua`
/// and `distribution/distributions_constants.lua` (public branch `FTI-6378`, to 3.10) and
/// the "New plugins" of Kong's Enterprise changelog after that, cross-checked against the
/// plugin docs' minimum versions. `app-dynamics` ships but is not in `bundled` (it needs
/// setup on the host): list it in `spec.exporter.plugins` and the pods' `KONG_PLUGINS`.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        name: "ace",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "acl",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "acme",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-a2a-proxy",
        since: (3, 14),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-aws-guardrails",
        since: (3, 11),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-azure-content-safety",
        since: (3, 7),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-custom-guardrail",
        since: (3, 14),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-gcp-model-armor",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-lakera-guard",
        since: (3, 13),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-llm-as-judge",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-mcp-oauth2",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-mcp-proxy",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-prompt-compressor",
        since: (3, 11),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-prompt-decorator",
        since: (3, 6),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-prompt-guard",
        since: (3, 6),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-prompt-template",
        since: (3, 6),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-proxy",
        since: (3, 6),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-proxy-advanced",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-rag-injector",
        since: (3, 10),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-rate-limiting-advanced",
        since: (3, 7),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-request-transformer",
        since: (3, 6),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-response-transformer",
        since: (3, 6),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ai-sanitizer",
        since: (3, 10),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-semantic-cache",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-semantic-prompt-guard",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ai-semantic-response-guard",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "application-registration",
        since: (3, 0),
        removed: Some((3, 5)),
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "aws-lambda",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "azure-functions",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "basic-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "bot-detection",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "canary",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "confluent",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "confluent-consume",
        since: (3, 10),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "correlation-id",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "cors",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "datadog",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "datadog-tracing",
        since: (3, 2),
        removed: Some((3, 3)),
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "datakit",
        since: (3, 11),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "degraphql",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "exit-transformer",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "file-log",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "forward-proxy",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "graphql-proxy-cache-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "graphql-rate-limiting-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "grpc-gateway",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "grpc-web",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "header-cert-auth",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "hmac-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "http-log",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "injection-protection",
        since: (3, 9),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ip-restriction",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "jq",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "json-threat-protection",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "jwe-decrypt",
        since: (3, 1),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "jwt",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "jwt-signer",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "kafka-consume",
        since: (3, 10),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "kafka-log",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "kafka-upstream",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "key-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "key-auth-enc",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "konnect-application-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "ldap-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "ldap-auth-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "loggly",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "metering-and-billing",
        since: (3, 14),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "mocking",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "mtls-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "oas-validation",
        since: (3, 1),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "oauth2",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "oauth2-introspection",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "opa",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "openid-connect",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "opentelemetry",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "post-function",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "pre-function",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "prometheus",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "proxy-cache",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "proxy-cache-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "rate-limiting",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "rate-limiting-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "redirect",
        since: (3, 9),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "request-callout",
        since: (3, 10),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "request-size-limiting",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "request-termination",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "request-transformer",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "request-transformer-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "request-validator",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "response-ratelimiting",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "response-transformer",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "response-transformer-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "route-by-header",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "route-transformer-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "saml",
        since: (3, 1),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "service-protection",
        since: (3, 9),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "session",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "solace-consume",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "solace-log",
        since: (3, 12),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "solace-upstream",
        since: (3, 11),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "standard-webhooks",
        since: (3, 8),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "statsd",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "statsd-advanced",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "syslog",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "tcp-log",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "tls-handshake-modifier",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "tls-metadata-headers",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "udp-log",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
    Bundled {
        name: "upstream-oauth",
        since: (3, 8),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "upstream-timeout",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "vault-auth",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "websocket-size-limit",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "websocket-validator",
        since: (3, 0),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "xml-threat-protection",
        since: (3, 1),
        removed: None,
        edition: Edition::Enterprise,
    },
    Bundled {
        name: "zipkin",
        since: (3, 0),
        removed: None,
        edition: Edition::Both,
    },
];

/// The bundled plugins of a Kong `version` (its edition and minor version).
pub fn bundled_at(version: &KongVersion) -> impl Iterator<Item = &'static str> + '_ {
    let minor = (version.major(), version.minor());
    BUNDLED
        .iter()
        .filter(move |b| {
            b.since <= minor
                && b.removed.is_none_or(|r| minor < r)
                && (b.edition == Edition::Both || version.is_enterprise())
        })
        .map(|b| b.name)
}

/// Whether `name` is a plugin Kong bundles in some version.
fn is_bundled(name: &str) -> bool {
    BUNDLED.iter().any(|b| b.name == name)
}

/// The plugins a data plane's `KONG_PLUGINS` (Kong's `plugins` setting) enables, among
/// `candidates`: a comma-separated list where `bundled` stands for Kong's bundled plugins
/// and `off` for none (Kong's `conf_loader`).
pub fn enabled_by(kong_plugins: &str, candidates: &BTreeSet<String>) -> BTreeSet<String> {
    let listed: Vec<&str> = kong_plugins
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if listed.contains(&"off") {
        return BTreeSet::new();
    }
    let bundled = listed.contains(&"bundled");
    candidates
        .iter()
        .filter(|name| listed.contains(&name.as_str()) || (bundled && is_bundled(name)))
        .cloned()
        .collect()
}

/// The configured plugins of a configuration that the data planes lack. Empty when all
/// are announced.
pub fn missing<'a>(configured: &'a [String], announced: &[(String, String)]) -> Vec<&'a str> {
    configured
        .iter()
        .filter(|name| !announced.iter().any(|(n, _)| n == *name))
        .map(String::as_str)
        .collect()
}

/// `(name, version)` pairs for `basic_info`: bundled plugins report Kong's core version
/// (three parts, as Enterprise does), custom plugins their own; with `only` (the plugins
/// the data planes enable, from their `KONG_PLUGINS`), nothing else.
pub fn announced(
    version: &KongVersion,
    custom: &[(String, String)],
    only: Option<&BTreeSet<String>>,
) -> Vec<(String, String)> {
    let core = version
        .to_string()
        .split('.')
        .take(3)
        .collect::<Vec<_>>()
        .join(".");
    let mut out: Vec<(String, String)> = bundled_at(version)
        .filter(|name| !custom.iter().any(|(c, _)| c == name))
        .map(|name| (name.to_owned(), core.clone()))
        .chain(custom.iter().cloned())
        .filter(|(name, _)| only.is_none_or(|o| o.contains(name)))
        .collect();
    // Kong sorts them case-insensitively by name.
    out.sort_by_key(|(name, _)| name.to_ascii_lowercase());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KongVersion {
        s.parse().unwrap()
    }

    fn names(a: &[(String, String)]) -> Vec<&str> {
        a.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn bundled_plugins_report_the_three_part_core_version() {
        let a = announced(&v("3.6.1.4"), &[], None);
        assert_eq!(a.len(), bundled_at(&v("3.6.1.4")).count());
        assert!(a.iter().all(|(_, ver)| ver == "3.6.1"));
        assert!(names(&a).contains(&"key-auth"));
    }

    #[test]
    fn each_version_announces_what_it_bundles() {
        // ai-proxy arrived in 3.6 (open source and Enterprise), confluent in 3.8 (Enterprise).
        let at = |version: &str| announced(&v(version), &[], None);
        assert!(!names(&at("3.4.3.12")).contains(&"ai-proxy"));
        assert!(names(&at("3.6.1.4")).contains(&"ai-proxy"));
        assert!(names(&at("3.6.1")).contains(&"ai-proxy"));
        assert!(!names(&at("3.7.1.0")).contains(&"confluent"));
        assert!(names(&at("3.8.0.0")).contains(&"confluent"));
        // Open source has no Enterprise plugin.
        let oss = at("3.9.1");
        assert!(names(&oss).contains(&"redirect"));
        assert!(!names(&oss).contains(&"openid-connect"));
        assert!(names(&at("3.9.1.0")).contains(&"openid-connect"));
        // Removed ones are gone: datadog-tracing shipped in 3.2 only.
        assert!(names(&at("3.2.1.0")).contains(&"datadog-tracing"));
        assert!(!names(&at("3.3.0.0")).contains(&"datadog-tracing"));
    }

    #[test]
    fn custom_plugins_are_added_and_override_a_bundled_name() {
        let custom = vec![
            ("my-auth".to_owned(), "1.2.0".to_owned()),
            ("cors".to_owned(), "9.0.0".to_owned()),
        ];
        let a = announced(&v("3.9.1"), &custom, None);
        assert_eq!(a.len(), bundled_at(&v("3.9.1")).count() + 1);
        assert!(a.contains(&("my-auth".to_owned(), "1.2.0".to_owned())));
        assert!(a.contains(&("cors".to_owned(), "9.0.0".to_owned())));
        let listed = names(&a);
        let mut sorted = listed.clone();
        sorted.sort_by_key(|n| n.to_ascii_lowercase());
        assert_eq!(listed, sorted);
    }

    #[test]
    fn kong_plugins_narrow_what_is_announced() {
        let version = v("3.6.1.4");
        let custom = vec![("my-auth".to_owned(), "1.0.0".to_owned())];
        let candidates: BTreeSet<String> = announced(&version, &custom, None)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let only = enabled_by("key-auth, rate-limiting,my-auth", &candidates);
        assert_eq!(
            only.iter().map(String::as_str).collect::<Vec<_>>(),
            ["key-auth", "my-auth", "rate-limiting"]
        );
        let a = announced(&version, &custom, Some(&only));
        assert_eq!(a.len(), 3);
        // bundled keeps every bundled plugin; a custom one must be listed too.
        let bundled = enabled_by("bundled", &candidates);
        assert_eq!(bundled.len(), bundled_at(&version).count());
        assert!(!bundled.contains("my-auth"));
        assert!(enabled_by("bundled,my-auth", &candidates).contains("my-auth"));
        assert!(enabled_by("off", &candidates).is_empty());
        let configured = vec!["acl".to_owned(), "key-auth".to_owned()];
        assert_eq!(missing(&configured, &a), ["acl"]);
    }

    #[test]
    fn the_list_has_no_duplicates_and_sane_ranges() {
        let mut names: Vec<&str> = BUNDLED.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BUNDLED.len());
        for b in BUNDLED {
            assert!(b.removed.is_none_or(|r| b.since < r), "{}", b.name);
        }
    }
}
