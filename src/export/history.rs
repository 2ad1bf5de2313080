//! The bounded history of exported configurations, for rollback:
//! `<prefix>/<version>/history/<unix-seconds>-<config hash>.json`, newest `limit` kept.

use crate::kong::StorageUrl;
use crate::storage::ObjectInfo;

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

/// The history entries to delete so that the newest `limit` remain, newest by the store's
/// own time (`LastModified` / `updated`), not by the time in the key: that is the writing
/// replica's clock, and replicas' clocks disagree. Objects that are not history entries
/// are never touched.
pub fn to_prune(prefix: &str, entries: &[ObjectInfo], limit: usize) -> Vec<String> {
    let mut history: Vec<(std::time::SystemTime, u64, &String)> = entries
        .iter()
        .filter_map(|o| {
            parse_history_key(prefix, &o.key).map(|(t, _)| (o.last_modified, t, &o.key))
        })
        .collect();
    history.sort_by(|a, b| b.cmp(a));
    history
        .into_iter()
        .skip(limit)
        .map(|(_, _, k)| k.clone())
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

    fn info(key: String, stored_at: u64) -> ObjectInfo {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(stored_at);
        ObjectInfo {
            key,
            size: 1,
            last_modified: t,
            created: t,
            version: "v".into(),
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_ignores_foreign_objects() {
        let p = "v/history/";
        let entries: Vec<ObjectInfo> = [5u64, 1, 3, 4, 2]
            .iter()
            .map(|t| info(format!("{p}{t:010}-{H}.json"), 1000 + t))
            .chain(std::iter::once(info(format!("{p}README"), 1)))
            .collect();
        let mut gone = to_prune(p, &entries, 2);
        gone.sort();
        assert_eq!(gone, [1u64, 2, 3].map(|t| format!("{p}{t:010}-{H}.json")));
        assert!(to_prune(p, &entries, 10).is_empty());
        assert_eq!(to_prune(p, &entries, 0).len(), 5);
    }

    #[test]
    fn pruning_orders_by_the_stores_time_not_the_writers_clock() {
        let p = "v/history/";
        // A replica whose clock ran an hour ahead wrote 9000; the store stored it first.
        let entries = vec![
            info(format!("{p}{:010}-{H}.json", 9000), 100),
            info(format!("{p}{:010}-{H}.json", 5000), 200),
            info(format!("{p}{:010}-{H}.json", 5100), 300),
        ];
        assert_eq!(
            to_prune(p, &entries, 2),
            [format!("{p}{:010}-{H}.json", 9000)]
        );
    }
}
