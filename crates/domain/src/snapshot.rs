//! A compact, immutable view of a key holding only what an authorization
//! decision needs. The server caches one per key for the hot path, so it is
//! kept small: boxed slices instead of vectors, fixed-size arrays for the
//! lookup id, salt and hash, shareable (`Arc`) strings and scope lists that
//! many keys have in common, and nothing a decision never reads (name,
//! timestamps, hints, revocation reason).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::{
    hashing,
    model::{ApiKey, Credential, KeyState},
    scope::Scope,
};

/// One secret of a key, as the hot path checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCheck {
    /// The lookup id (8 ASCII characters of the key body).
    pub lookup_id: [u8; 8],
    /// Per-credential salt.
    pub salt: [u8; 16],
    /// `SHA-256(salt || key)`.
    pub hash: [u8; 32],
    /// When the secret stops working; `None` = with the key.
    pub expires_at: Option<DateTime<Utc>>,
}

impl SecretCheck {
    /// Whether this secret still works at `now` (ignoring the key's state).
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// The lookup id as text.
    pub fn lookup_id(&self) -> &str {
        std::str::from_utf8(&self.lookup_id).unwrap_or_default()
    }

    /// Whether `presented` is this secret (constant-time compare).
    pub fn verifies(&self, presented: &str) -> bool {
        hashing::verify(&self.salt, &self.hash, presented)
    }
}

/// A lookup id as 8 bytes (zero-padded if shorter), the form the hot path
/// stores and compares.
pub fn lookup_id_bytes(lookup_id: &str) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    let n = lookup_id.len().min(8);
    bytes[..n].copy_from_slice(&lookup_id.as_bytes()[..n]);
    bytes
}

impl From<&Credential> for SecretCheck {
    fn from(c: &Credential) -> Self {
        Self {
            lookup_id: lookup_id_bytes(&c.lookup_id),
            salt: c.salt,
            hash: c.hash,
            expires_at: c.expires_at,
        }
    }
}

/// A key's metadata entries, in key order, shared by its snapshots.
pub type Metadata = Arc<[(Box<str>, Box<str>)]>;

/// What Authorize needs to know about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySnapshot {
    /// Stable key id (shareable, so per-key state can hold the same string).
    pub id: Arc<str>,
    /// Owner (tenant); shareable between the keys of one owner.
    pub owner_id: Arc<str>,
    /// The key's environment; shareable between keys.
    pub environment: Arc<str>,
    /// Granted scopes; shareable between keys with the same scopes.
    pub scopes: Arc<[Scope]>,
    /// Allowed networks; empty = any.
    pub ip_allowlist: Box<[IpNet]>,
    /// Per-key requests per hour; `None` = the server default.
    pub rate_limit_per_hour: Option<u32>,
    /// Stored state.
    pub state: KeyState,
    /// Key expiry; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Its secrets.
    pub secrets: Box<[SecretCheck]>,
    /// The stored version this snapshot was read at: a snapshot with a lower
    /// version than one already heard of is out of date.
    pub version: u64,
    /// The key's metadata, returned on allow; `None` when it has none.
    pub metadata: Option<Metadata>,
}

impl KeySnapshot {
    /// The secret with `lookup_id` whose hash matches `presented` (compared
    /// in constant time); `None` if there is none.
    pub fn find_secret(&self, lookup_id: &str, presented: &str) -> Option<&SecretCheck> {
        self.secrets
            .iter()
            .filter(|s| s.lookup_id.as_slice() == lookup_id.as_bytes())
            .find(|s| s.verifies(presented))
    }

    /// Lookup ids of all its secrets.
    pub fn lookup_ids(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(SecretCheck::lookup_id)
    }
}

impl From<&ApiKey> for KeySnapshot {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id.as_str().into(),
            owner_id: key.owner_id.as_str().into(),
            environment: key.environment.as_str().into(),
            scopes: key.scopes.as_slice().into(),
            ip_allowlist: key.ip_allowlist.clone().into_boxed_slice(),
            rate_limit_per_hour: key.rate_limit_per_hour,
            state: key.state,
            expires_at: key.expires_at,
            secrets: key.credentials.iter().map(SecretCheck::from).collect(),
            version: key.version,
            metadata: (!key.metadata.is_empty()).then(|| {
                key.metadata
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hashing::issue_credential, keyformat::KeyFormat};

    #[test]
    fn finds_the_secret_by_lookup_id_and_hash() {
        let now = Utc::now();
        let format = KeyFormat::default();
        let (old_key, old) = issue_credential(&format, "live", now);
        let (new_key, new) = issue_credential(&format, "live", now);
        let snapshot = KeySnapshot {
            id: "k".into(),
            owner_id: "o".into(),
            environment: "live".into(),
            scopes: Arc::new([]),
            ip_allowlist: Box::new([]),
            rate_limit_per_hour: None,
            state: KeyState::Active,
            expires_at: None,
            secrets: vec![SecretCheck::from(&new), SecretCheck::from(&old)].into(),
            version: 1,
            metadata: None,
        };
        let found = snapshot
            .find_secret(&old.lookup_id, &old_key.secret)
            .unwrap();
        assert_eq!(found.lookup_id(), old.lookup_id);
        assert!(
            snapshot
                .find_secret(&new.lookup_id, &new_key.secret)
                .is_some()
        );
        // Right lookup id, wrong secret; unknown lookup id.
        assert!(
            snapshot
                .find_secret(&old.lookup_id, &new_key.secret)
                .is_none()
        );
        assert!(snapshot.find_secret("zzzzzzzz", &old_key.secret).is_none());
        assert_eq!(
            snapshot.lookup_ids().collect::<Vec<_>>(),
            vec![new.lookup_id.as_str(), old.lookup_id.as_str()]
        );
    }

    #[test]
    fn a_snapshot_is_small() {
        // The hot-path cache holds one per key: keep the inline part tight.
        assert!(
            std::mem::size_of::<KeySnapshot>() <= 152,
            "{}",
            std::mem::size_of::<KeySnapshot>()
        );
        assert!(std::mem::size_of::<SecretCheck>() <= 72);
    }
}
