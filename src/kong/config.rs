//! Kong's declarative configuration document (`config_table`, the content of
//! `config.json`) and Kong's configuration hash.
//!
//! The hash follows Kong's `config_helper.lua` (KONG-PROTOCOL.md §6): a custom serializer
//! (sorted object keys, `%.14g` numbers, `/null/`, `{}` for empty tables, the `;` quirk of
//! arrays with six or more elements, and the rolling MD5 compaction of a buffer over
//! 1,000,000 bytes), MD5 per entity group, then MD5 over the concatenation. A data plane
//! that imports `config.json` computes this hash itself, so `doctor` and the CP test double
//! use it; the exporter keeps the CP's `config_hash` verbatim.

use md5::{Digest, Md5};
use serde_json::{Map, Value};

/// `DECLARATIVE_EMPTY_CONFIG_HASH`: what Kong reports when it has no configuration.
pub const EMPTY_CONFIG_HASH: &str = "00000000000000000000000000000000";

/// The entity groups hashed on their own, in the order they are concatenated.
const GROUPS: [&str; 5] = ["routes", "services", "plugins", "upstreams", "targets"];

/// Kong's buffer compaction threshold.
const COMPACT_AT: usize = 1_000_000;

/// Kong's per-group hashes of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigHashes {
    pub config: String,
    pub routes: String,
    pub services: String,
    pub plugins: String,
    pub upstreams: String,
    pub targets: String,
}

/// Kong's `calculate_config_hash` for a `config_table`.
pub fn config_hashes(config: &Value) -> ConfigHashes {
    let Value::Object(table) = config else {
        let h = hash_value(Some(config));
        return ConfigHashes {
            config: h,
            routes: EMPTY_CONFIG_HASH.into(),
            services: EMPTY_CONFIG_HASH.into(),
            plugins: EMPTY_CONFIG_HASH.into(),
            upstreams: EMPTY_CONFIG_HASH.into(),
            targets: EMPTY_CONFIG_HASH.into(),
        };
    };
    let [routes, services, plugins, upstreams, targets] = GROUPS.map(|g| hash_value(table.get(g)));
    let mut rest: Map<String, Value> = table.clone();
    for g in GROUPS {
        rest.remove(g);
    }
    // NB: Kong Enterprise also hashes `custom_plugins` on its own, before the rest; that
    // detail comes from the EE diff and is unverified against a running EE node.
    let custom = rest.remove("custom_plugins").map(|v| hash_value(Some(&v)));
    let rest = hash_value(Some(&Value::Object(rest)));
    let mut all = String::with_capacity(7 * 32);
    for h in [&routes, &services, &plugins, &upstreams, &targets] {
        all.push_str(h);
    }
    if let Some(c) = &custom {
        all.push_str(c);
    }
    all.push_str(&rest);
    ConfigHashes {
        config: md5_hex(all.as_bytes()),
        routes,
        services,
        plugins,
        upstreams,
        targets,
    }
}

/// `h(x)`: 32 zeros for an absent value, else the MD5 of its serialization.
fn hash_value(v: Option<&Value>) -> String {
    match v {
        None => EMPTY_CONFIG_HASH.to_owned(),
        Some(v) => {
            let mut buf = Vec::new();
            serialize(v, &mut buf);
            md5_hex(&buf)
        }
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Kong's serializer. The compaction check runs on entry for every value, as in Kong.
fn serialize(v: &Value, buf: &mut Vec<u8>) {
    if buf.len() > COMPACT_AT {
        let digest = Md5::digest(&buf[..]);
        buf.clear();
        buf.extend_from_slice(&digest);
    }
    match v {
        Value::Null => buf.extend_from_slice(b"/null/"),
        Value::Bool(b) => buf.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => buf.extend_from_slice(format_g14(n.as_f64().unwrap_or(0.0)).as_bytes()),
        Value::String(s) => buf.extend_from_slice(s.as_bytes()),
        Value::Array(items) if items.is_empty() => buf.extend_from_slice(b"{}"),
        Value::Object(map) if map.is_empty() => buf.extend_from_slice(b"{}"),
        Value::Array(items) => {
            let trailing = items.len() > 5;
            for (i, item) in items.iter().enumerate() {
                if i > 0 && !trailing {
                    buf.push(b';');
                }
                serialize(item, buf);
                if trailing {
                    buf.push(b';');
                }
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for k in keys {
                buf.extend_from_slice(k.as_bytes());
                buf.push(b':');
                serialize(&map[k.as_str()], buf);
                buf.push(b';');
            }
        }
    }
}

/// C's `%.14g`: 14 significant digits, trailing zeros removed, scientific notation when the
/// exponent is below -4 or at least 14 (LuaJIT's number formatting in Kong's serializer).
pub fn format_g14(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // Rounded to 14 significant digits: d.ddddddddddddde<exp>.
    let sci = format!("{x:.13e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..14).contains(&exp) {
        let m = trim_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (13 - exp).max(0) as usize;
        trim_zeros(&format!("{x:.decimals$}")).to_owned()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// What is wrong with a configuration document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the configuration is not a JSON object")]
    NotAnObject,
    #[error("_format_version is {0:?}; Kong accepts 1.1, 2.1 and 3.0")]
    FormatVersion(String),
    #[error("_format_version is missing")]
    MissingFormatVersion,
    #[error("entity set {0:?} is not an array of objects")]
    EntitySet(String),
}

/// A validated configuration: the checks a data plane's import would trip over.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSummary {
    pub format_version: String,
    /// Row counts per entity set with at least one row, sorted by name.
    pub entities: Vec<(String, usize)>,
    /// The names of the configured plugins (the `name` of each `plugins` row), sorted and
    /// unique: what a data plane must have to load the configuration.
    pub plugins: Vec<String>,
}

impl ConfigSummary {
    /// True when a data plane loading it would serve nothing: no rows outside
    /// `workspaces` and `parameters` (Kong itself reports the empty hash then).
    pub fn is_empty(&self) -> bool {
        self.entities
            .iter()
            .all(|(name, _)| name == "workspaces" || name == "parameters")
    }

    pub fn count(&self, entity: &str) -> usize {
        self.entities
            .iter()
            .find(|(n, _)| n == entity)
            .map_or(0, |(_, c)| *c)
    }
}

/// Checks the document's shape: an object with a supported `_format_version` whose
/// entity sets are arrays of objects. Keys starting with `_` are metadata.
pub fn validate_config(config: &Value) -> Result<ConfigSummary, ConfigError> {
    let Value::Object(table) = config else {
        return Err(ConfigError::NotAnObject);
    };
    let format_version = match table.get("_format_version") {
        Some(Value::String(v)) if matches!(v.as_str(), "1.1" | "2.1" | "3.0") => v.clone(),
        Some(Value::String(v)) => return Err(ConfigError::FormatVersion(v.clone())),
        Some(other) => return Err(ConfigError::FormatVersion(other.to_string())),
        None => return Err(ConfigError::MissingFormatVersion),
    };
    let mut entities = Vec::new();
    let mut plugins = std::collections::BTreeSet::new();
    for (name, value) in table {
        if name.starts_with('_') {
            continue;
        }
        if name == "plugins"
            && let Value::Array(rows) = value
        {
            plugins.extend(
                rows.iter()
                    .filter_map(|r| r.get("name")?.as_str().map(str::to_owned)),
            );
        }
        match value {
            Value::Array(rows) if rows.iter().all(Value::is_object) => {
                if !rows.is_empty() {
                    entities.push((name.clone(), rows.len()));
                }
            }
            // NB: Kong encodes an empty set as {} in places (cjson's empty table).
            Value::Object(m) if m.is_empty() => {}
            _ => return Err(ConfigError::EntitySet(name.clone())),
        }
    }
    entities.sort();
    Ok(ConfigSummary {
        format_version,
        entities,
        plugins: plugins.into_iter().collect(),
    })
}

/// [`validate_config`] on the JSON text, without building a document tree: the same
/// checks and counts in one streaming pass, so a 50 MB configuration costs no more memory
/// than its text.
pub fn validate_config_text(json: &str) -> Result<ConfigSummary, ConfigError> {
    use serde::de::Deserializer;
    let mut de = serde_json::Deserializer::from_str(json);
    let summary = de
        .deserialize_any(TableVisitor)
        .map_err(|e| parse_error(&e))?;
    de.end().map_err(|e| parse_error(&e))?;
    summary
}

/// [`validate_config_text`] as a value inside a larger document: deserializing one runs the
/// same checks on the configuration wherever it sits (the control plane's envelope), in the
/// same single pass as the document around it. A configuration that is valid JSON but the
/// wrong shape fails to deserialize; [`validate_config_text`] on its text then says why.
pub struct CheckedConfig(pub Result<ConfigSummary, ConfigError>);

impl<'de> serde::Deserialize<'de> for CheckedConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TableVisitor).map(CheckedConfig)
    }
}

fn parse_error(e: &serde_json::Error) -> ConfigError {
    // NB: our visitors report shape errors as custom messages; keep their variant.
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("entity set ") {
        let name = rest.split('"').nth(1).unwrap_or_default();
        return ConfigError::EntitySet(name.to_owned());
    }
    ConfigError::NotAnObject
}

struct TableVisitor;

impl<'de> serde::de::Visitor<'de> for TableVisitor {
    type Value = Result<ConfigSummary, ConfigError>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a declarative configuration object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::{Error, IgnoredAny};
        let mut format_version: Option<Result<String, String>> = None;
        let mut entities = Vec::new();
        let mut plugins = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "_format_version" {
                let v: Value = map.next_value()?;
                format_version = Some(match v {
                    Value::String(s) => Ok(s),
                    other => Err(other.to_string()),
                });
            } else if key.starts_with('_') {
                map.next_value::<IgnoredAny>()?;
            } else if key == "plugins" {
                let rows = map.next_value::<PluginSet>().map_err(|_| {
                    A::Error::custom(format!("entity set {key:?} is not an array of objects"))
                })?;
                if rows.count > 0 {
                    entities.push((key.into_owned(), rows.count));
                }
                plugins.extend(rows.names);
            } else {
                let rows = map.next_value::<EntitySet>().map_err(|_| {
                    A::Error::custom(format!("entity set {key:?} is not an array of objects"))
                })?;
                if rows.0 > 0 {
                    entities.push((key.into_owned(), rows.0));
                }
            }
        }
        let format_version = match format_version {
            None => return Ok(Err(ConfigError::MissingFormatVersion)),
            Some(Ok(v)) if matches!(v.as_str(), "1.1" | "2.1" | "3.0") => v,
            Some(Ok(v)) | Some(Err(v)) => return Ok(Err(ConfigError::FormatVersion(v))),
        };
        entities.sort();
        Ok(Ok(ConfigSummary {
            format_version,
            entities,
            plugins: plugins.into_iter().collect(),
        }))
    }
}

/// An entity set: an array of objects (counted), or `{}` for an empty one.
struct EntitySet(usize);

impl<'de> serde::Deserialize<'de> for EntitySet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EntitySet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of objects")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EntitySet, A::Error> {
                let mut n = 0;
                while seq.next_element::<Row>()?.is_some() {
                    n += 1;
                }
                Ok(EntitySet(n))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<EntitySet, A::Error> {
                match map.next_key::<serde::de::IgnoredAny>()? {
                    None => Ok(EntitySet(0)),
                    Some(_) => Err(serde::de::Error::custom("not an array")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The `plugins` entity set: rows counted, each row's `name` kept.
struct PluginSet {
    count: usize,
    names: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for PluginSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PluginSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of objects")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PluginSet, A::Error> {
                let mut set = PluginSet {
                    count: 0,
                    names: Vec::new(),
                };
                while let Some(row) = seq.next_element::<PluginRow>()? {
                    set.count += 1;
                    set.names.extend(row.0);
                }
                Ok(set)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PluginSet, A::Error> {
                match map.next_key::<serde::de::IgnoredAny>()? {
                    None => Ok(PluginSet {
                        count: 0,
                        names: Vec::new(),
                    }),
                    Some(_) => Err(serde::de::Error::custom("not an array")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One plugin row: its `name` (when a string), the rest skipped.
struct PluginRow(Option<String>);

impl<'de> serde::Deserialize<'de> for PluginRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PluginRow;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PluginRow, A::Error> {
                let mut name = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "name" {
                        name = match map.next_value::<Value>()? {
                            Value::String(s) => Some(s),
                            _ => None,
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(PluginRow(name))
            }
        }
        d.deserialize_map(V)
    }
}

/// One row: any object, skipped without allocation.
///
/// NB: taken as serde_json's raw text and checked by its first byte: the skip is
/// serde_json's fast one and no visitor runs per field (a sixth faster than visiting each
/// entry). Only serde_json deserializes configurations here.
struct Row;

impl<'de> serde::Deserialize<'de> for Row {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de serde_json::value::RawValue>::deserialize(d)?;
        if raw.get().starts_with('{') {
            Ok(Row)
        } else {
            Err(serde::de::Error::custom("a row is not an object"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_streaming_check_agrees_with_the_tree_check() {
        for doc in [
            json!({"_format_version": "3.0", "_transform": false, "services": [{"id": "s"}], "routes": [{}, {}], "plugins": [], "vaults": {}}),
            json!({"_format_version": "3.0", "plugins": [{"name": "key-auth", "config": {"name": "x"}}, {"name": "acl"}, {"name": "key-auth"}, {"id": "p"}]}),
            json!({"_format_version": "3.0", "plugins": {}}),
            json!({"_format_version": "3.0", "workspaces": [{"id": "w"}]}),
            json!([]),
            json!({"services": []}),
            json!({"_format_version": "4.0"}),
            json!({"_format_version": 3}),
            json!({"_format_version": "3.0", "services": [1]}),
            json!({"_format_version": "3.0", "services": [{"id": "s"}, "x"]}),
            json!({"_format_version": "3.0", "routes": [null]}),
            json!({"_format_version": "3.0", "routes": [[{"id": "r"}]]}),
            json!({"_format_version": "3.0", "routes": [{"paths": ["/a\"}"], "x": {"y": [1, {}]}}]}),
            json!({"_format_version": "3.0", "services": "x"}),
            json!({"_format_version": "3.0", "services": {"a": 1}}),
        ] {
            let text = doc.to_string();
            assert_eq!(validate_config_text(&text), validate_config(&doc), "{text}");
        }
        assert!(validate_config_text("{not json").is_err());
    }

    #[test]
    fn the_names_of_configured_plugins_are_collected() {
        let text = r#"{"_format_version":"3.0","plugins":[{"name":"key-auth","config":{"name":"x"}},{"name":"acl"},{"name":"key-auth"},{"id":"p"}]}"#;
        let s = validate_config_text(text).unwrap();
        assert_eq!(s.plugins, ["acl", "key-auth"]);
        assert_eq!(s.count("plugins"), 4);
    }

    fn serialized(v: &Value) -> String {
        let mut buf = Vec::new();
        serialize(v, &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn kong_test_vector_empty_table() {
        assert_eq!(
            config_hashes(&json!({})).config,
            "2da3c26e4dbd6dd6ea3ab60a3dd7fb3e"
        );
    }

    #[test]
    fn kong_test_vector_empty_entity_sets() {
        let h = config_hashes(&json!({"routes": [], "services": [], "plugins": []}));
        assert_eq!(h.config, "81aac97a81ad03c0cf0b36663806488e");
        assert_eq!(h.routes, "99914b932bd37a50b983c5e7c90ae93b");
        assert_eq!(h.services, "99914b932bd37a50b983c5e7c90ae93b");
        assert_eq!(h.plugins, "99914b932bd37a50b983c5e7c90ae93b");
        assert_eq!(h.upstreams, EMPTY_CONFIG_HASH);
        assert_eq!(
            config_hashes(&json!({"upstreams": [], "targets": []})).config,
            "4d60dd9998ea4314039da5ca2f1db96f"
        );
    }

    #[test]
    fn kong_test_vectors_for_scalars() {
        assert_eq!(
            config_hashes(&Value::Null).config,
            "5bf07a8b7343015026657d1108d8206e"
        );
        assert_eq!(
            config_hashes(&json!(10)).config,
            "d3d9446802a44259755d38e6d163e820"
        );
        assert_eq!(
            config_hashes(&json!(0.9)).config,
            "a894124cc6d5c5c71afe060d5dde0762"
        );
    }

    #[test]
    fn serializer_sorts_keys_and_marks_nulls_and_empty_tables() {
        assert_eq!(
            serialized(&json!({"b": null, "a": [], "c": {}})),
            "a:{};b:/null/;c:{};"
        );
        assert_eq!(serialized(&json!([1, "x", true])), "1;x;true");
    }

    #[test]
    fn arrays_of_six_or_more_carry_a_trailing_separator() {
        assert_eq!(serialized(&json!([1, 2, 3, 4, 5])), "1;2;3;4;5");
        assert_eq!(serialized(&json!([1, 2, 3, 4, 5, 6])), "1;2;3;4;5;6;");
    }

    // NB: the expected values below come from outside this code: Kong's own spec
    // (spec/01-unit/19-hybrid/02-clustering_spec.lua) or a separate re-implementation of
    // kong/clustering/config_helper.lua in Python (hashlib), checked against every vector
    // of that spec, the complex one included.

    #[test]
    fn kong_test_vector_complex_table() {
        let six = json!(["v1", "v2", "v3", "v4", "v5", "v6"]);
        let consumers: Vec<Value> = (1..=1000)
            .map(|i| json!({"username": format!("user-{i}")}))
            .collect();
        let value = json!({
            "plugins": [
                {"name": "0", "config": {"param": "value"}},
                {"name": "1", "config": {"param": six}},
                {"name": "2", "config": {"param": ["v1", "v2", "v3", "v4", "v5"]}},
                {"name": "3", "config": {"param": ["v1", "v2", "v3", "v4"]}},
                {"name": "4", "config": {"param": ["v1", "v2", "v3"]}},
                {"name": "5", "config": {"param": ["v1", "v2"]}},
                {"name": "6", "config": {"param": ["v1"]}},
                {"name": "7", "config": {"param": {}}},
                {"name": "8", "config": {"param": "value", "array": six}},
                {"name": "9", "config": {"bool1": true, "bool2": false, "number": 1, "double": 1.1,
                                         "empty": {}, "null": null, "string": "test",
                                         "hash": {"k": "v"}, "array": six}},
            ],
            "consumers": consumers,
        });
        assert_eq!(
            config_hashes(&value).config,
            "675ff4b6b1c8cefa5198284110786ad0"
        );
    }

    #[test]
    fn a_buffer_over_a_million_bytes_is_compacted_to_its_md5() {
        let big = "x".repeat(COMPACT_AT + 1);
        let mut buf = Vec::new();
        serialize(&json!([big, "tail"]), &mut buf);
        // The check runs on entry to "tail", after the separator was appended: the buffer
        // is then md5("x" * 1000001 + ";") in binary, then "tail".
        assert_eq!(buf.len(), 16 + 4);
        let head: String = buf[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(head, "66d343427e6ebcd3f5902fed5ea9359c");
        assert_eq!(&buf[16..], b"tail");
        assert_eq!(
            config_hashes(&json!(["x".repeat(COMPACT_AT + 1), "tail"])).config,
            "14dd7f8c6181b7c05a0fc37e22233a8b"
        );
    }

    #[test]
    fn a_config_over_a_million_bytes_hashes_like_kong() {
        // Compacted more than once: four 400 kB names.
        let consumers: Vec<Value> = ["a", "b", "c", "d"]
            .iter()
            .map(|c| json!({"username": c.repeat(400_000)}))
            .collect();
        let value = json!({"_format_version": "3.0", "consumers": consumers});
        assert_eq!(
            config_hashes(&value).config,
            "f958ffab90b07773f956f8d0d7ceec90"
        );
    }

    #[test]
    fn numbers_format_like_percent_14g() {
        for (x, s) in [
            (10.0, "10"),
            (0.9, "0.9"),
            (1.1, "1.1"),
            (1e15, "1e+15"),
            (1e14, "1e+14"),
            (99999999999999.0, "99999999999999"),
            (1700000000.0, "1700000000"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.33333333333333"),
            (123456789012345678.0, "1.2345678901235e+17"),
        ] {
            assert_eq!(format_g14(x), s, "{x}");
        }
    }

    #[test]
    fn a_realistic_config_is_valid_and_counted() {
        let c = json!({
            "_format_version": "3.0", "_transform": false,
            "workspaces": [{"id": "w", "name": "default"}],
            "services": [{"id": "s", "host": "httpbin.org"}],
            "routes": [{"id": "r", "service": "s", "paths": ["/mock"]}, {"id": "r2", "service": "s"}],
            "plugins": []
        });
        let s = validate_config(&c).unwrap();
        assert_eq!(s.format_version, "3.0");
        assert_eq!(s.count("routes"), 2);
        assert_eq!(s.count("plugins"), 0);
        assert!(!s.is_empty());
    }

    #[test]
    fn a_config_with_only_workspaces_and_parameters_is_empty() {
        let c = json!({"_format_version": "3.0", "workspaces": [{"id": "w"}], "parameters": [{"key": "cluster_id"}]});
        assert!(validate_config(&c).unwrap().is_empty());
    }

    #[test]
    fn malformed_documents_are_refused_with_the_reason() {
        assert_eq!(validate_config(&json!([])), Err(ConfigError::NotAnObject));
        assert_eq!(
            validate_config(&json!({"services": []})),
            Err(ConfigError::MissingFormatVersion)
        );
        assert_eq!(
            validate_config(&json!({"_format_version": "4.0"})),
            Err(ConfigError::FormatVersion("4.0".into()))
        );
        assert_eq!(
            validate_config(&json!({"_format_version": "3.0", "services": [1]})),
            Err(ConfigError::EntitySet("services".into()))
        );
    }
}
