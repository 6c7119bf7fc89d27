//! UpdateKey, DeleteKey and UndeleteKey: the changes that complete a key's
//! lifecycle, each a compare-and-set through [`ManagementService::change`]
//! like every other change, with its audit event in the same transaction.

use chrono::Utc;
use keygate::v1 as pb;
use keygate_domain::{KeyState, rights::Access, validation};
use keygate_persistence::KeyUpdate;
use tonic::Request;

use super::{ManagementService, Write};
use crate::{api::convert, error::ApiError};

impl ManagementService {
    pub(super) async fn update(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<pb::UpdateKeyResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "UpdateKey", "");
        let req = request.into_inner();
        let etag = req.etag.clone();
        let (key_id, input) = convert::key_patch_input(req)?;
        validation::validate_key_id(&key_id).map_err(|_| {
            ApiError::invalid("key.key_id", "must name the key to update (its key_id)")
        })?;
        let patch = validation::validate_key_patch(input, now)?;
        // Never widen a key beyond the caller's own scopes (the key's
        // current scopes are checked by `change` too).
        if let Some(scopes) = &patch.scopes {
            principal.may_grant(scopes)?;
        }
        let key = self
            .change(&principal, &actor, &key_id, &etag, now, |key| {
                if key.state == KeyState::Revoked {
                    return Err(Self::revoked(key, "changed"));
                }
                Ok(Some(Write::Update(KeyUpdate::Patch(patch.clone()))))
            })
            .await?;
        tracing::info!(key_id = %key.id, version = key.version, by = %principal.key_id, "key updated");
        Ok(pb::UpdateKeyResponse {
            key: Some(self.view(&key, now)),
        })
    }

    pub(super) async fn delete(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<pb::DeleteKeyResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "DeleteKey", "");
        let req = request.into_inner();
        let purge_at = now + self.purge_after;
        let key = self
            .change(&principal, &actor, &req.key_id, &req.etag, now, |_| {
                Ok(Some(Write::Update(KeyUpdate::Delete { purge_at })))
            })
            .await?;
        tracing::info!(key_id = %key.id, version = key.version, %purge_at, by = %principal.key_id, "key deleted");
        Ok(pb::DeleteKeyResponse {
            key: Some(self.view(&key, now)),
        })
    }

    pub(super) async fn undelete(
        &self,
        request: Request<pb::UndeleteKeyRequest>,
    ) -> Result<pb::UndeleteKeyResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Write, now).await?;
        let actor = Self::actor(&request, &principal, "UndeleteKey", "");
        let req = request.into_inner();
        let key = self
            .change(&principal, &actor, &req.key_id, "", now, |key| {
                match key.purge_at {
                    None => Err(ApiError::FailedPrecondition {
                        reason: "KEY_NOT_DELETED",
                        message: format!("key {} is not deleted", key.id),
                    }),
                    Some(at) if at <= now => Err(Self::purged(key)),
                    Some(_) => Ok(Some(Write::Update(KeyUpdate::Undelete))),
                }
            })
            .await?;
        tracing::info!(key_id = %key.id, version = key.version, by = %principal.key_id, "key restored");
        Ok(pb::UndeleteKeyResponse {
            key: Some(self.view(&key, now)),
        })
    }
}
