//! [`DirtyList`]: the keys with work pending for one background task (usage
//! to write, rate-limit consumption to share with other replicas).
//!
//! The hot path marks a key once per round, not once per request: a flag in
//! the key's [`KeyRuntime`] says whether it is already listed, so marking a
//! listed key is one atomic swap and the list's lock is taken only when a
//! key turns dirty. The task takes the whole list, which clears the flags
//! first, so a key marked again while its work is being written is listed
//! anew and nothing falls between two rounds.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use crate::hotpath::runtime::KeyRuntime;

/// Keys with pending work of one kind; `flag` picks the runtime's flag that
/// says a key is listed here.
#[derive(Debug)]
pub(crate) struct DirtyList {
    flag: fn(&KeyRuntime) -> &AtomicBool,
    keys: Mutex<Vec<Arc<KeyRuntime>>>,
}

impl DirtyList {
    /// An empty list whose membership is `flag` of each runtime.
    pub(crate) fn new(flag: fn(&KeyRuntime) -> &AtomicBool) -> Self {
        Self {
            flag,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// Lists `runtime`, unless it already is.
    pub(crate) fn mark(&self, runtime: &Arc<KeyRuntime>) {
        if !(self.flag)(runtime).swap(true, Ordering::AcqRel) {
            self.keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(runtime.clone());
        }
    }

    /// Takes every listed key, clearing their flags before the caller reads
    /// their pending work (so work added meanwhile lists the key again).
    pub(crate) fn take(&self) -> Vec<Arc<KeyRuntime>> {
        let keys = std::mem::take(&mut *self.keys.lock().unwrap_or_else(|e| e.into_inner()));
        for runtime in &keys {
            (self.flag)(runtime).store(false, Ordering::Release);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hotpath::runtime::Runtimes;

    #[test]
    fn a_key_is_listed_once_per_round() {
        let runtimes = Runtimes::default();
        let list = DirtyList::new(|r| &r.counts_dirty);
        let (a, b) = (runtimes.get_or_create("a"), runtimes.get_or_create("b"));
        list.mark(&a);
        list.mark(&a);
        list.mark(&b);
        let taken = list.take();
        assert_eq!(taken.len(), 2);
        assert!(!a.counts_dirty.load(Ordering::Acquire));
        assert!(list.take().is_empty());
        // Marked again after the take: listed again.
        list.mark(&a);
        assert_eq!(list.take().len(), 1);
        // Another list's flag is independent.
        let other = DirtyList::new(|r| &r.last_used_dirty);
        other.mark(&b);
        assert!(!b.counts_dirty.load(Ordering::Acquire));
        assert!(b.last_used_dirty.load(Ordering::Acquire));
    }
}
