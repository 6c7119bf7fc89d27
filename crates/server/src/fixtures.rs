//! Key records for the server's unit tests.

use chrono::Utc;
use keygate_domain::{ApiKey, Credential, KeyState};

/// An active `acme`/`live` key with one credential under `lookup_id`.
pub(crate) fn api_key(id: &str, lookup_id: &str) -> ApiKey {
    let now = Utc::now();
    ApiKey {
        id: id.into(),
        owner_id: "acme".into(),
        name: "fixture".into(),
        environment: "live".into(),
        scopes: vec![],
        ip_allowlist: vec![],
        rate_limit_per_hour: None,
        state: KeyState::Active,
        expires_at: None,
        prefix: "kg_live_".into(),
        created_at: now,
        updated_at: now,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
        version: 1,
        credentials: vec![Credential {
            lookup_id: lookup_id.into(),
            salt: [1; 16],
            hash: [2; 32],
            hint: "abcd".into(),
            created_at: now,
            expires_at: None,
            last_used_at: None,
        }],
        metadata: Default::default(),
        deleted_at: None,
        purge_at: None,
    }
}
