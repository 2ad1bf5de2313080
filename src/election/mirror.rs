//! The mirror of the Lease into the store's `<prefix>/<version>/election/` prefix, in Kong's
//! own registration format (DOMAIN.md §4), so native Kong 3.6+ backup nodes sharing the
//! prefix elect the operator's leader and stop exporting.
//!
//! Kong's rule: among *fresh* registrations (refreshed within `election_interval + 5 s`),
//! the smallest register time wins, ties to the smallest node id.
//!
//! - **S3**: the register time is part of the key, `election/<register_time>-<node_id>`.
//!   The leader of epoch `e` registers with [`register_time`]`(e)` = `1000000000 - e`: a
//!   time in 2001, before any real node's registration (Kong uses its clock at first
//!   registration), and smaller for every newer epoch, so a new leader wins at once even
//!   while its predecessor's registration is still fresh.
//! - **GCS**: the key is `election/<node_id>` and the register time is the object's
//!   `timeCreated`, which nobody can backdate. The leader creates its registration once and
//!   refreshes it with a metadata patch (`updated` moves, `timeCreated` stays; a new leader
//!   of the same policy patches the one it finds, its node id being the same); a native node
//!   that registered earlier would win, so the leader removes every other registration each
//!   round. A removed native node re-creates its own at its next round, later than ours.
//! - Both: refreshed every [`REFRESH`] (fresh even for native nodes whose interval is as
//!   short as 1 s), every registration but ours is removed each round (on S3 that is only
//!   tidiness: stale operator registrations and native ones), and ours is removed when this
//!   replica stops leading, so native nodes take over by themselves once the operator is gone.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::Gate;
use crate::kong::StorageUrl;
use crate::storage::{ObjectInfo, ObjectStore, Precondition, PutObject, StoreError};

/// How often the leader refreshes its registration and clears others.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Older than any real registration (2001-09-09): see the module comment.
const REGISTER_BASE: i64 = 1_000_000_000;

/// The store's flavour of Kong's election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    S3,
    Gcs,
}

impl Flavor {
    /// The flavour of the store `url` names.
    pub fn of(url: &StorageUrl) -> Flavor {
        match url.provider {
            crate::kong::Provider::S3 => Flavor::S3,
            crate::kong::Provider::Gcs => Flavor::Gcs,
        }
    }
}

/// The S3 register time of the leader of `epoch`: smaller for newer epochs.
pub fn register_time(epoch: i32) -> i64 {
    REGISTER_BASE - i64::from(epoch.max(0))
}

/// The key of a registration.
pub fn registration_key(
    flavor: Flavor,
    url: &StorageUrl,
    version: &str,
    epoch: i32,
    node_id: &str,
) -> String {
    let prefix = url.election_prefix(version);
    match flavor {
        Flavor::S3 => format!("{prefix}{}-{node_id}", register_time(epoch)),
        Flavor::Gcs => format!("{prefix}{node_id}"),
    }
}

/// One registration as Kong's election reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub register_time: f64,
    pub node_id: String,
    pub refreshed: SystemTime,
}

/// Reads a listed object as Kong does; `None` for what Kong skips.
pub fn parse(flavor: Flavor, election_prefix: &str, o: &ObjectInfo) -> Option<Registration> {
    let name = o.key.strip_prefix(election_prefix)?;
    match flavor {
        Flavor::S3 => {
            // Kong's pattern: ^(%d+%.?%d*)%-(.+)$
            let (time, node) = name.split_once('-')?;
            let digits = time.strip_suffix('.').unwrap_or(time);
            let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
            let ok = !int.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit());
            if !ok || node.is_empty() {
                return None;
            }
            Some(Registration {
                register_time: time.trim_end_matches('.').parse().ok()?,
                node_id: node.to_owned(),
                refreshed: o.last_modified,
            })
        }
        Flavor::Gcs => {
            if name.is_empty() || name.contains('/') {
                return None;
            }
            let created = o
                .created
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            Some(Registration {
                register_time: created,
                node_id: name.to_owned(),
                refreshed: o.last_modified,
            })
        }
    }
}

/// Kong's choice among `regs` at `now` for a node whose interval is `interval`.
pub fn kong_elect(
    regs: &[Registration],
    now: SystemTime,
    interval: Duration,
) -> Option<&Registration> {
    let margin = interval + Duration::from_secs(5);
    regs.iter()
        .filter(|r| now <= r.refreshed + margin)
        .min_by(|a, b| {
            a.register_time
                .total_cmp(&b.register_time)
                .then_with(|| a.node_id.cmp(&b.node_id))
        })
}

/// Whether `o`, listed under `election_prefix`, is a registration the mirror wrote for
/// `node_id`: on S3 a key [`registration_key`] makes (an integer register time no later
/// than [`REGISTER_BASE`]; Kong registers with its clock, years later), on GCS the node's
/// key. Lets an uninstall remove the operator's registrations without touching a native
/// node's. Pure.
pub fn is_mirrored(flavor: Flavor, election_prefix: &str, o: &ObjectInfo, node_id: &str) -> bool {
    let Some(name) = o.key.strip_prefix(election_prefix) else {
        return false;
    };
    match flavor {
        Flavor::S3 => {
            let Some((time, node)) = name.split_once('-') else {
                return false;
            };
            node == node_id
                && time.bytes().all(|b| b.is_ascii_digit())
                && time.parse::<i64>().is_ok_and(|t| t <= REGISTER_BASE)
        }
        Flavor::Gcs => name == node_id,
    }
}

/// Removes the registrations the mirror wrote for `node_id` under `version`'s election
/// prefix (see [`is_mirrored`]) and returns how many went. For a leader that is gone:
/// a running [`Mirror`] removes its own when it stops.
pub async fn remove_mirrored(
    store: &dyn ObjectStore,
    flavor: Flavor,
    url: &StorageUrl,
    version: &str,
    node_id: &str,
) -> Result<usize, StoreError> {
    let prefix = url.election_prefix(version);
    let mut removed = 0;
    for o in store.list(&prefix).await? {
        if is_mirrored(flavor, &prefix, &o, node_id) {
            store.delete(&o.key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Mirrors one version while this replica leads; `node_id` is the Kong node id to register
/// (the operator's own in `mode: Operator`, the chosen backup pod's in `mode: BackupPods`).
pub struct Mirror {
    pub store: std::sync::Arc<dyn ObjectStore>,
    pub flavor: Flavor,
    pub url: StorageUrl,
    pub version: String,
    pub node_id: String,
}

impl Mirror {
    /// Runs until `shutdown`; removes our registration when leadership or the process ends.
    pub async fn run(self, mut gate: Gate, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let prefix = self.url.election_prefix(&self.version);
        let mut ours: Option<String> = None;
        loop {
            let claim = gate.claim();
            if claim.leading(std::time::Instant::now()) {
                let key = registration_key(
                    self.flavor,
                    &self.url,
                    &self.version,
                    claim.epoch,
                    &self.node_id,
                );
                match self.refresh(&key).await {
                    Ok(()) => {
                        if ours.as_deref() != Some(key.as_str()) {
                            info!(key = %key, "registered the leader in the election prefix");
                        }
                        ours = Some(key.clone());
                        self.clear_others(&prefix, &key).await;
                    }
                    Err(e) => warn!(key = %key, error = %e, "cannot register the leader"),
                }
            } else if let Some(key) = ours.take() {
                self.remove(&key).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = gate.changed() => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Some(key) = ours {
            self.remove(&key).await;
        }
    }

    async fn refresh(&self, key: &str) -> Result<(), StoreError> {
        // S3: re-put, as Kong does. GCS: patch, so the creation time (our register time) stays.
        // NB: also on a replica's first round: the node id is the policy's, so a
        // registration left by the previous leader is ours and keeps its older creation time
        // (a rewrite would make it younger than a native node's for one round).
        if self.flavor == Flavor::Gcs && self.store.touch(key).await? {
            return Ok(());
        }
        self.store
            .put(PutObject {
                key: key.to_owned(),
                body: Bytes::new(),
                content_type: "text/plain".to_owned(),
                metadata: Default::default(),
                precondition: Precondition::None,
            })
            .await
            .map(|_| ())
    }

    async fn clear_others(&self, prefix: &str, ours: &str) {
        let listed = match self.store.list(prefix).await {
            Ok(l) => l,
            Err(e) => {
                warn!(prefix = %prefix, error = %e, "cannot list the election prefix");
                return;
            }
        };
        for o in listed.iter().filter(|o| o.key != ours) {
            match self.store.delete(&o.key).await {
                Ok(()) => debug!(key = %o.key, "removed a competing registration"),
                Err(e) => warn!(key = %o.key, error = %e, "cannot remove a registration"),
            }
        }
    }

    async fn remove(&self, key: &str) {
        match self.store.delete(key).await {
            Ok(()) => info!(key = %key, "removed our registration"),
            Err(e) => {
                warn!(key = %key, error = %e, "cannot remove our registration; it goes stale")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> StorageUrl {
        StorageUrl::parse("s3://bucket/kong").unwrap()
    }

    fn info(key: &str, created: u64, modified: u64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size: 0,
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(modified),
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(created),
            version: "1".into(),
        }
    }

    const NOW: u64 = 1_790_000_000;

    #[test]
    fn only_the_mirrors_own_registrations_count_as_mirrored() {
        let p = url().election_prefix("3.6.1.4");
        let ours = |epoch| registration_key(Flavor::S3, &url(), "3.6.1.4", epoch, "node-a");
        for epoch in [0, 1, 7, 999_999_999] {
            assert!(
                is_mirrored(Flavor::S3, &p, &info(&ours(epoch), 0, NOW), "node-a"),
                "epoch {epoch}"
            );
        }
        for (key, why) in [
            (ours(3).replace("node-a", "node-b"), "another node"),
            (format!("{p}1733649544-node-a"), "Kong's own clock"),
            (
                format!("{p}1733649544.5-node-a"),
                "Kong's own clock, fractional",
            ),
            (format!("{p}999999997.0-node-a"), "not an integer key"),
            (format!("{p}node-a"), "no register time"),
            (
                registration_key(Flavor::S3, &url(), "3.7.0.0", 3, "node-a"),
                "another version's prefix",
            ),
        ] {
            assert!(
                !is_mirrored(Flavor::S3, &p, &info(&key, 0, NOW), "node-a"),
                "{why}: {key}"
            );
        }
        let gcs = |key: &str| is_mirrored(Flavor::Gcs, &p, &info(key, 0, NOW), "node-a");
        assert!(gcs(&format!("{p}node-a")));
        assert!(!gcs(&format!("{p}node-b")));
        assert!(!gcs(&format!("{p}999999997-node-a")));
    }

    #[test]
    fn keys_follow_kongs_formats() {
        assert_eq!(
            registration_key(Flavor::S3, &url(), "3.6.1.4", 3, "node-a"),
            "kong/3.6.1.4/election/999999997-node-a"
        );
        assert_eq!(
            registration_key(Flavor::Gcs, &url(), "3.6.1.4", 3, "node-a"),
            "kong/3.6.1.4/election/node-a"
        );
    }

    #[test]
    fn s3_registrations_parse_like_kongs_pattern() {
        let p = "kong/3.6.1.4/election/";
        let parsed = |name: &str| {
            parse(Flavor::S3, p, &info(&format!("{p}{name}"), 0, NOW))
                .map(|r| (r.register_time, r.node_id))
        };
        assert_eq!(
            parsed("1733649544.123-6f1c"),
            Some((1733649544.123, "6f1c".into()))
        );
        assert_eq!(
            parsed("1733649544-6f1c"),
            Some((1733649544.0, "6f1c".into()))
        );
        assert_eq!(parsed("17.-a-b"), Some((17.0, "a-b".into())));
        for bad in ["abc-6f1c", "-6f1c", "17", "17-", ".5-a", "1e5-a"] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
    }

    #[test]
    fn gcs_registrations_use_the_creation_time() {
        let p = "kong/3.6.1.4/election/";
        let r = parse(Flavor::Gcs, p, &info(&format!("{p}node-a"), 100, NOW)).unwrap();
        assert_eq!(r.register_time, 100.0);
        assert_eq!(r.node_id, "node-a");
        assert_eq!(
            r.refreshed,
            SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
        );
    }

    #[test]
    fn the_mirror_wins_kongs_election_on_s3_and_a_newer_epoch_wins_over_an_older() {
        let p = url().election_prefix("3.6.1.4");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
        let regs: Vec<Registration> = [
            // A native node registered long ago and refreshes.
            info(&format!("{p}1500000000.5-native"), 0, NOW - 1),
            // The previous operator leader (epoch 4), still fresh.
            info(
                &registration_key(Flavor::S3, &url(), "3.6.1.4", 4, "old-leader"),
                0,
                NOW - 3,
            ),
            // The new leader (epoch 5).
            info(
                &registration_key(Flavor::S3, &url(), "3.6.1.4", 5, "new-leader"),
                0,
                NOW,
            ),
        ]
        .iter()
        .filter_map(|o| parse(Flavor::S3, &p, o))
        .collect();
        let elected = kong_elect(&regs, now, Duration::from_secs(10)).unwrap();
        assert_eq!(elected.node_id, "new-leader");
    }

    #[test]
    fn stale_registrations_do_not_count_and_ties_go_to_the_smaller_node_id() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
        let reg = |t: f64, id: &str, age: u64| Registration {
            register_time: t,
            node_id: id.into(),
            refreshed: now - Duration::from_secs(age),
        };
        let regs = [reg(1.0, "stale", 16), reg(5.0, "b", 0), reg(5.0, "a", 15)];
        // Interval 10 s: fresh within 15 s.
        assert_eq!(
            kong_elect(&regs, now, Duration::from_secs(10)).map(|r| r.node_id.as_str()),
            Some("a")
        );
        assert_eq!(
            kong_elect(&regs, now, Duration::from_secs(600)).map(|r| r.node_id.as_str()),
            Some("stale")
        );
        assert_eq!(kong_elect(&[], now, Duration::from_secs(10)), None);
    }
}
