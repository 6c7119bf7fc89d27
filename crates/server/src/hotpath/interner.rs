//! Shares the strings and scope lists that many cached keys have in common
//! (owner, environment, the scope set), so 100k keys of a few tenants hold a
//! few copies, not 100k. Touched on cache loads only, never per request.

use std::{
    collections::HashSet,
    hash::Hash,
    sync::{Arc, Mutex},
};

use keygate_domain::{scope::Scope, snapshot::KeySnapshot};

#[derive(Debug)]
struct Pool<T: ?Sized>(Mutex<HashSet<Arc<T>>>);

impl<T: ?Sized + Hash + Eq> Default for Pool<T> {
    fn default() -> Self {
        Self(Mutex::new(HashSet::new()))
    }
}

impl<T: ?Sized + Hash + Eq> Pool<T> {
    fn share(&self, value: &Arc<T>) -> Arc<T> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = pool.get(&**value) {
            return shared.clone();
        }
        pool.insert(value.clone());
        value.clone()
    }

    fn prune(&self) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|value| Arc::strong_count(value) > 1);
    }
}

/// Pools of shared snapshot parts.
#[derive(Debug, Default)]
pub struct Interner {
    strings: Pool<str>,
    scope_sets: Pool<[Scope]>,
}

impl Interner {
    /// Points the snapshot's owner, environment and scopes at shared copies.
    pub fn share(&self, snapshot: &mut KeySnapshot) {
        snapshot.owner_id = self.strings.share(&snapshot.owner_id);
        snapshot.environment = self.strings.share(&snapshot.environment);
        snapshot.scopes = self.scope_sets.share(&snapshot.scopes);
    }

    /// Forgets values no snapshot uses any more.
    pub fn prune(&self) {
        self.strings.prune();
        self.scope_sets.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_parts_are_shared_and_unused_ones_pruned() {
        let interner = Interner::default();
        let key = crate::fixtures::api_key("k1", "aaaaaaaa");
        let mut a = KeySnapshot::from(&key);
        let mut b = KeySnapshot::from(&key);
        assert!(!Arc::ptr_eq(&a.owner_id, &b.owner_id));
        interner.share(&mut a);
        interner.share(&mut b);
        assert!(Arc::ptr_eq(&a.owner_id, &b.owner_id));
        assert!(Arc::ptr_eq(&a.environment, &b.environment));
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes));
        drop((a, b));
        interner.prune();
        assert!(interner.strings.0.lock().unwrap().is_empty());
        assert!(interner.scope_sets.0.lock().unwrap().is_empty());
    }
}
