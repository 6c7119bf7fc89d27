//! The authorization decision for one presented key, as a pure function of
//! the key, the credential that matched, the request and the time. Keeping it
//! here, with a fixed and tested order of checks, means every caller reports
//! the same deny reason for the same situation.
//!
//! The order is:
//!
//! 1. key revoked → [`DenyReason::KeyRevoked`]
//! 2. key disabled → [`DenyReason::KeyDisabled`]
//! 3. key expired (`expires_at <= now`) → [`DenyReason::KeyExpired`]
//! 4. credential expired (rotation grace period over) → [`DenyReason::KeyExpired`]
//! 5. environment differs from the key's → [`DenyReason::EnvironmentMismatch`]
//! 6. client IP not in the allowlist → [`DenyReason::IpNotAllowed`]
//! 7. required scopes not granted → [`DenyReason::ScopeMissing`]
//!
//! Rate limiting ([`DenyReason::RateLimited`]) is applied afterwards by the
//! caller, so a request that would be denied anyway never spends allowance.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::allowlist;
use crate::model::KeyState;
use crate::scope::{self, Scope};
use crate::snapshot::{KeySnapshot, SecretCheck};

/// Why a request was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Unparsable key, bad checksum, unknown lookup id or wrong secret.
    KeyInvalid,
    /// The key, or the presented credential, is past its expiry.
    KeyExpired,
    /// The key was revoked.
    KeyRevoked,
    /// The key is disabled.
    KeyDisabled,
    /// The key belongs to another environment.
    EnvironmentMismatch,
    /// The client address is not in the key's allowlist.
    IpNotAllowed,
    /// The key lacks some required scope.
    ScopeMissing,
    /// The key's rate limit is spent.
    RateLimited,
}

impl DenyReason {
    /// Every reason, in declaration order (so `reason as usize` is its
    /// position here).
    pub const ALL: [DenyReason; 8] = [
        Self::KeyInvalid,
        Self::KeyExpired,
        Self::KeyRevoked,
        Self::KeyDisabled,
        Self::EnvironmentMismatch,
        Self::IpNotAllowed,
        Self::ScopeMissing,
        Self::RateLimited,
    ];

    /// The reason's lowercase name (`key_revoked`), as the SDKs, the JSON
    /// bodies of proxied denials and the metrics labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::KeyInvalid => "key_invalid",
            Self::KeyExpired => "key_expired",
            Self::KeyRevoked => "key_revoked",
            Self::KeyDisabled => "key_disabled",
            Self::EnvironmentMismatch => "environment_mismatch",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::ScopeMissing => "scope_missing",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The message shown to callers.
    pub fn message(self) -> &'static str {
        match self {
            Self::KeyInvalid => "Invalid API key",
            Self::KeyExpired => "API key expired",
            Self::KeyRevoked => "API key revoked",
            Self::KeyDisabled => "API key disabled",
            Self::EnvironmentMismatch => "API key not valid in this environment",
            Self::IpNotAllowed => "IP address not allowed",
            Self::ScopeMissing => "Insufficient permissions",
            Self::RateLimited => "Rate limit exceeded",
        }
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// The environment the calling service runs in.
    pub environment: &'a str,
    /// Scopes the operation needs; empty = any valid key.
    pub required_scopes: &'a [Scope],
    /// The end client's address, if known.
    pub client_ip: Option<IpAddr>,
}

/// A denied request: the reason and, for [`DenyReason::ScopeMissing`], the
/// scopes not granted (empty otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub reason: DenyReason,
    /// Required scopes the key does not grant, in request order, deduplicated.
    pub missing_scopes: Vec<Scope>,
}

impl Denial {
    /// A denial with no missing scopes.
    pub fn new(reason: DenyReason) -> Self {
        Self {
            reason,
            missing_scopes: Vec::new(),
        }
    }
}

impl From<DenyReason> for Denial {
    fn from(reason: DenyReason) -> Self {
        Self::new(reason)
    }
}

/// Decides whether `key`, presented through `credential`, may serve
/// `request` at `now`, checking in the order documented on this module.
pub fn check(
    key: &KeySnapshot,
    credential: &SecretCheck,
    request: &AccessRequest<'_>,
    now: DateTime<Utc>,
) -> Result<(), Denial> {
    match key.state {
        KeyState::Revoked => return Err(DenyReason::KeyRevoked.into()),
        KeyState::Disabled => return Err(DenyReason::KeyDisabled.into()),
        KeyState::Active => {}
    }
    if key.expires_at.is_some_and(|at| at <= now) || !credential.is_live_at(now) {
        return Err(DenyReason::KeyExpired.into());
    }
    if *key.environment != *request.environment {
        return Err(DenyReason::EnvironmentMismatch.into());
    }
    if !allowlist::allows(&key.ip_allowlist, request.client_ip) {
        return Err(DenyReason::IpNotAllowed.into());
    }
    let missing = scope::missing(&key.scopes, request.required_scopes);
    if !missing.is_empty() {
        return Err(Denial {
            reason: DenyReason::ScopeMissing,
            missing_scopes: missing,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_order_with_its_own_name() {
        for (i, reason) in DenyReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        let names: std::collections::HashSet<&str> =
            DenyReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DenyReason::ALL.len());
    }
    use crate::{ApiKey, Credential};

    /// `check` on the snapshot of a full key record.
    fn check(
        key: &ApiKey,
        cred: &Credential,
        request: &AccessRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), Denial> {
        super::check(
            &KeySnapshot::from(key),
            &SecretCheck::from(cred),
            request,
            now,
        )
    }

    use crate::allowlist::parse_network;
    use crate::hashing::issue_credential;
    use crate::keyformat::KeyFormat;
    use chrono::{Duration, TimeZone};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
    }

    fn sc(v: &[&str]) -> Vec<Scope> {
        v.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    fn key_and_cred() -> (ApiKey, Credential, String) {
        let (generated, cred) =
            issue_credential(&KeyFormat::default(), "live", now() - Duration::days(1));
        let key = ApiKey {
            id: "0190-key".into(),
            owner_id: "acme".into(),
            name: "ci".into(),
            environment: "live".into(),
            scopes: sc(&["dns:read", "billing:*"]),
            ip_allowlist: vec![parse_network("10.0.0.0/8").unwrap()],
            rate_limit_per_hour: None,
            state: KeyState::Active,
            expires_at: Some(now() + Duration::days(1)),
            prefix: "kg_live_".into(),
            created_at: now() - Duration::days(1),
            updated_at: now() - Duration::days(1),
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            version: 1,
            credentials: vec![cred.clone()],
            metadata: Default::default(),
            deleted_at: None,
            purge_at: None,
        };
        (key, cred, generated.secret)
    }

    /// Breaks one thing (or several) about a valid request.
    #[derive(Clone, Copy, Debug, Default)]
    struct Faults {
        revoked: bool,
        disabled: bool,
        key_expired: bool,
        cred_expired: bool,
        env: bool,
        ip: bool,
        scope: bool,
    }

    fn run(f: Faults) -> Result<(), Denial> {
        let (mut key, mut cred, _) = key_and_cred();
        if f.revoked {
            key.state = KeyState::Revoked;
        }
        if f.disabled && !f.revoked {
            key.state = KeyState::Disabled;
        }
        if f.key_expired {
            key.expires_at = Some(now());
        }
        if f.cred_expired {
            cred.expires_at = Some(now() - Duration::seconds(1));
        }
        let required = if f.scope {
            sc(&["dns:write", "dns:read", "dns:write"])
        } else {
            sc(&["dns:read", "billing:pay"])
        };
        let request = AccessRequest {
            environment: if f.env { "test" } else { "live" },
            required_scopes: &required,
            client_ip: Some(
                if f.ip {
                    "192.168.0.1"
                } else {
                    "::ffff:10.1.1.1"
                }
                .parse()
                .unwrap(),
            ),
        };
        check(&key, &cred, &request, now())
    }

    #[test]
    fn valid_request_is_allowed() {
        assert_eq!(run(Faults::default()), Ok(()));
    }

    #[test]
    fn order_of_checks() {
        let all = Faults {
            revoked: true,
            disabled: true,
            key_expired: true,
            cred_expired: true,
            env: true,
            ip: true,
            scope: true,
        };
        // Each row switches off the faults that earlier rows reported.
        let table: &[(Faults, DenyReason)] = &[
            (all, DenyReason::KeyRevoked),
            (
                Faults {
                    revoked: false,
                    ..all
                },
                DenyReason::KeyDisabled,
            ),
            (
                Faults {
                    revoked: false,
                    disabled: false,
                    ..all
                },
                DenyReason::KeyExpired,
            ),
            (
                Faults {
                    revoked: false,
                    disabled: false,
                    key_expired: false,
                    ..all
                },
                DenyReason::KeyExpired,
            ),
            (
                Faults {
                    revoked: false,
                    disabled: false,
                    key_expired: false,
                    cred_expired: false,
                    ..all
                },
                DenyReason::EnvironmentMismatch,
            ),
            (
                Faults {
                    ip: true,
                    scope: true,
                    ..Faults::default()
                },
                DenyReason::IpNotAllowed,
            ),
            (
                Faults {
                    scope: true,
                    ..Faults::default()
                },
                DenyReason::ScopeMissing,
            ),
        ];
        for (faults, want) in table {
            let got = run(*faults).unwrap_err();
            assert_eq!(got.reason, *want, "{faults:?}");
            if *want != DenyReason::ScopeMissing {
                assert!(got.missing_scopes.is_empty());
            }
        }
    }

    #[test]
    fn each_fault_alone() {
        let table: &[(Faults, DenyReason)] = &[
            (
                Faults {
                    revoked: true,
                    ..Faults::default()
                },
                DenyReason::KeyRevoked,
            ),
            (
                Faults {
                    disabled: true,
                    ..Faults::default()
                },
                DenyReason::KeyDisabled,
            ),
            (
                Faults {
                    key_expired: true,
                    ..Faults::default()
                },
                DenyReason::KeyExpired,
            ),
            (
                Faults {
                    cred_expired: true,
                    ..Faults::default()
                },
                DenyReason::KeyExpired,
            ),
            (
                Faults {
                    env: true,
                    ..Faults::default()
                },
                DenyReason::EnvironmentMismatch,
            ),
            (
                Faults {
                    ip: true,
                    ..Faults::default()
                },
                DenyReason::IpNotAllowed,
            ),
            (
                Faults {
                    scope: true,
                    ..Faults::default()
                },
                DenyReason::ScopeMissing,
            ),
        ];
        for (faults, want) in table {
            assert_eq!(run(*faults).unwrap_err().reason, *want, "{faults:?}");
        }
    }

    #[test]
    fn missing_scopes_are_listed() {
        let d = run(Faults {
            scope: true,
            ..Faults::default()
        })
        .unwrap_err();
        assert_eq!(d.missing_scopes, sc(&["dns:write"]));
    }

    #[test]
    fn expiry_boundaries() {
        let (mut key, mut cred, _) = key_and_cred();
        let req = AccessRequest {
            environment: "live",
            required_scopes: &[],
            client_ip: "10.0.0.1".parse().ok(),
        };
        key.expires_at = Some(now() + Duration::nanoseconds(1));
        assert!(check(&key, &cred, &req, now()).is_ok());
        key.expires_at = None;
        cred.expires_at = Some(now());
        assert_eq!(
            check(&key, &cred, &req, now()).unwrap_err().reason,
            DenyReason::KeyExpired
        );
        cred.expires_at = Some(now() + Duration::seconds(1));
        assert!(check(&key, &cred, &req, now()).is_ok());
    }

    #[test]
    fn unknown_client_with_allowlist_is_denied() {
        let (key, cred, _) = key_and_cred();
        let req = AccessRequest {
            environment: "live",
            required_scopes: &[],
            client_ip: None,
        };
        assert_eq!(
            check(&key, &cred, &req, now()).unwrap_err().reason,
            DenyReason::IpNotAllowed
        );
    }

    #[test]
    fn messages() {
        assert_eq!(DenyReason::KeyInvalid.message(), "Invalid API key");
        assert_eq!(DenyReason::KeyExpired.message(), "API key expired");
        assert_eq!(DenyReason::KeyRevoked.message(), "API key revoked");
        assert_eq!(DenyReason::KeyDisabled.message(), "API key disabled");
        assert_eq!(
            DenyReason::EnvironmentMismatch.message(),
            "API key not valid in this environment"
        );
        assert_eq!(DenyReason::IpNotAllowed.message(), "IP address not allowed");
        assert_eq!(
            DenyReason::ScopeMissing.message(),
            "Insufficient permissions"
        );
        assert_eq!(DenyReason::RateLimited.message(), "Rate limit exceeded");
    }
}
