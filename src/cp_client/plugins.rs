//! The plugins announced in `basic_info`.
//!
//! A control plane withholds its configuration from a data plane that lacks a plugin it
//! has configured (KONG-PROTOCOL.md §5), and it checks only configured plugins, so
//! announcing a superset is harmless: we announce every plugin Kong bundles (open source
//! and Enterprise, across 3.x) at the data plane's core version, plus the policy's custom
//! plugins at their own versions.

use crate::kong::KongVersion;

/// Plugin names Kong Gateway bundles, open source and Enterprise, 3.2 to 3.15: the union
/// of Kong's `constants.lua` at every open source 3.x tag, the Enterprise lists
/// (`BUNDLED_EE_PLUGINS` and the distribution list) and Kong's per-release plugin lists.
/// It also keeps `app-dynamics` and `datadog-tracing`, which ship but are not always bundled.
pub const BUNDLED: &[&str] = &[
    "ace",
    "acl",
    "acme",
    "ai-a2a-proxy",
    "ai-aws-guardrails",
    "ai-azure-content-safety",
    "ai-custom-guardrail",
    "ai-gcp-model-armor",
    "ai-lakera-guard",
    "ai-llm-as-judge",
    "ai-mcp-oauth2",
    "ai-mcp-proxy",
    "ai-prompt-compressor",
    "ai-prompt-decorator",
    "ai-prompt-guard",
    "ai-prompt-template",
    "ai-proxy",
    "ai-proxy-advanced",
    "ai-rag-injector",
    "ai-rate-limiting-advanced",
    "ai-request-transformer",
    "ai-response-transformer",
    "ai-sanitizer",
    "ai-semantic-cache",
    "ai-semantic-prompt-guard",
    "ai-semantic-response-guard",
    "app-dynamics",
    "application-registration",
    "aws-lambda",
    "azure-functions",
    "basic-auth",
    "bot-detection",
    "canary",
    "confluent",
    "confluent-consume",
    "correlation-id",
    "cors",
    "datadog",
    "datadog-tracing",
    "datakit",
    "degraphql",
    "exit-transformer",
    "file-log",
    "forward-proxy",
    "graphql-proxy-cache-advanced",
    "graphql-rate-limiting-advanced",
    "grpc-gateway",
    "grpc-web",
    "header-cert-auth",
    "hmac-auth",
    "http-log",
    "injection-protection",
    "ip-restriction",
    "jq",
    "json-threat-protection",
    "jwe-decrypt",
    "jwt",
    "jwt-signer",
    "kafka-consume",
    "kafka-log",
    "kafka-upstream",
    "key-auth",
    "key-auth-enc",
    "konnect-application-auth",
    "ldap-auth",
    "ldap-auth-advanced",
    "loggly",
    "metering-and-billing",
    "mocking",
    "mtls-auth",
    "oas-validation",
    "oauth2",
    "oauth2-introspection",
    "opa",
    "openid-connect",
    "opentelemetry",
    "post-function",
    "pre-function",
    "prometheus",
    "proxy-cache",
    "proxy-cache-advanced",
    "rate-limiting",
    "rate-limiting-advanced",
    "redirect",
    "request-callout",
    "request-size-limiting",
    "request-termination",
    "request-transformer",
    "request-transformer-advanced",
    "request-validator",
    "response-ratelimiting",
    "response-transformer",
    "response-transformer-advanced",
    "route-by-header",
    "route-transformer-advanced",
    "saml",
    "service-protection",
    "session",
    "solace-consume",
    "solace-log",
    "solace-upstream",
    "standard-webhooks",
    "statsd",
    "statsd-advanced",
    "syslog",
    "tcp-log",
    "tls-handshake-modifier",
    "tls-metadata-headers",
    "udp-log",
    "upstream-oauth",
    "upstream-timeout",
    "vault-auth",
    "websocket-size-limit",
    "websocket-validator",
    "xml-threat-protection",
    "zipkin",
];

/// `(name, version)` pairs for `basic_info`: bundled plugins report Kong's core version
/// (three parts, as Enterprise does), custom plugins their own.
pub fn announced(version: &KongVersion, custom: &[(String, String)]) -> Vec<(String, String)> {
    let core = version
        .to_string()
        .split('.')
        .take(3)
        .collect::<Vec<_>>()
        .join(".");
    let mut out: Vec<(String, String)> = BUNDLED
        .iter()
        .filter(|name| !custom.iter().any(|(c, _)| c == *name))
        .map(|name| ((*name).to_owned(), core.clone()))
        .chain(custom.iter().cloned())
        .collect();
    // Kong sorts them case-insensitively by name.
    out.sort_by_key(|(name, _)| name.to_ascii_lowercase());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_plugins_report_the_three_part_core_version() {
        let v: KongVersion = "3.6.1.4".parse().unwrap();
        let a = announced(&v, &[]);
        assert_eq!(a.len(), BUNDLED.len());
        assert!(a.iter().all(|(_, ver)| ver == "3.6.1"));
        assert!(a.iter().any(|(n, _)| n == "key-auth"));
    }

    #[test]
    fn custom_plugins_are_added_and_override_a_bundled_name() {
        let v: KongVersion = "3.9.1".parse().unwrap();
        let custom = vec![
            ("my-auth".to_owned(), "1.2.0".to_owned()),
            ("cors".to_owned(), "9.0.0".to_owned()),
        ];
        let a = announced(&v, &custom);
        assert_eq!(a.len(), BUNDLED.len() + 1);
        assert!(a.contains(&("my-auth".to_owned(), "1.2.0".to_owned())));
        assert!(a.contains(&("cors".to_owned(), "9.0.0".to_owned())));
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_by_key(|n| n.to_ascii_lowercase());
        assert_eq!(names, sorted);
    }

    #[test]
    fn the_list_has_no_duplicates() {
        let mut names = BUNDLED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BUNDLED.len());
    }
}
