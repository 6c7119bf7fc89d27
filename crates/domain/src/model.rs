//! The key model as the rest of Keygate sees it: a logical [`ApiKey`] with one
//! or more [`Credential`]s (secrets). Plain data; the rules that act on it live
//! in the sibling modules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::scope::Scope;

/// A key's stored state. `Expired` is not stored: it is derived from
/// `expires_at` by [`ApiKey::status_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Authorizes requests.
    Active,
    /// Switched off; may be switched on again.
    Disabled,
    /// Permanently ended.
    Revoked,
}

impl KeyState {
    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a name written by [`KeyState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// A key's status as shown to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Authorizes requests.
    Active,
    /// Switched off.
    Disabled,
    /// Past its expiry.
    Expired,
    /// Permanently ended.
    Revoked,
    /// Soft-deleted (whatever its stored state), until restored or purged.
    Deleted,
}

/// One secret of a key. The secret itself is never held: only its salted hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// First 8 characters of the key body; stored in clear, unique, indexed.
    pub lookup_id: String,
    /// Random per-credential salt.
    pub salt: [u8; 16],
    /// `SHA-256(salt || key)`.
    pub hash: [u8; 32],
    /// Last 4 characters of the key.
    pub hint: String,
    /// When the secret was issued.
    pub created_at: DateTime<Utc>,
    /// When the secret stops working (end of a rotation grace period); `None`
    /// means it lives as long as the key.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the secret was last presented successfully.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl Credential {
    /// Whether this secret still works at `now` (ignoring the key's own state).
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// The logical key that admins manage. Its id is stable across rotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Stable id (a UUIDv7 string).
    pub id: String,
    /// Tenant, organisation or customer.
    pub owner_id: String,
    /// Human name.
    pub name: String,
    /// The one environment the key belongs to.
    pub environment: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Networks requests may come from; empty = any.
    pub ip_allowlist: Vec<IpNet>,
    /// Per-key requests per hour; `None` = the server default.
    pub rate_limit_per_hour: Option<u32>,
    /// Stored state.
    pub state: KeyState,
    /// Key expiry; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The visible start of its secrets, such as `kg_live_`.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the record.
    pub updated_at: DateTime<Utc>,
    /// Last successful use of any credential.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why revoked.
    pub revoked_reason: Option<String>,
    /// Bumped by storage on every change to the key, starting at 1: the
    /// order of the key's states, and its etag.
    pub version: u64,
    /// Secrets, newest first. Never empty for a stored key.
    pub credentials: Vec<Credential>,
    /// The owner's own data about the key, returned by Authorize.
    pub metadata: BTreeMap<String, String>,
    /// When soft-deleted; `None` unless deleted. Deletion leaves `state`
    /// as it was, so restoring the key restores its state.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When a deleted key is removed for good.
    pub purge_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// The status a user sees at `now`. Deleted wins over everything,
    /// revoked and disabled over expired.
    pub fn status_at(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.deleted_at.is_some() {
            return KeyStatus::Deleted;
        }
        match self.state {
            KeyState::Revoked => KeyStatus::Revoked,
            KeyState::Disabled => KeyStatus::Disabled,
            KeyState::Active if self.expires_at.is_some_and(|at| at <= now) => KeyStatus::Expired,
            KeyState::Active => KeyStatus::Active,
        }
    }

    /// The hint of the newest credential.
    pub fn hint(&self) -> &str {
        self.credentials.first().map_or("", |c| c.hint.as_str())
    }
}
