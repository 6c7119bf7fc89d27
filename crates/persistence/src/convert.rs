//! Translation between stored rows and the domain model. Stored rows are
//! never trusted blindly: anything unparsable becomes
//! [`StoreError::Corrupt`] naming the column, never a panic.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use keygate_domain::scope::Scope;
use keygate_domain::{ApiKey, Credential, KeyState};
use sea_orm::ActiveValue::Set;

use crate::entity::{api_key, credential, key_last_use};
use crate::error::StoreError;

/// The columns of `api_keys` written from a domain key (`request_count` is
/// left to its default; last uses are rows of their own,
/// [`last_use_rows`]).
pub(crate) fn key_to_active(key: &ApiKey) -> api_key::ActiveModel {
    api_key::ActiveModel {
        id: Set(key.id.clone()),
        owner_id: Set(key.owner_id.clone()),
        name: Set(key.name.clone()),
        environment: Set(key.environment.clone()),
        scopes: Set(scopes_json(&key.scopes)),
        ip_allowlist: Set(allowlist_json(&key.ip_allowlist)),
        rate_limit_per_hour: Set(key.rate_limit_per_hour.map(i64::from)),
        state: Set(key.state.as_str().to_owned()),
        expires_at: Set(key.expires_at),
        prefix: Set(key.prefix.clone()),
        created_at: Set(key.created_at),
        updated_at: Set(key.updated_at),
        revoked_at: Set(key.revoked_at),
        revoked_reason: Set(key.revoked_reason.clone()),
        request_count: Default::default(),
        version: Set(i64::try_from(key.version).unwrap_or(i64::MAX)),
        metadata: Set(metadata_json(&key.metadata)),
        deleted_at: Set(key.deleted_at),
        purge_at: Set(key.purge_at),
    }
}

/// A `credentials` row for `cred` of key `key_id`.
pub(crate) fn credential_to_active(key_id: &str, cred: &Credential) -> credential::ActiveModel {
    credential::ActiveModel {
        lookup_id: Set(cred.lookup_id.clone()),
        key_id: Set(key_id.to_owned()),
        salt: Set(cred.salt.to_vec()),
        hash: Set(cred.hash.to_vec()),
        hint: Set(cred.hint.clone()),
        created_at: Set(cred.created_at),
        expires_at: Set(cred.expires_at),
    }
}

/// The `key_last_uses` rows of a domain key: one per credential with a
/// last use. (A key's own `last_used_at` is the latest of its credentials'.)
pub(crate) fn last_use_rows(key: &ApiKey) -> impl Iterator<Item = key_last_use::ActiveModel> {
    key.credentials.iter().filter_map(|c| {
        c.last_used_at.map(|at| key_last_use::ActiveModel {
            key_id: Set(key.id.clone()),
            lookup_id: Set(c.lookup_id.clone()),
            used_at: Set(at),
        })
    })
}

/// Scopes as a JSON array of strings.
pub(crate) fn scopes_json(scopes: &[Scope]) -> String {
    json_array(scopes.iter().map(Scope::as_str))
}

/// Networks as a JSON array of CIDR strings.
pub(crate) fn allowlist_json(nets: &[IpNet]) -> String {
    let strings: Vec<String> = nets.iter().map(IpNet::to_string).collect();
    json_array(strings.iter().map(String::as_str))
}

/// Metadata as a JSON object of strings.
pub(crate) fn metadata_json(metadata: &BTreeMap<String, String>) -> String {
    // Serializing a map of strings cannot fail.
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned())
}

fn json_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    // Serializing a list of strings cannot fail.
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".to_owned())
}

/// A stored last use, if any.
pub(crate) type LastUse = Option<DateTime<Utc>>;

/// Key `key_id`'s credential rows, each with its last use from `uses`
/// (`key_last_uses` rows in any order; rows of other keys are ignored), and
/// the key's last use: the latest of its rows, including rows of
/// credentials since deleted.
pub(crate) fn with_last_uses(
    key_id: &str,
    credentials: Vec<credential::Model>,
    uses: &[key_last_use::Model],
) -> (Vec<(credential::Model, LastUse)>, LastUse) {
    let of_key = || uses.iter().filter(|u| u.key_id == key_id);
    let credentials = credentials
        .into_iter()
        .map(|c| {
            let used = of_key()
                .find(|u| u.lookup_id == c.lookup_id)
                .map(|u| u.used_at);
            (c, used)
        })
        .collect();
    (credentials, of_key().map(|u| u.used_at).max())
}

/// Rebuilds a domain key from its row, its credential rows (already ordered
/// newest first) with their last uses, and its own last use (see
/// [`with_last_uses`]).
pub(crate) fn key_from_rows(
    row: api_key::Model,
    credentials: Vec<(credential::Model, LastUse)>,
    last_used_at: LastUse,
) -> Result<ApiKey, StoreError> {
    let id = row.id;
    let corrupt = |column: &str, detail: String| {
        StoreError::Corrupt(format!("api_keys.{column} of key {id}: {detail}"))
    };
    let scopes = parse_string_array(&row.scopes)
        .map_err(|e| corrupt("scopes", e))?
        .iter()
        .map(|s| Scope::parse(s).map_err(|e| corrupt("scopes", format!("{s:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let ip_allowlist = parse_string_array(&row.ip_allowlist)
        .map_err(|e| corrupt("ip_allowlist", e))?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .map_err(|e| corrupt("ip_allowlist", format!("{s:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let state = KeyState::parse(&row.state)
        .ok_or_else(|| corrupt("state", format!("unknown state {:?}", row.state)))?;
    let rate_limit_per_hour = row
        .rate_limit_per_hour
        .map(|n| u32::try_from(n).map_err(|_| corrupt("rate_limit_per_hour", n.to_string())))
        .transpose()?;
    let version = u64::try_from(row.version)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| corrupt("version", row.version.to_string()))?;
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&row.metadata).map_err(|e| corrupt("metadata", e.to_string()))?;
    let credentials = credentials
        .into_iter()
        .map(|(c, used)| credential_from_row(c, used))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ApiKey {
        id,
        owner_id: row.owner_id,
        name: row.name,
        environment: row.environment,
        scopes,
        ip_allowlist,
        rate_limit_per_hour,
        state,
        expires_at: row.expires_at,
        prefix: row.prefix,
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_used_at,
        revoked_at: row.revoked_at,
        revoked_reason: row.revoked_reason,
        version,
        credentials,
        metadata,
        deleted_at: row.deleted_at,
        purge_at: row.purge_at,
    })
}

fn credential_from_row(
    row: credential::Model,
    last_used_at: LastUse,
) -> Result<Credential, StoreError> {
    let corrupt = |column: &str, len: usize| {
        StoreError::Corrupt(format!(
            "credentials.{column} of lookup id {}: {len} bytes",
            row.lookup_id
        ))
    };
    let salt: [u8; 16] = row
        .salt
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("salt", row.salt.len()))?;
    let hash: [u8; 32] = row
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("hash", row.hash.len()))?;
    Ok(Credential {
        lookup_id: row.lookup_id,
        salt,
        hash,
        hint: row.hint,
        created_at: row.created_at,
        expires_at: row.expires_at,
        last_used_at,
    })
}

fn parse_string_array(text: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(text).map_err(|e| format!("not a json array of strings: {e}"))
}
