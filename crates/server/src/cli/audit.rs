//! `keygate audit`: ListAuditEvents with its filters as flags, every page
//! (or `--limit` events), newest first as the server returns them.

use keygate::v1 as pb;

use super::{AuditArgs, connect::connect, error::CliError, output, time};

/// Runs `keygate audit`.
pub(super) async fn run(args: AuditArgs) -> Result<(), CliError> {
    let mut request = pb::ListAuditEventsRequest {
        key_id: args.key_id.unwrap_or_default(),
        owner_id: args.owner.unwrap_or_default(),
        actor_key_id: args.actor.unwrap_or_default(),
        method: args.method.unwrap_or_default(),
        start_time: args.since.map(time::timestamp),
        end_time: args.until.map(time::timestamp),
        page_size: args.page_size.unwrap_or(0),
        page_token: String::new(),
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut keygate = connect(&args.client).await?;
    let mut events = Vec::new();
    while events.len() < limit {
        let page = keygate
            .keys
            .list_audit_events(request.clone())
            .await?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == request.page_token {
            return Err(anyhow::anyhow!("the server returned the same page token twice").into());
        }
        request.page_token = page.next_page_token;
    }
    events.truncate(limit);
    if args.client.json {
        output::stdout(&output::json(&pb::ListAuditEventsResponse {
            events,
            next_page_token: String::new(),
        })?)
    } else {
        output::stdout(&output::audit_table(&events))
    }
}
