//! Idempotency store (spec §3.7): the `idempotencyKey`s of jobs that finished with
//! `succeeded`, persisted in ConfigMap `vworkspace-applied-jobs` in the operator
//! namespace so replays are answered `noop` across restarts.
//!
//! - `applied-keys.json` — JSON array of key strings (readable with `kubectl`), oldest
//!   first;
//! - `applied-keys-meta.json` — JSON object key → RFC 3339 time it was recorded.
//!
//! Bounded (connectivity defect 12): keys older than 30 days go, then the oldest beyond
//! 5,000, then the oldest until both values fit in 512 KiB — well under the 1 MiB object
//! limit. Writes use optimistic concurrency (`resourceVersion`) and re-merge on conflict;
//! keys recorded while a write is in progress are written together by the next one.
//!
//! "Never applied twice" across a crash between apply and record: a key is recorded only
//! after `succeeded`, so a crash in that window makes the control plane redeliver the job
//! and the agent applies it again. That second apply is harmless by construction: every
//! write is a server-side apply of the same manifest with the same field manager (a no-op
//! on the server when nothing changed: no new generation, no new resourceVersion), and a
//! delete of an absent object is success. No in-flight marker is kept because it could not
//! tell "crashed before apply" from "crashed after apply" and both lead to the same
//! idempotent re-apply.

use std::collections::{BTreeMap, HashMap};

use super::write_params;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta};
use tokio::sync::Mutex;

pub const CONFIG_MAP_NAME: &str = "vworkspace-applied-jobs";
pub const KEYS_DATA_KEY: &str = "applied-keys.json";
pub const META_DATA_KEY: &str = "applied-keys-meta.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_keys: usize,
    pub max_age: SignedDuration,
    /// Budget for both data values together, in bytes.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys: 5000,
            max_age: SignedDuration::from_hours(24 * 30),
            max_bytes: 512 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("idempotency store ConfigMap: {0}")]
    Kube(#[from] kube::Error),
    #[error("idempotency store ConfigMap {CONFIG_MAP_NAME} has unparsable {KEYS_DATA_KEY}: {0}")]
    Corrupt(String),
    #[error("idempotency store: gave up after repeated write conflicts")]
    Contended,
}

/// Key → time recorded.
pub type Entries = HashMap<String, Timestamp>;

/// Parses the two data values. Keys without a timestamp (written by the original
/// operator) count as recorded `now`, so they age out 30 days after the upgrade.
pub fn decode(data: Option<&BTreeMap<String, String>>, now: Timestamp) -> Result<Entries, String> {
    let Some(data) = data else {
        return Ok(Entries::new());
    };
    let keys: Vec<String> = match data.get(KEYS_DATA_KEY) {
        Some(s) if !s.trim().is_empty() => serde_json::from_str(s).map_err(|e| e.to_string())?,
        _ => Vec::new(),
    };
    let meta: HashMap<String, Timestamp> = data
        .get(META_DATA_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    Ok(keys
        .into_iter()
        .map(|k| {
            let at = meta.get(&k).copied().unwrap_or(now);
            (k, at)
        })
        .collect())
}

/// Applies the limits and encodes the two data values (keys oldest first).
pub fn encode(entries: &Entries, limits: &Limits, now: Timestamp) -> BTreeMap<String, String> {
    let cutoff = now - limits.max_age;
    let mut list: Vec<(&String, &Timestamp)> =
        entries.iter().filter(|(_, at)| **at >= cutoff).collect();
    list.sort_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)));
    if list.len() > limits.max_keys {
        list.drain(..list.len() - limits.max_keys);
    }
    // Each entry costs its key twice (array + meta) plus quotes, separators and a
    // ~30-byte timestamp; drop the oldest until the estimate fits.
    let cost = |k: &str| 2 * (k.len() + 3) + 34;
    let mut total: usize = list.iter().map(|(k, _)| cost(k)).sum::<usize>() + 4;
    let mut skip = 0;
    while total > limits.max_bytes && skip < list.len() {
        total -= cost(list[skip].0);
        skip += 1;
    }
    let list = &list[skip..];
    let keys: Vec<&String> = list.iter().map(|(k, _)| *k).collect();
    let meta: BTreeMap<&String, String> = list.iter().map(|(k, at)| (*k, at.to_string())).collect();
    BTreeMap::from([
        (
            KEYS_DATA_KEY.to_string(),
            serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into()),
        ),
        (
            META_DATA_KEY.to_string(),
            serde_json::to_string(&meta).unwrap_or_else(|_| "{}".into()),
        ),
    ])
}

/// Counts a key as being recorded until dropped (two jobs may share a key).
struct Recording<'a>(&'a std::sync::Mutex<HashMap<String, usize>>, &'a str);

impl<'a> Recording<'a> {
    fn new(set: &'a std::sync::Mutex<HashMap<String, usize>>, key: &'a str) -> Self {
        if let Ok(mut s) = set.lock() {
            *s.entry(key.to_string()).or_default() += 1;
        }
        Recording(set, key)
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock()
            && let Some(n) = s.get_mut(self.1)
        {
            *n -= 1;
            if *n == 0 {
                s.remove(self.1);
            }
        }
    }
}

/// The persistent set, cached in memory after the first read.
pub struct IdempotencyStore {
    api: Api<ConfigMap>,
    limits: Limits,
    /// The recorded keys as last read or written; looked up without waiting for a
    /// write in progress (a job's check must not queue behind other jobs' records).
    known: std::sync::Mutex<Option<Entries>>,
    /// Held across each read and write; the ConfigMap as last written (`Some(None)`:
    /// known absent), so a write needs no read first. A conflict drops it.
    writer: Mutex<Option<Option<ConfigMap>>>,
    /// Keys waiting for the next write: keys recorded while another write is in
    /// progress go out together in one update.
    queued: std::sync::Mutex<HashMap<String, Timestamp>>,
    /// Keys whose `record` has not returned yet (queued or being written): a job's
    /// result may be posted while its key is still being written, and a replay then
    /// counts as recorded.
    recording: std::sync::Mutex<HashMap<String, usize>>,
    /// When the last write ended: writes are spaced by [`MIN_GAP`].
    last_write: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Least time between two writes of the ConfigMap. Each write carries the whole set
/// (up to 512 KiB); at 20 jobs/s writing one key at a time kept the API server busy with
/// back-to-back writes of the growing object, slowing every other request of the jobs.
/// Keys are recorded beside their job's result post, so the gap delays only the job's
/// removal from the in-flight journal, not its answer.
pub const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(500);

impl IdempotencyStore {
    pub fn new(client: kube::Client, namespace: &str, limits: Limits) -> Self {
        IdempotencyStore {
            api: Api::namespaced(client, namespace),
            limits,
            known: std::sync::Mutex::new(None),
            writer: Mutex::new(None),
            queued: std::sync::Mutex::new(HashMap::new()),
            recording: std::sync::Mutex::new(HashMap::new()),
            last_write: std::sync::Mutex::new(None),
        }
    }

    fn lookup(&self, key: &str) -> Option<bool> {
        if self.recording.lock().is_ok_and(|r| r.contains_key(key)) {
            return Some(true);
        }
        let known = self.known.lock().ok()?;
        known.as_ref().map(|k| k.contains_key(key))
    }

    fn set_known(&self, entries: Entries) {
        if let Ok(mut k) = self.known.lock() {
            *k = Some(entries);
        }
    }

    /// Whether `key` was recorded. An empty key is never recorded.
    pub async fn contains(&self, key: &str) -> Result<bool, StoreError> {
        if key.is_empty() {
            return Ok(false);
        }
        if let Some(hit) = self.lookup(key) {
            return Ok(hit);
        }
        let mut writer = self.writer.lock().await;
        // Loaded by whoever held the lock before.
        if let Some(hit) = self.lookup(key) {
            return Ok(hit);
        }
        let cm = self.api.get_opt(CONFIG_MAP_NAME).await?;
        let entries = decode(cm.as_ref().and_then(|c| c.data.as_ref()), Timestamp::now())
            .map_err(StoreError::Corrupt)?;
        let hit = entries.contains_key(key);
        self.set_known(entries);
        *writer = Some(cm);
        Ok(hit)
    }

    /// Records `key` (after a `succeeded` outcome), together with every key queued while
    /// the previous write ran.
    pub async fn record(&self, key: &str) -> Result<(), StoreError> {
        if key.is_empty() {
            return Ok(());
        }
        let _recording = Recording::new(&self.recording, key);
        self.queue([(key.to_string(), Timestamp::now())]);
        let mut writer = self.writer.lock().await;
        let written = |q: &HashMap<String, Timestamp>| !q.contains_key(key);
        // Not queued any more: an earlier holder of the lock wrote it (a failed write
        // puts its keys back before it lets go of the lock).
        if self.queued.lock().is_ok_and(|q| written(&q)) {
            return Ok(());
        }
        let last = self.last_write.lock().ok().and_then(|l| *l);
        if let Some(last) = last {
            // Keys queued meanwhile go out with this write.
            tokio::time::sleep_until(last + MIN_GAP).await;
        }
        let batch: Entries = match self.queued.lock() {
            Ok(q) if written(&q) => return Ok(()),
            Ok(mut q) => q.drain().collect(),
            Err(_) => Entries::from([(key.to_string(), Timestamp::now())]),
        };
        let result = self.write(&mut writer, &batch).await;
        if let Ok(mut l) = self.last_write.lock() {
            *l = Some(tokio::time::Instant::now());
        }
        if result.is_err() {
            self.queue(batch.into_iter().filter(|(k, _)| k != key));
        }
        result
    }

    fn queue(&self, keys: impl IntoIterator<Item = (String, Timestamp)>) {
        if let Ok(mut q) = self.queued.lock() {
            q.extend(keys);
        }
    }

    async fn write(
        &self,
        writer: &mut Option<Option<ConfigMap>>,
        batch: &Entries,
    ) -> Result<(), StoreError> {
        for _ in 0..8 {
            let existing = match writer.take() {
                Some(cm) => cm,
                None => self.api.get_opt(CONFIG_MAP_NAME).await?,
            };
            let now = Timestamp::now();
            let mut entries = decode(existing.as_ref().and_then(|c| c.data.as_ref()), now)
                .map_err(StoreError::Corrupt)?;
            // Keys only this process knows (a lost race) are merged back in.
            if let Ok(known) = self.known.lock()
                && let Some(c) = known.as_ref()
            {
                for (k, at) in c {
                    entries.entry(k.clone()).or_insert(*at);
                }
            }
            entries.extend(batch.iter().map(|(k, at)| (k.clone(), *at)));
            let data = encode(&entries, &self.limits, now);
            let result = match existing {
                Some(mut cm) => {
                    cm.data = Some(data);
                    self.api
                        .replace(CONFIG_MAP_NAME, &write_params(), &cm)
                        .await
                }
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(CONFIG_MAP_NAME.into()),
                            ..Default::default()
                        },
                        data: Some(data),
                        ..Default::default()
                    };
                    self.api.create(&write_params(), &cm).await
                }
            };
            match result {
                Ok(cm) => {
                    self.set_known(decode(cm.data.as_ref(), now).map_err(StoreError::Corrupt)?);
                    *writer = Some(Some(cm));
                    return Ok(());
                }
                // Changed or deleted since this process wrote it: read it again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn round_trip_keeps_a_readable_array() {
        let mut e = Entries::new();
        e.insert("applicationinstance/org/a@1".into(), t(1));
        e.insert("applicationinstance/org/b@1".into(), t(2));
        let data = encode(&e, &Limits::default(), t(3));
        assert_eq!(
            data[KEYS_DATA_KEY],
            r#"["applicationinstance/org/a@1","applicationinstance/org/b@1"]"#
        );
        assert_eq!(decode(Some(&data), t(3)).unwrap(), e);
    }

    #[test]
    fn legacy_arrays_without_timestamps_load() {
        let data = BTreeMap::from([(KEYS_DATA_KEY.to_string(), r#"["k1","k2"]"#.to_string())]);
        let e = decode(Some(&data), t(9)).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e["k1"], t(9));
        let bad = BTreeMap::from([(KEYS_DATA_KEY.to_string(), "{".to_string())]);
        assert!(decode(Some(&bad), t(9)).is_err());
        assert!(decode(None, t(9)).unwrap().is_empty());
    }

    #[test]
    fn bounded_by_count_age_and_bytes() {
        let mut e = Entries::new();
        for i in 0..6000 {
            e.insert(format!("key-{i:05}"), t(i));
        }
        let now = t(6000);
        let data = encode(&e, &Limits::default(), now);
        let kept = decode(Some(&data), now).unwrap();
        assert_eq!(kept.len(), 5000);
        assert!(kept.contains_key("key-05999") && !kept.contains_key("key-00999"));

        // Age: only keys from the last 100 s survive.
        let limits = Limits {
            max_age: SignedDuration::from_secs(100),
            ..Limits::default()
        };
        let kept = decode(Some(&encode(&e, &limits, now)), now).unwrap();
        assert_eq!(kept.len(), 100);

        // Bytes: long keys are trimmed to the budget, newest kept.
        let mut big = Entries::new();
        for i in 0..5000 {
            big.insert(format!("{i:05}-{}", "x".repeat(200)), t(i));
        }
        let data = encode(&big, &Limits::default(), now);
        let bytes: usize = data.values().map(|v| v.len()).sum();
        assert!(bytes <= Limits::default().max_bytes, "{bytes}");
        let kept = decode(Some(&data), now).unwrap();
        assert!(kept.len() < 5000 && kept.len() > 500, "{}", kept.len());
        assert!(kept.keys().any(|k| k.starts_with("04999-")));
    }
}
