//! The bounded history of exported configurations, for rollback:
//! `<prefix>/<version>/history/<unix-seconds>-<config hash>.json`, newest `limit` kept.

use crate::kong::StorageUrl;

/// The history object for a config of `hash` written at `unix_secs`.
pub fn history_key(url: &StorageUrl, version: &str, unix_secs: u64, hash: &str) -> String {
    format!("{}{unix_secs:010}-{hash}.json", url.history_prefix(version))
}

/// `(unix seconds, hash)` of a history key, or `None` for anything else under the prefix.
pub fn parse_history_key<'a>(prefix: &str, key: &'a str) -> Option<(u64, &'a str)> {
    let name = key.strip_prefix(prefix)?.strip_suffix(".json")?;
    let (secs, hash) = name.split_once('-')?;
    let secs = secs.parse().ok()?;
    (hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some((secs, hash))
}

/// The history keys to delete so that the newest `limit` remain. Keys that are not
/// history entries are never touched.
pub fn to_prune(prefix: &str, keys: &[String], limit: usize) -> Vec<String> {
    let mut entries: Vec<(u64, &String)> = keys
        .iter()
        .filter_map(|k| parse_history_key(prefix, k).map(|(t, _)| (t, k)))
        .collect();
    entries.sort_by(|a, b| b.cmp(a));
    entries
        .into_iter()
        .skip(limit)
        .map(|(_, k)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn history_keys_sit_beside_the_config_and_parse_back() {
        let url = StorageUrl::parse("s3://bkt/kong/").unwrap();
        let key = history_key(&url, "3.6.1.4", 1_700_000_000, H);
        assert_eq!(key, format!("kong/3.6.1.4/history/1700000000-{H}.json"));
        assert_eq!(
            parse_history_key("kong/3.6.1.4/history/", &key),
            Some((1_700_000_000, H))
        );
    }

    #[test]
    fn foreign_keys_under_the_prefix_are_not_history() {
        let p = "kong/3.6.1.4/history/";
        for k in [
            "kong/3.6.1.4/history/notes.txt",
            "kong/3.6.1.4/history/12-short.json",
            "kong/3.6.1.4/history/x-0123456789abcdef0123456789abcdef.json",
            "kong/3.6.1.4/config.json",
        ] {
            assert_eq!(parse_history_key(p, k), None, "{k}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_ignores_foreign_objects() {
        let p = "v/history/";
        let keys: Vec<String> = [5u64, 1, 3, 4, 2]
            .iter()
            .map(|t| format!("{p}{t:010}-{H}.json"))
            .chain(std::iter::once(format!("{p}README")))
            .collect();
        let mut gone = to_prune(p, &keys, 2);
        gone.sort();
        assert_eq!(gone, [1u64, 2, 3].map(|t| format!("{p}{t:010}-{H}.json")));
        assert!(to_prune(p, &keys, 10).is_empty());
        assert_eq!(to_prune(p, &keys, 0).len(), 5);
    }
}
