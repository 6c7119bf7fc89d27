//! Server settings, with the defaults DESIGN.md promises. The binary fills
//! this from flags and `KEYGATE_*` environment variables; tests build it
//! directly.

use std::{net::SocketAddr, time::Duration};

use keygate_domain::{environment::Environments, keyformat::KeyFormat};

/// The SQLite database used when none is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db?mode=rwc";
/// The address served when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Everything `keygate serve` can be told.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// SeaORM database URL (SQLite or PostgreSQL).
    pub database_url: String,
    /// Key prefix and format.
    pub key_format: KeyFormat,
    /// Configured environments.
    pub environments: Environments,
    /// Requests per hour for keys without an override.
    pub default_rate_limit_per_hour: u32,
    /// Most keys held in the verified-key cache.
    pub cache_capacity: u64,
    /// Longest time a cached key is trusted without reloading it: the safety
    /// net behind explicit invalidation.
    pub cache_ttl: Duration,
    /// How long an unknown lookup id is remembered as unknown.
    pub negative_cache_ttl: Duration,
    /// How often usage (last used, request counts) is written to storage.
    pub usage_flush_interval: Duration,
    /// How often rate-limit consumption is exchanged with the other replicas.
    pub rate_limit_sync_interval: Duration,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Time allowed for one RPC before it is cancelled.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            key_format: KeyFormat::default(),
            environments: Environments::default(),
            default_rate_limit_per_hour: 1000,
            cache_capacity: 1_000_000,
            cache_ttl: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(5),
            usage_flush_interval: Duration::from_secs(5),
            rate_limit_sync_interval: Duration::from_secs(1),
            max_message_bytes: 256 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}
