//! Who may manage which keys. Management calls are authenticated with a
//! Keygate key (the [`Principal`]); this module decides what that key may do.
//!
//! - `keys:admin` is the root of trust: it is what `keygate bootstrap` prints.
//!   It may read and change every key of every owner and environment, and may
//!   grant any scope.
//! - `keys:read` and `keys:write` act only within the principal's own owner
//!   and environment, and can never create, rotate or modify a key whose
//!   scopes exceed their own (checked with [`scope::grants`], the same rule
//!   Authorize uses).
//!
//! Keys of another owner or environment are reported as
//! [`RightsError::OutOfBounds`], which the server answers as NOT_FOUND so the
//! existence of other tenants' keys does not leak.

use crate::model::ApiKey;
use crate::scope::{self, KEYS_ADMIN, KEYS_READ, KEYS_WRITE, Scope};
use crate::snapshot::KeySnapshot;

/// The management key making a call.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Its key id.
    pub key_id: String,
    /// Its owner.
    pub owner_id: String,
    /// Its environment.
    pub environment: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

/// The kind of management access a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Get and list keys.
    Read,
    /// Create, rotate, update, disable, enable and revoke keys.
    Write,
}

/// Why a management call is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RightsError {
    /// The principal lacks the right (PERMISSION_DENIED).
    #[error("management key lacks the {needed} scope")]
    MissingRight {
        /// The scope that would allow the call.
        needed: &'static str,
    },
    /// The key belongs to another owner or environment (answered as NOT_FOUND
    /// so existence does not leak).
    #[error("key not found")]
    OutOfBounds,
    /// The call would give a key scopes the principal does not hold
    /// (PERMISSION_DENIED).
    #[error("cannot grant scopes beyond your own: {}", join(scopes))]
    ScopeEscalation {
        /// The scopes the principal does not hold.
        scopes: Vec<Scope>,
    },
}

fn join(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn scope_const(s: &'static str) -> Scope {
    Scope::parse(s).unwrap_or_else(|_| unreachable!("built-in scope {s} is valid"))
}

impl Principal {
    /// The principal for a management key.
    pub fn from_key(key: &ApiKey) -> Self {
        Self {
            key_id: key.id.clone(),
            owner_id: key.owner_id.clone(),
            environment: key.environment.clone(),
            scopes: key.scopes.clone(),
        }
    }

    /// The principal a management key's hot-path snapshot stands for.
    pub fn from_snapshot(key: &KeySnapshot) -> Self {
        Self {
            key_id: key.id.to_string(),
            owner_id: key.owner_id.to_string(),
            environment: key.environment.to_string(),
            scopes: key.scopes.to_vec(),
        }
    }

    fn holds(&self, s: &'static str) -> bool {
        scope::grants(&self.scopes, &scope_const(s))
    }

    /// Whether the principal holds `keys:admin` (directly, or via `keys:*` or `*`).
    pub fn is_admin(&self) -> bool {
        self.holds(KEYS_ADMIN)
    }

    /// Checks the principal may make a call needing `access`: reads need
    /// `keys:read`, `keys:write` or `keys:admin`; writes need `keys:write` or
    /// `keys:admin`.
    pub fn require(&self, access: Access) -> Result<(), RightsError> {
        let ok = match access {
            Access::Read => {
                self.holds(KEYS_READ) || self.holds(KEYS_WRITE) || self.holds(KEYS_ADMIN)
            }
            Access::Write => self.holds(KEYS_WRITE) || self.holds(KEYS_ADMIN),
        };
        if ok {
            Ok(())
        } else {
            Err(RightsError::MissingRight {
                needed: match access {
                    Access::Read => KEYS_READ,
                    Access::Write => KEYS_WRITE,
                },
            })
        }
    }

    /// Checks the principal may see or change a key of `owner_id` in
    /// `environment`: admins any, others only their own owner and environment.
    pub fn may_touch(&self, owner_id: &str, environment: &str) -> Result<(), RightsError> {
        if self.is_admin() || (self.owner_id == owner_id && self.environment == environment) {
            Ok(())
        } else {
            Err(RightsError::OutOfBounds)
        }
    }

    /// Checks the principal may give a key `scopes`: admins anything, others
    /// only what their own scopes grant.
    pub fn may_grant(&self, scopes: &[Scope]) -> Result<(), RightsError> {
        if self.is_admin() {
            return Ok(());
        }
        let not_held = scope::missing(&self.scopes, scopes);
        if not_held.is_empty() {
            Ok(())
        } else {
            Err(RightsError::ScopeEscalation { scopes: not_held })
        }
    }

    /// The owner and environment to force on ListKeys; `None` for admins.
    pub fn list_bounds(&self) -> Option<(&str, &str)> {
        if self.is_admin() {
            None
        } else {
            Some((&self.owner_id, &self.environment))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(scopes: &[&str]) -> Principal {
        Principal {
            key_id: "k1".into(),
            owner_id: "acme".into(),
            environment: "live".into(),
            scopes: sc(scopes),
        }
    }

    fn sc(v: &[&str]) -> Vec<Scope> {
        v.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    #[test]
    fn admin_detection() {
        assert!(p(&["keys:admin"]).is_admin());
        assert!(p(&["keys:*"]).is_admin());
        assert!(p(&["*"]).is_admin());
        assert!(!p(&["keys:write", "keys:read"]).is_admin());
        assert!(!p(&[]).is_admin());
    }

    #[test]
    fn require_table() {
        let cases: &[(&[&str], Access, bool)] = &[
            (&["keys:read"], Access::Read, true),
            (&["keys:read"], Access::Write, false),
            (&["keys:write"], Access::Read, true),
            (&["keys:write"], Access::Write, true),
            (&["keys:admin"], Access::Read, true),
            (&["keys:admin"], Access::Write, true),
            (&["keys:*"], Access::Write, true),
            (&["*"], Access::Write, true),
            (&["dns:*"], Access::Read, false),
            (&[], Access::Read, false),
        ];
        for (scopes, access, ok) in cases {
            assert_eq!(
                p(scopes).require(*access).is_ok(),
                *ok,
                "{scopes:?} {access:?}"
            );
        }
        assert_eq!(
            p(&["keys:read"]).require(Access::Write),
            Err(RightsError::MissingRight { needed: KEYS_WRITE })
        );
        assert_eq!(
            p(&[]).require(Access::Read),
            Err(RightsError::MissingRight { needed: KEYS_READ })
        );
        assert_eq!(
            RightsError::MissingRight { needed: KEYS_WRITE }.to_string(),
            "management key lacks the keys:write scope"
        );
    }

    #[test]
    fn bounds() {
        let writer = p(&["keys:write"]);
        assert_eq!(writer.may_touch("acme", "live"), Ok(()));
        assert_eq!(
            writer.may_touch("other", "live"),
            Err(RightsError::OutOfBounds)
        );
        assert_eq!(
            writer.may_touch("acme", "test"),
            Err(RightsError::OutOfBounds)
        );
        assert_eq!(writer.list_bounds(), Some(("acme", "live")));
        let admin = p(&["keys:admin"]);
        assert_eq!(admin.may_touch("other", "test"), Ok(()));
        assert_eq!(admin.list_bounds(), None);
    }

    #[test]
    fn no_escalation() {
        let writer = p(&["keys:write", "dns:*", "billing:read"]);
        assert_eq!(
            writer.may_grant(&sc(&["dns:read", "dns:*", "billing:read"])),
            Ok(())
        );
        assert_eq!(writer.may_grant(&[]), Ok(()));
        assert_eq!(
            writer.may_grant(&sc(&[
                "billing:write",
                "dns:read",
                "*",
                "keys:admin",
                "billing:write"
            ])),
            Err(RightsError::ScopeEscalation {
                scopes: sc(&["billing:write", "*", "keys:admin"])
            })
        );
        assert_eq!(
            writer.may_grant(&sc(&["billing:*"])),
            Err(RightsError::ScopeEscalation {
                scopes: sc(&["billing:*"])
            })
        );
        let err = writer.may_grant(&sc(&["a:b", "c:d"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot grant scopes beyond your own: a:b, c:d"
        );
        // A writer can hand on keys:write itself, but never keys:admin.
        assert_eq!(writer.may_grant(&sc(&["keys:write"])), Ok(()));
        assert!(writer.may_grant(&sc(&["keys:admin"])).is_err());
        assert_eq!(p(&["keys:admin"]).may_grant(&sc(&["*"])), Ok(()));
    }

    #[test]
    fn from_key_copies_identity() {
        let now = chrono::Utc::now();
        let key = ApiKey {
            id: "id1".into(),
            owner_id: "o".into(),
            name: "n".into(),
            environment: "test".into(),
            scopes: sc(&["keys:read"]),
            ip_allowlist: vec![],
            rate_limit_per_hour: None,
            state: crate::model::KeyState::Active,
            expires_at: None,
            prefix: "kg_test_".into(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            version: 1,
            credentials: vec![],
            metadata: Default::default(),
            deleted_at: None,
            purge_at: None,
        };
        let pr = Principal::from_key(&key);
        assert_eq!(pr.key_id, "id1");
        assert_eq!(pr.owner_id, "o");
        assert_eq!(pr.environment, "test");
        assert_eq!(pr.scopes, sc(&["keys:read"]));
    }
}
