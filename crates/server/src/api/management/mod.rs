//! `keygate.v1.KeyManagementService`: the key lifecycle for admins and
//! automation. Every call authenticates its bearer key first, then checks the
//! right it needs (before looking at whether the target exists), then acts,
//! and applies the change to this replica's cache before answering.
//!
//! Every change is a compare-and-set ([`ManagementService::change`]): read
//! the key, check the caller's rights and the key's state on what was read,
//! then write conditionally on the version read. If another change won in
//! between, the whole decision is taken again on the new state (or, when the
//! caller sent an `etag`, the call is ABORTED), so no change is ever lost or
//! applied on top of a state nobody checked, and a revoked key stays revoked
//! (FAILED_PRECONDITION).

use std::{future::Future, sync::Arc};

use chrono::{DateTime, Utc};
use keygate::v1::{self as pb, key_management_service_server::KeyManagementService};
use keygate_domain::{
    ApiKey, Credential, KeyState, KeyStatus,
    audit::Actor,
    environment::Environments,
    hashing,
    keyformat::KeyFormat,
    page_token,
    rights::{Access, Principal, RightsError},
    usage::UsageRange,
    validation::{self, NewKey},
};
use keygate_persistence::{KeyFilter, KeyUpdate, Store, StoreError};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{api::convert, error::ApiError, hotpath::authorizer::Authorizer, metrics::Metrics};

mod audit;
mod lifecycle;

/// Keys per ListKeys page when the request names no page size.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Most keys per ListKeys page; larger requests are served this many.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// The KeyManagementService implementation.
#[derive(Debug, Clone)]
pub struct ManagementService {
    store: Store,
    authorizer: Arc<Authorizer>,
    environments: Environments,
    purge_after: chrono::Duration,
}

type RpcResult<T> = Result<Response<T>, Status>;

/// Runs one management call in a span naming the method, the target
/// `key_id` (empty for CreateKey and ListKeys) and, once authenticated, the actor's
/// key id; logs its result (the gRPC code, never a message or a secret)
/// when it ends. With `KEYGATE_LOG_FORMAT=json` that is one JSON object per
/// call, carrying the span's fields.
async fn logged<T>(
    metrics: &Metrics,
    method: &'static str,
    target: String,
    call: impl Future<Output = RpcResult<T>>,
) -> RpcResult<T> {
    // Key ids are UUIDs; anything else is not logged (it may be a secret
    // pasted into the wrong field).
    let target = if target.is_empty() || uuid::Uuid::try_parse(&target).is_ok() {
        target
    } else {
        "(not a key id)".to_owned()
    };
    let span = tracing::info_span!(
        "management",
        method,
        key_id = %target,
        actor = tracing::field::Empty
    );
    async move {
        let result = call.await;
        match &result {
            Ok(_) => tracing::info!(result = "OK", "management call"),
            Err(status) => tracing::info!(result = ?status.code(), "management call"),
        }
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        metrics.management_call(method, code);
        result
    }
    .instrument(span)
    .await
}

impl ManagementService {
    /// A service over `store`, authenticating through `authorizer`;
    /// deleted keys are purged `purge_after` their deletion.
    pub fn new(
        store: Store,
        authorizer: Arc<Authorizer>,
        environments: Environments,
        purge_after: std::time::Duration,
    ) -> Self {
        Self {
            store,
            authorizer,
            environments,
            purge_after: chrono::Duration::from_std(purge_after)
                .unwrap_or(chrono::Duration::days(30)),
        }
    }

    /// Who is making a change: `principal`, calling `method` from the
    /// request's peer, giving `reason`.
    fn actor<T>(request: &Request<T>, principal: &Principal, method: &str, reason: &str) -> Actor {
        Actor {
            key_id: principal.key_id.clone(),
            owner_id: principal.owner_id.clone(),
            method: method.to_owned(),
            peer_address: request
                .remote_addr()
                .map(|addr| addr.ip().to_canonical().to_string())
                .unwrap_or_default(),
            reason: reason.to_owned(),
        }
    }

    async fn principal<T>(
        &self,
        request: &Request<T>,
        access: Access,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        let bearer = request
            .metadata()
            .get("authorization")
            .map(|value| value.to_str().unwrap_or_default());
        let peer = request.remote_addr().map(|addr| addr.ip());
        let principal = self.authorizer.authenticate(bearer, peer, now).await?;
        tracing::Span::current().record("actor", principal.key_id.as_str());
        principal.require(access)?;
        Ok(principal)
    }

    /// Loads a key the principal may see; another owner's key is NOT_FOUND.
    async fn visible_key(&self, principal: &Principal, key_id: &str) -> Result<ApiKey, ApiError> {
        let key_id = validation::validate_key_id(key_id)?;
        let key = self
            .store
            .get_key(key_id)
            .await?
            .ok_or_else(|| ApiError::KeyNotFound(key_id.to_owned()))?;
        principal
            .may_touch(&key.owner_id, &key.environment)
            .map_err(|_| ApiError::KeyNotFound(key_id.to_owned()))?;
        Ok(key)
    }

    /// Loads a key the principal may change: visible, and within its scopes.
    async fn writable_key(&self, principal: &Principal, key_id: &str) -> Result<ApiKey, ApiError> {
        let key = self.visible_key(principal, key_id).await?;
        principal.may_grant(&key.scopes)?;
        Ok(key)
    }

    /// Applies a change made by this replica to its cache.
    fn note_change(&self, key_id: &str, version: u64, credentials: &[&[Credential]]) {
        let lookup_ids: Vec<&str> = credentials
            .iter()
            .flat_map(|creds| creds.iter().map(|c| c.lookup_id.as_str()))
            .collect();
        self.authorizer.note_change(key_id, version, &lookup_ids);
    }

    /// Changes key `key_id` as `decide` says, as a compare-and-set.
    ///
    /// Reads the key (it must be visible to and within the scopes of
    /// `principal`), asks `decide` what to do with that state (an error, for
    /// example because the key is revoked; nothing; or a write), checks the
    /// caller's `etag` (empty: none), then writes conditionally on the
    /// version read. A lost race starts over on the new state, up to
    /// [`MAX_CHANGE_ATTEMPTS`] times; with an etag it is ABORTED instead.
    async fn change(
        &self,
        principal: &Principal,
        actor: &Actor,
        key_id: &str,
        etag: &str,
        now: DateTime<Utc>,
        decide: impl Fn(&ApiKey) -> Result<Option<Write>, ApiError>,
    ) -> Result<ApiKey, ApiError> {
        let expected = if etag.is_empty() {
            None
        } else {
            Some(
                keygate_domain::etag::decode(etag)
                    .map_err(|err| ApiError::invalid("etag", err.to_string()))?,
            )
        };
        for _ in 0..MAX_CHANGE_ATTEMPTS {
            let key = self.writable_key(principal, key_id).await?;
            let write = decide(&key)?;
            if key.deleted_at.is_some() && !write.as_ref().is_some_and(Write::may_touch_deleted) {
                return Err(Self::deleted(&key));
            }
            if let Some(expected) = expected.filter(|v| *v != key.version) {
                return Err(stale_etag(&key, expected));
            }
            let Some(write) = write else {
                return Ok(key);
            };
            let result = match &write {
                Write::Update(update) => {
                    self.store
                        .update_key(&key.id, key.version, update, now, actor, Some(&key))
                        .await
                }
                Write::Rotate {
                    credential,
                    old_expire_at,
                } => {
                    self.store
                        .rotate_key(
                            &key.id,
                            key.version,
                            credential,
                            *old_expire_at,
                            now,
                            actor,
                            Some(&key),
                        )
                        .await
                }
            };
            match result {
                Ok(changed) => {
                    // Old credentials too: a rotation may have deleted some.
                    self.note_change(
                        &changed.id,
                        changed.version,
                        &[&changed.credentials, &key.credentials],
                    );
                    return Ok(changed);
                }
                // Another change won: decide again on what it left.
                Err(
                    StoreError::VersionMismatch { .. }
                    | StoreError::KeyRevoked
                    | StoreError::KeyDeleted
                    | StoreError::NotDeleted,
                ) => continue,
                Err(StoreError::Purged) => return Err(Self::purged(&key)),
                Err(StoreError::NotFound) => return Err(ApiError::KeyNotFound(key.id.clone())),
                Err(err) => {
                    // The change may or may not have committed: forget what
                    // this replica knows of the key.
                    self.note_change(&key.id, 0, &[&key.credentials]);
                    return Err(err.into());
                }
            }
        }
        Err(ApiError::Aborted {
            reason: "CONCURRENT_CHANGE",
            message: format!(
                "key {key_id} kept changing while this call tried to change it; read it and retry"
            ),
        })
    }

    fn view(&self, key: &ApiKey, now: DateTime<Utc>) -> pb::ApiKey {
        convert::api_key(key, now, |lookup_id| {
            self.authorizer.pending_last_used(&key.id, lookup_id)
        })
    }

    fn deleted(key: &ApiKey) -> ApiError {
        ApiError::FailedPrecondition {
            reason: "KEY_DELETED",
            message: format!(
                "key {} is deleted; only UndeleteKey changes it (until its purge time)",
                key.id
            ),
        }
    }

    fn purged(key: &ApiKey) -> ApiError {
        ApiError::FailedPrecondition {
            reason: "KEY_PURGED",
            message: format!(
                "key {} passed its purge time and can no longer be restored",
                key.id
            ),
        }
    }

    fn revoked(key: &ApiKey, action: &str) -> ApiError {
        ApiError::FailedPrecondition {
            reason: "KEY_REVOKED",
            message: format!("key {} is revoked and cannot be {action}", key.id),
        }
    }

    async fn usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> Result<pb::GetKeyUsageResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Read, now).await?;
        let req = request.into_inner();
        validation::validate_key_id(&req.key_id)?;
        let start = req
            .start_time
            .as_ref()
            .map(|ts| convert::from_timestamp("start_time", ts))
            .transpose()?;
        let end = req
            .end_time
            .as_ref()
            .map(|ts| convert::from_timestamp("end_time", ts))
            .transpose()?;
        let range = UsageRange::from_request(start, end, now)?;
        let key = self.visible_key(&principal, &req.key_id).await?;
        // Stored counts first, then this replica's unwritten ones: a flush
        // in between can hide its batch from this answer, never count it
        // twice.
        let stored = self
            .store
            .usage_buckets(&key.id, range.start, range.end)
            .await?;
        let pending = self.authorizer.pending_counts(&key.id);
        let buckets = range.buckets(stored.into_iter().chain(pending));
        Ok(pb::GetKeyUsageResponse {
            buckets: buckets.iter().map(convert::usage_bucket).collect(),
        })
    }

    async fn create(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<pb::CreateKeyResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "CreateKey", "");
        let input = convert::new_key_input(request.into_inner())?;
        let new = validation::validate_new_key(input, &self.environments, now)?;
        principal
            .may_touch(&new.owner_id, &new.environment)
            .map_err(|_| ApiError::PermissionDenied {
                reason: "OUT_OF_BOUNDS",
                message: format!(
                    "this management key may only create keys for owner {:?} in environment {:?}",
                    principal.owner_id, principal.environment
                ),
            })?;
        principal.may_grant(&new.scopes)?;
        let (secret, key) = issue_key(new, self.authorizer.format(), now);
        self.store.insert_key(&key, &actor).await?;
        // The lookup id may have been probed (and cached as unknown) before.
        self.note_change(&key.id, key.version, &[&key.credentials]);
        tracing::info!(key_id = %key.id, owner_id = %key.owner_id, by = %principal.key_id, "key created");
        Ok(pb::CreateKeyResponse {
            key: Some(self.view(&key, now)),
            secret,
        })
    }

    async fn list(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<pb::ListKeysResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Read, now).await?;
        let req = request.into_inner();
        let status = convert::status_filter(req.status)?;
        let page_size = match req.page_size {
            n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => u64::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        let last_used_before = req
            .last_used_before
            .as_ref()
            .map(|ts| convert::from_timestamp("last_used_before", ts))
            .transpose()?;
        let expires_before = req
            .expires_before
            .as_ref()
            .map(|ts| convert::from_timestamp("expires_before", ts))
            .transpose()?;
        if status == Some(KeyStatus::Deleted) && !req.show_deleted {
            return Err(ApiError::invalid(
                "status",
                "KEY_STATUS_DELETED needs show_deleted: deleted keys are left out otherwise",
            ));
        }
        let mut filter = KeyFilter {
            owner_id: Some(req.owner_id).filter(|s| !s.is_empty()),
            environment: Some(req.environment).filter(|s| !s.is_empty()),
            status,
            last_used_before,
            expires_before,
            show_deleted: req.show_deleted,
        };
        if let Some((owner, environment)) = principal.list_bounds() {
            let asks_other = filter.owner_id.as_deref().is_some_and(|o| o != owner)
                || filter
                    .environment
                    .as_deref()
                    .is_some_and(|e| e != environment);
            if asks_other {
                return Err(RightsError::OutOfBounds.into());
            }
            filter.owner_id = Some(owner.to_owned());
            filter.environment = Some(environment.to_owned());
        }
        let status_name = filter.status.map(|s| format!("{s:?}")).unwrap_or_default();
        let time_name = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.timestamp_nanos_opt().unwrap_or(i64::MAX).to_string())
                .unwrap_or_default()
        };
        let fingerprint = page_token::fingerprint(&[
            filter.owner_id.as_deref().unwrap_or(""),
            filter.environment.as_deref().unwrap_or(""),
            &status_name,
            &time_name(filter.last_used_before),
            &time_name(filter.expires_before),
            if filter.show_deleted { "deleted" } else { "" },
        ]);
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(
                page_token::decode(&req.page_token, fingerprint)
                    .map_err(|err| ApiError::invalid("page_token", err.to_string()))?,
            )
        };
        let mut keys = self
            .store
            .list_keys(&filter, after.as_deref(), page_size + 1, now)
            .await?;
        let next_page_token = if keys.len() as u64 > page_size {
            keys.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
            keys.last()
                .map(|k| page_token::encode(&k.id, fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Storage knows uses up to the last flush; this replica knows newer
        // ones. A key used since the bound is not "unused", whatever storage
        // says yet. (The page may come out shorter; the token is unaffected.)
        if let Some(bound) = filter.last_used_before {
            keys.retain(|key| {
                !key.credentials.iter().any(|c| {
                    self.authorizer
                        .pending_last_used(&key.id, &c.lookup_id)
                        .is_some_and(|at| at >= bound)
                })
            });
        }
        Ok(pb::ListKeysResponse {
            keys: keys.iter().map(|k| self.view(k, now)).collect(),
            next_page_token,
        })
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<pb::RotateKeyResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "RotateKey", "");
        let req = request.into_inner();
        let grace = match &req.grace_period {
            Some(d) => {
                validation::validate_grace_period(convert::from_duration("grace_period", d)?)?
            }
            None => chrono::Duration::zero(),
        };
        let old_expire_at = now + grace;
        // One new secret per call, issued for the key's environment once the
        // key has been read (a retried attempt reuses it).
        let issued = std::sync::OnceLock::new();
        let rotated = self
            .change(&principal, &actor, &req.key_id, &req.etag, now, |key| {
                if key.state == KeyState::Revoked {
                    return Err(Self::revoked(key, "rotated"));
                }
                let (_, credential) = issued.get_or_init(|| {
                    hashing::issue_credential(self.authorizer.format(), &key.environment, now)
                });
                Ok(Some(Write::Rotate {
                    credential: credential.clone(),
                    old_expire_at,
                }))
            })
            .await?;
        let (generated, _) = issued.into_inner().ok_or_else(|| {
            ApiError::Internal("rotation finished without issuing a secret".to_owned())
        })?;
        tracing::info!(key_id = %rotated.id, version = rotated.version, grace_secs = grace.num_seconds(), by = %principal.key_id, "key rotated");
        Ok(pb::RotateKeyResponse {
            key: Some(self.view(&rotated, now)),
            secret: generated.secret,
            previous_secret_expires_at: Some(convert::timestamp(old_expire_at)),
        })
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<pb::RevokeKeyResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "RevokeKey", "");
        let req = request.into_inner();
        let reason = validation::validate_reason(&req.reason)?;
        let actor = Actor {
            reason: reason.clone(),
            ..actor
        };
        let reason = Some(reason).filter(|r| !r.is_empty());
        let update = KeyUpdate::Revoke { reason };
        let key = self
            .change(&principal, &actor, &req.key_id, &req.etag, now, |key| {
                // Revoking a revoked key changes nothing: the first reason stays.
                Ok((key.state != KeyState::Revoked).then(|| Write::Update(update.clone())))
            })
            .await?;
        tracing::info!(key_id = %key.id, version = key.version, by = %principal.key_id, "key revoked");
        Ok(pb::RevokeKeyResponse {
            key: Some(self.view(&key, now)),
        })
    }

    async fn update_expiry(
        &self,
        request: Request<pb::UpdateKeyExpiryRequest>,
    ) -> Result<pb::UpdateKeyExpiryResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "UpdateKeyExpiry", "");
        let req = request.into_inner();
        let expires_at = req
            .expires_at
            .as_ref()
            .map(|ts| convert::from_timestamp("expires_at", ts))
            .transpose()?;
        let expires_at = validation::validate_expiry(expires_at, now)?;
        let key = self
            .change(&principal, &actor, &req.key_id, &req.etag, now, |key| {
                if key.state == KeyState::Revoked {
                    return Err(Self::revoked(key, "changed"));
                }
                Ok(Some(Write::Update(KeyUpdate::SetExpiry(expires_at))))
            })
            .await?;
        tracing::info!(key_id = %key.id, version = key.version, by = %principal.key_id, "key expiry changed");
        Ok(pb::UpdateKeyExpiryResponse {
            key: Some(self.view(&key, now)),
        })
    }

    async fn set_state<T>(
        &self,
        request: Request<T>,
        key_id: &str,
        etag: &str,
        state: KeyState,
    ) -> Result<pb::ApiKey, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let method = if state == KeyState::Active {
            "EnableKey"
        } else {
            "DisableKey"
        };
        let actor = Self::actor(&request, &principal, method, "");
        let key = self
            .change(&principal, &actor, key_id, etag, now, |key| {
                if key.state == KeyState::Revoked {
                    let action = if state == KeyState::Active {
                        "enabled"
                    } else {
                        "disabled"
                    };
                    return Err(Self::revoked(key, action));
                }
                Ok((key.state != state).then_some(Write::Update(KeyUpdate::SetState(state))))
            })
            .await?;
        tracing::info!(key_id = %key.id, state = key.state.as_str(), version = key.version, by = %principal.key_id, "key state set");
        Ok(self.view(&key, now))
    }
}

/// Times a change is decided again after losing a race before the call is
/// ABORTED (`CONCURRENT_CHANGE`).
const MAX_CHANGE_ATTEMPTS: usize = 8;

impl Write {
    /// Whether this write may apply to a deleted key.
    fn may_touch_deleted(&self) -> bool {
        matches!(self, Self::Update(KeyUpdate::Undelete))
    }
}

/// A write [`ManagementService::change`] makes.
#[derive(Clone, Debug)]
enum Write {
    /// A change of state or expiry.
    Update(KeyUpdate),
    /// A new credential; older ones end at `old_expire_at`.
    Rotate {
        credential: Credential,
        old_expire_at: DateTime<Utc>,
    },
}

/// ABORTED: the caller's etag names a version the key is no longer at.
fn stale_etag(key: &ApiKey, expected: u64) -> ApiError {
    ApiError::Aborted {
        reason: "ETAG_MISMATCH",
        message: format!(
            "etag {} is stale: key {} changed since (its etag is now {}); read it again",
            keygate_domain::etag::encode(expected),
            key.id,
            keygate_domain::etag::encode(key.version)
        ),
    }
}

/// Builds a new active key with its first secret; returns the secret (to be
/// shown once) and the record to store. Public so the benchmark's seeding
/// makes keys exactly as CreateKey does.
pub fn issue_key(new: NewKey, format: &KeyFormat, now: DateTime<Utc>) -> (String, ApiKey) {
    let (generated, credential) = hashing::issue_credential(format, &new.environment, now);
    let key = ApiKey {
        id: uuid::Uuid::now_v7().to_string(),
        prefix: format.display_prefix(&new.environment),
        owner_id: new.owner_id,
        name: new.name,
        environment: new.environment,
        scopes: new.scopes,
        ip_allowlist: new.ip_allowlist,
        rate_limit_per_hour: new.rate_limit_per_hour,
        state: KeyState::Active,
        expires_at: new.expires_at,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
        version: 1,
        credentials: vec![credential],
        metadata: new.metadata,
        deleted_at: None,
        purge_at: None,
    };
    (generated.secret, key)
}

#[tonic::async_trait]
impl KeyManagementService for ManagementService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> RpcResult<pb::CreateKeyResponse> {
        let target = String::new();
        logged(self.authorizer.metrics(), "CreateKey", target, async move {
            Ok(Response::new(self.create(request).await?))
        })
        .await
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> RpcResult<pb::GetKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(self.authorizer.metrics(), "GetKey", target, async move {
            let now = Utc::now();
            let principal = self.principal(&request, Access::Read, now).await?;
            let key = self
                .visible_key(&principal, &request.get_ref().key_id)
                .await?;
            Ok(Response::new(pb::GetKeyResponse {
                key: Some(self.view(&key, now)),
            }))
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> RpcResult<pb::ListKeysResponse> {
        let target = String::new();
        logged(self.authorizer.metrics(), "ListKeys", target, async move {
            Ok(Response::new(self.list(request).await?))
        })
        .await
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> RpcResult<pb::RotateKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(self.authorizer.metrics(), "RotateKey", target, async move {
            Ok(Response::new(self.rotate(request).await?))
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> RpcResult<pb::RevokeKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(self.authorizer.metrics(), "RevokeKey", target, async move {
            Ok(Response::new(self.revoke(request).await?))
        })
        .await
    }

    async fn update_key_expiry(
        &self,
        request: Request<pb::UpdateKeyExpiryRequest>,
    ) -> RpcResult<pb::UpdateKeyExpiryResponse> {
        let target = request.get_ref().key_id.clone();
        logged(
            self.authorizer.metrics(),
            "UpdateKeyExpiry",
            target,
            async move { Ok(Response::new(self.update_expiry(request).await?)) },
        )
        .await
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> RpcResult<pb::DisableKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(
            self.authorizer.metrics(),
            "DisableKey",
            target,
            async move {
                let key_id = request.get_ref().key_id.clone();
                let etag = request.get_ref().etag.clone();
                let key = self
                    .set_state(request, &key_id, &etag, KeyState::Disabled)
                    .await?;
                Ok(Response::new(pb::DisableKeyResponse { key: Some(key) }))
            },
        )
        .await
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> RpcResult<pb::EnableKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(self.authorizer.metrics(), "EnableKey", target, async move {
            let key_id = request.get_ref().key_id.clone();
            let etag = request.get_ref().etag.clone();
            let key = self
                .set_state(request, &key_id, &etag, KeyState::Active)
                .await?;
            Ok(Response::new(pb::EnableKeyResponse { key: Some(key) }))
        })
        .await
    }

    async fn get_key_usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> RpcResult<pb::GetKeyUsageResponse> {
        let target = request.get_ref().key_id.clone();
        logged(
            self.authorizer.metrics(),
            "GetKeyUsage",
            target,
            async move { Ok(Response::new(self.usage(request).await?)) },
        )
        .await
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> RpcResult<pb::UpdateKeyResponse> {
        let target = request
            .get_ref()
            .key
            .as_ref()
            .map(|k| k.key_id.clone())
            .unwrap_or_default();
        logged(self.authorizer.metrics(), "UpdateKey", target, async move {
            Ok(Response::new(self.update(request).await?))
        })
        .await
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> RpcResult<pb::DeleteKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(self.authorizer.metrics(), "DeleteKey", target, async move {
            Ok(Response::new(self.delete(request).await?))
        })
        .await
    }

    async fn undelete_key(
        &self,
        request: Request<pb::UndeleteKeyRequest>,
    ) -> RpcResult<pb::UndeleteKeyResponse> {
        let target = request.get_ref().key_id.clone();
        logged(
            self.authorizer.metrics(),
            "UndeleteKey",
            target,
            async move { Ok(Response::new(self.undelete(request).await?)) },
        )
        .await
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> RpcResult<pb::ListAuditEventsResponse> {
        let target = request.get_ref().key_id.clone();
        logged(
            self.authorizer.metrics(),
            "ListAuditEvents",
            target,
            async move { Ok(Response::new(self.audit_events(request).await?)) },
        )
        .await
    }
}
