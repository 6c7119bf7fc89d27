//! Proto ↔ domain conversion, in one place at the server's edge. Nothing
//! deeper than this module sees a prost type.

use chrono::{DateTime, TimeZone, Utc};
use keygate::v1 as pb;
use keygate_domain::{
    ApiKey, Credential, KeyStatus,
    audit::AuditEvent,
    policy::DenyReason,
    ratelimit::RateDecision,
    usage::{self, UsageBucket},
    validation::{Expiry, KeyPatchInput, NewKeyInput},
};

use crate::error::ApiError;

/// A timestamp on the wire.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A wire timestamp as UTC time; `field` names it in the error.
pub fn from_timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<DateTime<Utc>, ApiError> {
    // google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to
    // 9999-12-31T23:59:59.999999999Z (both backends store all of it).
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(ApiError::invalid(
            field,
            "outside 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
        ));
    }
    u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|nanos| Utc.timestamp_opt(ts.seconds, nanos).single())
        .ok_or_else(|| ApiError::invalid(field, "not a valid timestamp"))
}

/// A wire duration as a chrono duration; `field` names it in the error.
pub fn from_duration(field: &str, d: &prost_types::Duration) -> Result<chrono::Duration, ApiError> {
    let valid_sign = (d.seconds >= 0 && d.nanos >= 0) || (d.seconds <= 0 && d.nanos <= 0);
    if !valid_sign || d.nanos.abs() >= 1_000_000_000 {
        return Err(ApiError::invalid(field, "not a valid duration"));
    }
    chrono::Duration::try_seconds(d.seconds)
        .and_then(|s| s.checked_add(&chrono::Duration::nanoseconds(i64::from(d.nanos))))
        .ok_or_else(|| ApiError::invalid(field, "duration out of range"))
}

/// An hour of a key's usage on the wire.
pub fn usage_bucket(bucket: &UsageBucket) -> pb::UsageBucket {
    pb::UsageBucket {
        start_time: Some(timestamp(usage::bucket_time(bucket.hour_start))),
        allowed: bucket.counts.allowed,
        denied_rate_limited: bucket.counts.denied_rate_limited,
        denied_other: bucket.counts.denied_other,
    }
}

/// A duration in nanoseconds on the wire.
pub fn duration_from_nanos(nanos: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}

/// A key status on the wire.
pub fn status(status: KeyStatus) -> pb::KeyStatus {
    match status {
        KeyStatus::Active => pb::KeyStatus::Active,
        KeyStatus::Disabled => pb::KeyStatus::Disabled,
        KeyStatus::Expired => pb::KeyStatus::Expired,
        KeyStatus::Revoked => pb::KeyStatus::Revoked,
        KeyStatus::Deleted => pb::KeyStatus::Deleted,
    }
}

/// A ListKeys status filter: `None` for "any".
pub fn status_filter(raw: i32) -> Result<Option<KeyStatus>, ApiError> {
    match pb::KeyStatus::try_from(raw) {
        Ok(pb::KeyStatus::Unspecified) => Ok(None),
        Ok(pb::KeyStatus::Active) => Ok(Some(KeyStatus::Active)),
        Ok(pb::KeyStatus::Disabled) => Ok(Some(KeyStatus::Disabled)),
        Ok(pb::KeyStatus::Expired) => Ok(Some(KeyStatus::Expired)),
        Ok(pb::KeyStatus::Revoked) => Ok(Some(KeyStatus::Revoked)),
        Ok(pb::KeyStatus::Deleted) => Ok(Some(KeyStatus::Deleted)),
        Err(_) => Err(ApiError::invalid(
            "status",
            format!("unknown key status {raw}"),
        )),
    }
}

/// A deny reason on the wire.
pub fn deny_reason(reason: DenyReason) -> pb::DenyReason {
    match reason {
        DenyReason::KeyInvalid => pb::DenyReason::KeyInvalid,
        DenyReason::KeyExpired => pb::DenyReason::KeyExpired,
        DenyReason::KeyRevoked => pb::DenyReason::KeyRevoked,
        DenyReason::KeyDisabled => pb::DenyReason::KeyDisabled,
        DenyReason::EnvironmentMismatch => pb::DenyReason::EnvironmentMismatch,
        DenyReason::IpNotAllowed => pb::DenyReason::IpNotAllowed,
        DenyReason::ScopeMissing => pb::DenyReason::ScopeMissing,
        DenyReason::RateLimited => pb::DenyReason::RateLimited,
    }
}

/// Rate-limit figures on the wire.
pub fn rate_limit(rate: &RateDecision, now: DateTime<Utc>) -> pb::RateLimit {
    let reset =
        chrono::Duration::nanoseconds(i64::try_from(rate.reset_after_nanos).unwrap_or(i64::MAX));
    pb::RateLimit {
        limit: rate.limit,
        remaining: rate.remaining,
        reset_at: Some(timestamp(now + reset)),
        retry_after: Some(duration_from_nanos(rate.retry_after_nanos)),
    }
}

/// The fields of a CreateKey request, before validation.
pub fn new_key_input(req: pb::CreateKeyRequest) -> Result<NewKeyInput, ApiError> {
    let expiry = match &req.expiry {
        None => Expiry::Never,
        Some(pb::create_key_request::Expiry::ExpiresAt(ts)) => {
            Expiry::At(from_timestamp("expires_at", ts)?)
        }
        Some(pb::create_key_request::Expiry::Ttl(d)) => Expiry::Ttl(from_duration("ttl", d)?),
    };
    Ok(NewKeyInput {
        owner_id: req.owner_id,
        name: req.name,
        environment: req.environment,
        scopes: req.scopes,
        ip_allowlist: req.ip_allowlist,
        rate_limit_per_hour: req.rate_limit_per_hour,
        expiry,
        metadata: req.metadata.into_iter().collect(),
    })
}

/// The fields of an UpdateKey request, before validation: the key's id
/// and the patch.
pub fn key_patch_input(req: pb::UpdateKeyRequest) -> Result<(String, KeyPatchInput), ApiError> {
    let key = req
        .key
        .ok_or_else(|| ApiError::invalid("key", "must be set, with key_id naming the key"))?;
    let expires_at = key
        .expires_at
        .as_ref()
        .map(|ts| from_timestamp("key.expires_at", ts))
        .transpose()?;
    let paths = req.update_mask.map(|mask| mask.paths).unwrap_or_default();
    Ok((
        key.key_id,
        KeyPatchInput {
            paths,
            name: key.name,
            scopes: key.scopes,
            ip_allowlist: key.ip_allowlist,
            rate_limit_per_hour: key.rate_limit_per_hour,
            metadata: key.metadata.into_iter().collect(),
            expires_at,
        },
    ))
}

/// An audit event on the wire.
pub fn audit_event(event: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: event.event_id.clone(),
        time: Some(timestamp(event.time)),
        actor_key_id: event.actor_key_id.clone(),
        actor_owner_id: event.actor_owner_id.clone(),
        method: event.method.clone(),
        key_id: event.key_id.clone(),
        owner_id: event.owner_id.clone(),
        environment: event.environment.clone(),
        peer_address: event.peer_address.clone(),
        changes: event
            .changes
            .iter()
            .map(|c| pb::FieldChange {
                field: c.field.clone(),
                old_value: c.old_value.clone(),
                new_value: c.new_value.clone(),
            })
            .collect(),
        reason: event.reason.clone(),
    }
}

fn credential(c: &Credential, pending: &impl Fn(&str) -> Option<DateTime<Utc>>) -> pb::Credential {
    let last_used = c.last_used_at.max(pending(&c.lookup_id));
    pb::Credential {
        lookup_id: c.lookup_id.clone(),
        hint: c.hint.clone(),
        created_at: Some(timestamp(c.created_at)),
        expires_at: c.expires_at.map(timestamp),
        last_used_at: last_used.map(timestamp),
    }
}

/// A key's metadata on the wire, as of `now`, with usage not yet flushed
/// (`pending`: lookup id → newest unwritten use) folded in. Never carries a
/// secret, salt or hash.
pub fn api_key(
    key: &ApiKey,
    now: DateTime<Utc>,
    pending: impl Fn(&str) -> Option<DateTime<Utc>>,
) -> pb::ApiKey {
    let last_used_at = key
        .credentials
        .iter()
        .filter_map(|c| pending(&c.lookup_id))
        .chain(key.last_used_at)
        .max();
    pb::ApiKey {
        key_id: key.id.clone(),
        owner_id: key.owner_id.clone(),
        name: key.name.clone(),
        environment: key.environment.clone(),
        scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        ip_allowlist: key.ip_allowlist.iter().map(ToString::to_string).collect(),
        rate_limit_per_hour: key.rate_limit_per_hour,
        status: status(key.status_at(now)).into(),
        prefix: key.prefix.clone(),
        hint: key.hint().to_owned(),
        created_at: Some(timestamp(key.created_at)),
        updated_at: Some(timestamp(key.updated_at)),
        expires_at: key.expires_at.map(timestamp),
        last_used_at: last_used_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
        revoked_reason: key.revoked_reason.clone().unwrap_or_default(),
        credentials: key
            .credentials
            .iter()
            .map(|c| credential(c, &pending))
            .collect(),
        etag: keygate_domain::etag::encode(key.version),
        metadata: key
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        delete_time: key.deleted_at.map(timestamp),
        purge_time: key.purge_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_reject_mixed_signs_and_overflowing_nanos() {
        let bad = [
            prost_types::Duration {
                seconds: 1,
                nanos: -1,
            },
            prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000_000,
            },
            prost_types::Duration {
                seconds: i64::MAX,
                nanos: 0,
            },
        ];
        for d in bad {
            let err = from_duration("ttl", &d).unwrap_err();
            assert!(err.to_string().contains("ttl"), "{err}");
        }
        let ok = from_duration(
            "ttl",
            &prost_types::Duration {
                seconds: 90,
                nanos: 5,
            },
        )
        .unwrap();
        assert_eq!(
            ok,
            chrono::Duration::seconds(90) + chrono::Duration::nanoseconds(5)
        );
    }

    #[test]
    fn timestamps_round_trip_and_reject_bad_nanos() {
        let now = Utc::now();
        assert_eq!(from_timestamp("expires_at", &timestamp(now)).unwrap(), now);
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -5,
        };
        assert!(from_timestamp("expires_at", &bad).is_err());
    }

    #[test]
    fn unknown_status_filter_is_invalid() {
        assert!(status_filter(42).is_err());
        assert_eq!(status_filter(0).unwrap(), None);
        assert_eq!(status_filter(4).unwrap(), Some(KeyStatus::Revoked));
    }
}
