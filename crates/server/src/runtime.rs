//! Per-key mutable state of the hot path: the rate-limit state and the usage
//! not yet written, in one [`KeyRuntime`] per key id.
//!
//! A key's cache entries (one per lookup id: a rotation grace period has two)
//! all point at the same runtime, found through [`Runtimes`] when an entry is
//! loaded, so a rotation or a reload never hands a key a fresh allowance or
//! loses counted usage. Authorize touches only the runtime it already holds:
//! atomics for the limiter, a per-key mutex for usage, and the shared dirty
//! lists only when a key turns dirty (once per flush or sync interval).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64},
    },
};

use chrono::{DateTime, Utc};

/// What a replica knows of one key's consumption in the current shared window.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) window_start: i64,
    /// Requests this replica has reported for the window.
    pub(crate) own: u64,
    /// Requests of other replicas already charged to the local state.
    pub(crate) others_charged: u64,
}

/// Uses of one credential not yet written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingUse {
    pub(crate) lookup_id: [u8; 8],
    pub(crate) last_used_at: DateTime<Utc>,
    pub(crate) requests: u64,
}

/// A key's unwritten uses, per credential. The first credential is stored
/// inline: almost every key has one secret in use, and a heap allocation
/// per key would be most of its cost.
#[derive(Debug, Default)]
pub(crate) struct PendingUses {
    first: Option<PendingUse>,
    more: Vec<PendingUse>,
}

impl PendingUses {
    /// Adds `requests` uses of `lookup_id`, the newest at `at`.
    pub(crate) fn add(&mut self, lookup_id: [u8; 8], at: DateTime<Utc>, requests: u64) {
        let slot = match &mut self.first {
            Some(first) if first.lookup_id == lookup_id => Some(first),
            Some(_) => self.more.iter_mut().find(|u| u.lookup_id == lookup_id),
            None => {
                self.first = Some(PendingUse {
                    lookup_id,
                    last_used_at: at,
                    requests,
                });
                return;
            }
        };
        match slot {
            Some(pending) => {
                pending.requests += requests;
                pending.last_used_at = pending.last_used_at.max(at);
            }
            None => self.more.push(PendingUse {
                lookup_id,
                last_used_at: at,
                requests,
            }),
        }
    }

    /// The pending use of a credential.
    pub(crate) fn get(&self, lookup_id: &[u8]) -> Option<&PendingUse> {
        self.first
            .iter()
            .chain(&self.more)
            .find(|u| u.lookup_id.as_slice() == lookup_id)
    }

    /// Takes every pending use, leaving none.
    pub(crate) fn take(&mut self) -> Vec<PendingUse> {
        let first = self.first.take();
        first
            .into_iter()
            .chain(std::mem::take(&mut self.more))
            .collect()
    }
}

/// The hot path's mutable state for one key.
#[derive(Debug)]
pub struct KeyRuntime {
    pub(crate) key_id: Arc<str>,
    /// GCRA theoretical arrival time, in limiter nanoseconds.
    pub(crate) tat: AtomicU64,
    /// Emission interval of the quota last applied.
    pub(crate) interval: AtomicU64,
    /// Requests allowed here since the last cross-replica sync.
    pub(crate) unsynced: AtomicU64,
    pub(crate) rate_dirty: AtomicBool,
    pub(crate) ledger: Mutex<Ledger>,
    pub(crate) usage: Mutex<PendingUses>,
    pub(crate) usage_dirty: AtomicBool,
}

impl KeyRuntime {
    fn new(key_id: Arc<str>) -> Self {
        Self {
            key_id,
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
            rate_dirty: AtomicBool::new(false),
            ledger: Mutex::new(Ledger::default()),
            usage: Mutex::new(PendingUses::default()),
            usage_dirty: AtomicBool::new(false),
        }
    }

    /// The key this state belongs to.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// Finds the runtime of a key id while anything (a cache entry, a dirty list)
/// still holds it.
#[derive(Debug, Default)]
pub struct Runtimes {
    by_key: Mutex<HashMap<Arc<str>, Weak<KeyRuntime>>>,
}

impl Runtimes {
    /// The runtime of `key_id`, created if no one holds one. Called on cache
    /// loads, never per request.
    pub fn get_or_create(&self, key_id: &str) -> Arc<KeyRuntime> {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = map.get(key_id).and_then(Weak::upgrade) {
            return runtime;
        }
        let key_id: Arc<str> = key_id.into();
        let runtime = Arc::new(KeyRuntime::new(key_id.clone()));
        map.insert(key_id, Arc::downgrade(&runtime));
        runtime
    }

    /// The runtime of `key_id`, if someone holds it.
    pub fn get(&self, key_id: &str) -> Option<Arc<KeyRuntime>> {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key_id).and_then(Weak::upgrade)
    }

    /// Forgets runtimes no one holds any more; returns how many are left.
    pub fn prune(&self) -> usize {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, runtime| runtime.strong_count() > 0);
        map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_uses_merge_per_credential() {
        let mut uses = PendingUses::default();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        uses.add(*b"aaaaaaaa", t1, 1);
        uses.add(*b"aaaaaaaa", t0, 2);
        uses.add(*b"bbbbbbbb", t0, 1);
        uses.add(*b"bbbbbbbb", t1, 1);
        assert_eq!(
            uses.get(b"aaaaaaaa").map(|u| (u.requests, u.last_used_at)),
            Some((3, t1))
        );
        assert_eq!(
            uses.get(b"bbbbbbbb").map(|u| (u.requests, u.last_used_at)),
            Some((2, t1))
        );
        assert_eq!(uses.take().len(), 2);
        assert!(uses.get(b"aaaaaaaa").is_none());
        assert!(uses.take().is_empty());
    }

    #[test]
    fn one_runtime_per_key_while_held() {
        let runtimes = Runtimes::default();
        let a = runtimes.get_or_create("k1");
        let b = runtimes.get_or_create("k1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &runtimes.get_or_create("k2")));
        assert_eq!(runtimes.prune(), 1, "k2 was dropped");
        drop((a, b));
        assert!(runtimes.get("k1").is_none());
        assert_eq!(runtimes.prune(), 0);
    }
}
