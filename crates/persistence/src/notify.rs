//! Cross-replica cache invalidation over PostgreSQL `LISTEN/NOTIFY`.
//!
//! Every change to a key sends, inside the changing transaction, a
//! notification on [`CHANGE_CHANNEL`] naming the key, its new version and its
//! lookup ids;
//! PostgreSQL delivers it at commit, so no replica evicts before the change
//! is visible. Notifications sent while a listener is disconnected are lost,
//! which is why a reconnect surfaces as [`Change::Reset`].

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};
use sqlx::postgres::PgListener;

use crate::error::StoreError;

/// The PostgreSQL notification channel carrying key changes.
pub const CHANGE_CHANNEL: &str = "keygate_key_changes";

/// Payloads longer than this are replaced by [`RESET_PAYLOAD`]; PostgreSQL
/// refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;

/// Payload meaning "too many lookup ids to list: clear everything".
const RESET_PAYLOAD: &str = "*";

/// Payload of a liveness heartbeat (key ids are UUIDs, so it names no key).
pub(crate) const HEARTBEAT_PAYLOAD: &str = "heartbeat";

/// A change announced by another replica (or this one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key changed: evict it and every listed lookup id.
    Key {
        /// The key's id.
        key_id: String,
        /// The key's version after the change (0 if the sender did not say:
        /// a replica of an older release).
        version: u64,
        /// Lookup ids of the key's credentials (including ones just removed).
        lookup_ids: Vec<String>,
    },
    /// The connection dropped and was re-established: notifications may have
    /// been lost; the caller must clear its cache. Also sent for a change too
    /// large to describe in one notification.
    Reset,
    /// A heartbeat from some replica ([`crate::Store::send_heartbeat`]): proof
    /// that this listener's connection still delivers notifications.
    Heartbeat,
}

/// The notification payload for a change of `key_id` to `version`:
/// `key_id@version` followed by its lookup ids, comma-separated. (Releases
/// before versions sent `key_id,lookup ids`; both decode.)
pub(crate) fn encode_payload(key_id: &str, version: u64, lookup_ids: &[String]) -> String {
    let mut payload = format!("{key_id}@{version}");
    for id in lookup_ids {
        payload.push(',');
        payload.push_str(id);
    }
    if payload.len() > MAX_PAYLOAD {
        RESET_PAYLOAD.to_owned()
    } else {
        payload
    }
}

/// Parses a payload written by [`encode_payload`].
pub(crate) fn decode_payload(payload: &str) -> Change {
    if payload == HEARTBEAT_PAYLOAD {
        return Change::Heartbeat;
    }
    let mut parts = payload.split(',').filter(|p| !p.is_empty());
    match parts.next() {
        Some(first) if payload != RESET_PAYLOAD => {
            let (key_id, version) = match first.split_once('@') {
                Some((key_id, version)) => match version.parse() {
                    Ok(version) => (key_id, version),
                    // Unreadable: treat as a change of unknown version.
                    Err(_) => (key_id, 0),
                },
                None => (first, 0),
            };
            Change::Key {
                key_id: key_id.to_owned(),
                version,
                lookup_ids: parts.map(str::to_owned).collect(),
            }
        }
        _ => Change::Reset,
    }
}

/// Sends the change notification inside `txn` (PostgreSQL only; a no-op on
/// SQLite, where there is only one process).
pub(crate) async fn notify_in(
    txn: &DatabaseTransaction,
    key_id: &str,
    version: u64,
    lookup_ids: &[String],
) -> Result<(), StoreError> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [
            CHANGE_CHANNEL.into(),
            encode_payload(key_id, version, lookup_ids).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Receives the changes announced on [`CHANGE_CHANNEL`]. Holds one
/// connection of the store's pool for as long as it lives.
pub struct ChangeListener {
    listener: PgListener,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListener")
            .field("channel", &CHANGE_CHANNEL)
            .finish_non_exhaustive()
    }
}

impl ChangeListener {
    /// Starts listening on a connection taken from `pool`.
    pub(crate) async fn start(pool: &sqlx::PgPool) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(pool).await?;
        // Report a lost connection at once; the next call reconnects, so a
        // failing reconnect becomes an error the caller can back off on.
        listener.eager_reconnect(false);
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(Self { listener })
    }

    /// Waits for the next change. [`Change::Reset`] means the connection was
    /// lost (the next call reconnects); an error means reconnecting failed:
    /// back off and call again.
    pub async fn next(&mut self) -> Result<Change, StoreError> {
        match self.listener.try_recv().await {
            Ok(Some(notification)) => Ok(decode_payload(notification.payload())),
            Ok(None) => {
                tracing::warn!("change listener lost its connection; notifications may be lost");
                Ok(Change::Reset)
            }
            Err(err) => Err(StoreError::Unavailable(format!("change listener: {err}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip() {
        let ids = vec!["abcdefgh".to_owned(), "ijklmnop".to_owned()];
        assert_eq!(
            decode_payload(&encode_payload("k1", 7, &ids)),
            Change::Key {
                key_id: "k1".to_owned(),
                version: 7,
                lookup_ids: ids.clone()
            }
        );
        assert_eq!(
            decode_payload(&encode_payload("k1", u64::MAX, &[])),
            Change::Key {
                key_id: "k1".to_owned(),
                version: u64::MAX,
                lookup_ids: vec![]
            }
        );
        // What releases before versions sent.
        assert_eq!(
            decode_payload("k1,abcdefgh,ijklmnop"),
            Change::Key {
                key_id: "k1".to_owned(),
                version: 0,
                lookup_ids: ids
            }
        );
    }

    #[test]
    fn heartbeat_is_not_a_key() {
        assert_eq!(decode_payload(HEARTBEAT_PAYLOAD), Change::Heartbeat);
    }

    #[test]
    fn oversized_payload_is_reset() {
        let ids: Vec<String> = (0..2000).map(|i| format!("{i:08}")).collect();
        let payload = encode_payload("k1", 1, &ids);
        assert!(payload.len() < 8000);
        assert_eq!(decode_payload(&payload), Change::Reset);
    }
}
