//! SeaORM entities: the rows exactly as stored. They are kept apart from the
//! domain model so that the storage format (JSON text columns, byte blobs,
//! state names) can change without touching the rules; `crate::convert`
//! translates between the two.

pub mod api_key;
pub mod audit_event;
pub mod credential;
pub mod key_last_use;
