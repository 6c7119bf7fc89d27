//! ListAuditEvents: what was done to keys, newest first. `keys:read` sees
//! the events of keys of its own owner and environment, `keys:admin` all;
//! pages are keyset-paginated with the same tamper-evident tokens as
//! ListKeys, bound to the filters they were issued for.

use chrono::{DateTime, Utc};
use keygate::v1 as pb;
use keygate_domain::{
    page_token,
    rights::{Access, RightsError},
    validation,
};
use keygate_persistence::AuditFilter;
use tonic::Request;

use super::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ManagementService};
use crate::{api::convert, error::ApiError};

impl ManagementService {
    pub(super) async fn audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<pb::ListAuditEventsResponse, ApiError> {
        let now = Utc::now();
        let principal = self.principal(&request, Access::Read, now).await?;
        let req = request.into_inner();
        let page_size = match req.page_size {
            n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => u64::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        let time = |field: &str, ts: &Option<prost_types::Timestamp>| {
            ts.as_ref()
                .map(|ts| convert::from_timestamp(field, ts))
                .transpose()
        };
        let start = time("start_time", &req.start_time)?;
        let end = time("end_time", &req.end_time)?;
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            return Err(ApiError::invalid("end_time", "must be after start_time"));
        }
        if !req.key_id.is_empty() {
            validation::validate_key_id(&req.key_id)?;
        }
        let text = |s: String| Some(s).filter(|s| !s.is_empty());
        let mut filter = AuditFilter {
            key_id: text(req.key_id),
            owner_id: text(req.owner_id),
            environment: None,
            actor_key_id: text(req.actor_key_id),
            method: text(req.method),
            start,
            end,
        };
        if let Some((owner, environment)) = principal.list_bounds() {
            if filter.owner_id.as_deref().is_some_and(|o| o != owner) {
                return Err(RightsError::OutOfBounds.into());
            }
            filter.owner_id = Some(owner.to_owned());
            filter.environment = Some(environment.to_owned());
        }
        let time_name = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.timestamp_nanos_opt().unwrap_or(i64::MAX).to_string())
                .unwrap_or_default()
        };
        let fingerprint = page_token::fingerprint(&[
            "audit",
            filter.key_id.as_deref().unwrap_or(""),
            filter.owner_id.as_deref().unwrap_or(""),
            filter.environment.as_deref().unwrap_or(""),
            filter.actor_key_id.as_deref().unwrap_or(""),
            filter.method.as_deref().unwrap_or(""),
            &time_name(filter.start),
            &time_name(filter.end),
        ]);
        let before = if req.page_token.is_empty() {
            None
        } else {
            Some(
                page_token::decode(&req.page_token, fingerprint)
                    .map_err(|err| ApiError::invalid("page_token", err.to_string()))?,
            )
        };
        let mut events = self
            .store
            .list_audit_events(&filter, before.as_deref(), page_size + 1)
            .await?;
        let next_page_token = if events.len() as u64 > page_size {
            events.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
            events
                .last()
                .map(|e| page_token::encode(&e.event_id, fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListAuditEventsResponse {
            events: events.iter().map(convert::audit_event).collect(),
            next_page_token,
        })
    }
}
