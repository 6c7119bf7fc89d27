//! Cache entries past their lifetime, queued to be checked against storage
//! in batches.
//!
//! A known key past its lifetime is still served while one caller asks for
//! it to be refreshed. Reading each such key again (key, credentials, last
//! uses) cost a query per key: at 100 000 keys and the default 5-minute
//! lifetime several hundred queries a second, at a million several
//! thousand, a cost that grew with the key count. Almost always the key has
//! not changed (a change is announced and evicts the entry at once), so the
//! refresh only needs to learn that storage still holds the cached version:
//! the queue gathers due entries and one drainer checks them a few hundred
//! per query. The query answers in one row whether every one of them is
//! still at its version ([`keygate_persistence::Store::versions_unchanged`]);
//! only when one moved are the versions read key by key
//! ([`keygate_persistence::Store::current_versions`]), and only keys whose
//! version moved are read again.
//!
//! The queue is bounded: an entry that does not fit is asked for again by a
//! later request (the cache spaces those requests a second apart). One
//! drainer runs at a time, started by the push that finds none running and
//! ending when it finds the queue empty, so an idle replica runs no task. A
//! drainer that ends otherwise (a panic) is counted out all the same
//! ([`crate::hotpath::workers`]): were it not, no drainer would ever start
//! again, and entries past their lifetime would be served unchecked for
//! good.

use std::sync::Arc;

use crate::hotpath::cache::CachedKey;
use crate::hotpath::workers::{WorkQueue, Worker};

/// Entries queued at most; beyond it a due entry waits for a later request.
const MAX_QUEUED: usize = 65_536;

/// A lookup id due for renewal, with the entry the cache served for it.
pub type Due = (String, Arc<CachedKey>);

/// The running drainer of a [`RenewalQueue`] (counted out when it ends,
/// even by a panic: [`crate::hotpath::workers`]).
pub type Drainer<'a> = Worker<'a, Due>;

/// Entries due for renewal, waiting for the drainer.
#[derive(Debug)]
pub struct RenewalQueue {
    queue: WorkQueue<Due>,
}

impl Default for RenewalQueue {
    fn default() -> Self {
        Self {
            queue: WorkQueue::new(MAX_QUEUED, 1, |_| false),
        }
    }
}

impl RenewalQueue {
    /// Queues `key`, served for `lookup_id`, for renewal. Returns whether
    /// the caller must start a drainer (none is running); `false` also when
    /// the queue is full and the entry was left for a later request.
    pub fn push(&self, lookup_id: &str, key: Arc<CachedKey>) -> bool {
        self.queue
            .push((lookup_id.to_owned(), key))
            .unwrap_or(false)
    }

    /// The drainer a push asked its caller to start: it takes the queued
    /// entries, oldest first, until none is left.
    pub fn drainer(&self) -> Drainer<'_> {
        self.queue.worker()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no entry is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use keygate_domain::snapshot::KeySnapshot;

    use super::*;
    use crate::hotpath::runtime::Runtimes;

    fn cached() -> Arc<CachedKey> {
        let key = crate::fixtures::api_key("k", "abcdefgh");
        Arc::new(CachedKey {
            snapshot: KeySnapshot::from(&key),
            runtime: Runtimes::default().get_or_create("k"),
        })
    }

    fn ids(due: &[Due]) -> Vec<&str> {
        due.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn one_drainer_at_a_time_restarted_after_it_found_the_queue_empty() {
        let queue = RenewalQueue::default();
        let key = cached();
        assert!(queue.push("aaaaaaaa", key.clone()), "first push starts one");
        assert!(!queue.push("bbbbbbbb", key.clone()), "one is running");
        assert!(!queue.push("cccccccc", key.clone()));
        let mut drainer = queue.drainer();
        assert_eq!(
            ids(&drainer.take(2)),
            ["aaaaaaaa", "bbbbbbbb"],
            "oldest first"
        );
        // Still running: a push now is taken by the same drainer.
        assert!(!queue.push("dddddddd", key.clone()));
        assert_eq!(ids(&drainer.take(2)), ["cccccccc", "dddddddd"]);
        assert!(drainer.take(2).is_empty(), "empty: the drainer stops");
        assert!(drainer.take(2).is_empty(), "and stays stopped");
        drop(drainer);
        assert!(queue.push("eeeeeeee", key), "the next push starts another");
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_drainer_that_ends_early_is_counted_out() {
        let queue = RenewalQueue::default();
        let key = cached();
        assert!(queue.push("aaaaaaaa", key.clone()));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut drainer = queue.drainer();
            let due = drainer.take(1);
            assert_eq!(ids(&due), ["aaaaaaaa"]);
            panic!("the check panicked");
        }));
        assert!(result.is_err());
        assert!(
            queue.push("bbbbbbbb", key.clone()),
            "no drainer runs: the next push starts one"
        );
        assert!(!queue.push("cccccccc", key), "and only one");
        let mut drainer = queue.drainer();
        assert_eq!(ids(&drainer.take(10)), ["bbbbbbbb", "cccccccc"]);
        assert!(drainer.take(10).is_empty());
    }

    #[test]
    fn a_full_queue_leaves_entries_for_later_requests() {
        let queue = RenewalQueue::default();
        let key = cached();
        for _ in 0..MAX_QUEUED {
            queue.push("aaaaaaaa", key.clone());
        }
        assert!(!queue.push("zzzzzzzz", key));
        assert_eq!(queue.len(), MAX_QUEUED);
        let taken = queue.drainer().take(usize::MAX);
        assert!(
            taken.iter().all(|(id, _)| id == "aaaaaaaa"),
            "the extra one was left out"
        );
        assert!(queue.is_empty());
    }
}
