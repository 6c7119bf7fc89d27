//! Server settings, with the defaults DESIGN.md promises. The binary fills
//! this from flags and `KEYGATE_*` environment variables; tests build it
//! directly. [`Config::validate`] (called by `Keygate::open`) refuses
//! settings that cannot work, naming the flag, before anything starts.

use std::{net::SocketAddr, time::Duration};

use keygate_domain::{environment::Environments, keyformat::KeyFormat, ratelimit::Quota};

use crate::{api::proxy::ProxySettings, tls::TlsFiles};

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
    /// How often last-used times are written to storage.
    pub usage_flush_interval: Duration,
    /// How far a stored `last_used_at` may lag behind the last use: a key's
    /// stored value is rewritten only when unset or older than this.
    pub last_used_precision: Duration,
    /// How often hourly request counts are added to storage.
    pub usage_count_flush_interval: Duration,
    /// How long hourly request counts are kept.
    pub usage_retention: Duration,
    /// How often rate-limit consumption is exchanged with the other replicas.
    pub rate_limit_sync_interval: Duration,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Time allowed for one RPC before it is cancelled.
    pub request_timeout: Duration,
    /// Request headers a proxy's request may carry the key in, tried in
    /// order (ext_authz, forward-auth); `authorization` takes `Bearer`.
    pub key_headers: Vec<String>,
    /// Environment of proxied requests that name none; `None`: the first
    /// configured environment.
    pub ext_authz_environment: Option<String>,
    /// Proxies in front of Keygate's proxy-facing endpoints whose
    /// `X-Forwarded-For` entries are trusted (0: the peer is the client).
    pub trusted_proxy_hops: usize,
    /// Whether proxied requests keep the key header upstream.
    pub forward_key_header: bool,
    /// Where to serve HTTP (forward-auth, probes); `None`: not at all.
    pub http_listen: Option<SocketAddr>,
    /// Serve gRPC over TLS with these files; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// How long a deleted key can be restored before it is removed for good.
    pub purge_after: Duration,
    /// Serve the admin console under `/console/` on the HTTP listener.
    pub console: bool,
    /// How long a console sign-in lasts.
    pub console_session_ttl: Duration,
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
            last_used_precision: Duration::from_secs(60),
            usage_count_flush_interval: Duration::from_secs(60),
            usage_retention: Duration::from_secs(31 * 24 * 3600),
            rate_limit_sync_interval: Duration::from_secs(1),
            max_message_bytes: 256 * 1024,
            request_timeout: Duration::from_secs(10),
            key_headers: vec!["authorization".into(), "x-api-key".into()],
            ext_authz_environment: None,
            trusted_proxy_hops: 0,
            forward_key_header: false,
            http_listen: None,
            tls: None,
            purge_after: Duration::from_secs(30 * 24 * 3600),
            console: false,
            console_session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

/// Longest interval or timeout accepted: one day.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Shortest usage retention accepted: one hour (the size of a bucket).
pub const MIN_USAGE_RETENTION: Duration = Duration::from_secs(3600);
/// Longest usage retention accepted: ten years.
pub const MAX_USAGE_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Longest time an unknown lookup id may be remembered: one hour.
pub const MAX_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Smallest request size limit accepted: 1 KiB.
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest request size limit accepted: 64 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most trusted proxy hops accepted.
pub const MAX_TRUSTED_PROXY_HOPS: usize = 16;

/// A setting [`Config::validate`] refuses, named by its `keygate serve` flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration, count or size that must be positive is zero.
    #[error("{flag} must be greater than 0")]
    Zero {
        /// The flag, such as `--usage-flush-interval`.
        flag: &'static str,
    },
    /// A value above its bound.
    #[error("{flag} must be at most {max}, got {got}")]
    TooLarge {
        /// The flag.
        flag: &'static str,
        /// The largest value accepted, as a flag would give it.
        max: String,
        /// The value given.
        got: String,
    },
    /// A value that is not one of those allowed.
    #[error("{flag}: {problem}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A value below its bound.
    #[error("{flag} must be at least {min}, got {got}")]
    TooSmall {
        /// The flag.
        flag: &'static str,
        /// The smallest value accepted.
        min: String,
        /// The value given.
        got: String,
    },
}

impl Config {
    /// Checks every setting can work, so that nothing fails later in a
    /// background task: intervals, timeouts and cache lifetimes are positive
    /// and at most a day (the negative cache at most an hour), the cache
    /// holds at least one key, the message limit is 1 KiB to 64 MiB, and the
    /// default rate limit is a usable quota. The error names the flag
    /// (`--rate-limit-sync-interval` and `--request-timeout` are settings
    /// only embedders set so far).
    pub fn validate(&self) -> Result<(), ConfigError> {
        duration_within(
            "--usage-flush-interval",
            self.usage_flush_interval,
            MAX_INTERVAL,
        )?;
        duration_within(
            "--last-used-precision",
            self.last_used_precision,
            MAX_INTERVAL,
        )?;
        duration_within(
            "--usage-count-flush-interval",
            self.usage_count_flush_interval,
            MAX_INTERVAL,
        )?;
        duration_within(
            "--usage-retention",
            self.usage_retention,
            MAX_USAGE_RETENTION,
        )?;
        if self.usage_retention < MIN_USAGE_RETENTION {
            return Err(ConfigError::TooSmall {
                flag: "--usage-retention",
                min: format_duration(MIN_USAGE_RETENTION),
                got: format_duration(self.usage_retention),
            });
        }
        duration_within(
            "--rate-limit-sync-interval",
            self.rate_limit_sync_interval,
            MAX_INTERVAL,
        )?;
        duration_within("--request-timeout", self.request_timeout, MAX_INTERVAL)?;
        duration_within("--purge-after", self.purge_after, MAX_USAGE_RETENTION)?;
        duration_within("--cache-ttl", self.cache_ttl, MAX_INTERVAL)?;
        duration_within(
            "--console-session-ttl",
            self.console_session_ttl,
            MAX_INTERVAL,
        )?;
        if self.console && self.http_listen.is_none() {
            return Err(ConfigError::Invalid {
                flag: "--console",
                problem: "the console is served on the HTTP listener: set --http-listen too".into(),
            });
        }
        duration_within(
            "--negative-cache-ttl",
            self.negative_cache_ttl,
            MAX_NEGATIVE_CACHE_TTL,
        )?;
        if self.cache_capacity == 0 {
            return Err(ConfigError::Zero {
                flag: "--cache-capacity",
            });
        }
        let flag = "--max-message-bytes";
        if self.max_message_bytes == 0 {
            return Err(ConfigError::Zero { flag });
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(ConfigError::TooSmall {
                flag,
                min: MIN_MESSAGE_BYTES.to_string(),
                got: self.max_message_bytes.to_string(),
            });
        }
        if self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(ConfigError::TooLarge {
                flag,
                max: MAX_MESSAGE_BYTES.to_string(),
                got: self.max_message_bytes.to_string(),
            });
        }
        if Quota::per_hour(self.default_rate_limit_per_hour).is_none() {
            return Err(ConfigError::Zero {
                flag: "--default-rate-limit",
            });
        }
        self.validate_proxy_settings()
    }

    /// The proxy-facing settings: key headers are header names, the
    /// default environment is configured, the hops are bounded.
    fn validate_proxy_settings(&self) -> Result<(), ConfigError> {
        let flag = "--key-headers";
        if self.key_headers.is_empty() {
            return Err(ConfigError::Invalid {
                flag,
                problem: "name at least one header".into(),
            });
        }
        for name in &self.key_headers {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(ConfigError::Invalid {
                    flag,
                    problem: format!(
                        "{} is not a lowercase header name (a-z, 0-9, -; at most 64)",
                        keygate_domain::validation::quote(name)
                    ),
                });
            }
        }
        if let Some(environment) = &self.ext_authz_environment
            && !self.environments.contains(environment)
        {
            return Err(ConfigError::Invalid {
                flag: "--ext-authz-environment",
                problem: format!(
                    "{} is not a configured environment ({})",
                    keygate_domain::validation::quote(environment),
                    self.environments.names().join(", ")
                ),
            });
        }
        if self.trusted_proxy_hops > MAX_TRUSTED_PROXY_HOPS {
            return Err(ConfigError::TooLarge {
                flag: "--trusted-proxy-hops",
                max: MAX_TRUSTED_PROXY_HOPS.to_string(),
                got: self.trusted_proxy_hops.to_string(),
            });
        }
        Ok(())
    }

    /// How proxy-facing endpoints read requests.
    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            key_headers: self.key_headers.clone(),
            default_environment: self
                .ext_authz_environment
                .clone()
                .or_else(|| self.environments.names().first().cloned())
                .unwrap_or_default(),
            trusted_proxy_hops: self.trusted_proxy_hops,
            forward_key: self.forward_key_header,
        }
    }
}

/// Checks `value` is positive and at most `max`.
fn duration_within(flag: &'static str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::Zero { flag });
    }
    if value > max {
        return Err(ConfigError::TooLarge {
            flag,
            max: format_duration(max),
            got: format_duration(value),
        });
    }
    Ok(())
}

/// A duration as a flag would give it (`24h`, `90s`, `250ms`), in the
/// largest unit that is exact.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 {
        if secs > 0 && secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs > 0 && secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        }
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: &Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn console_needs_the_http_listener() {
        let mut config = Config {
            console: true,
            ..Config::default()
        };
        assert!(
            refused(&config).starts_with("--console: "),
            "{}",
            refused(&config)
        );
        config.http_listen = Some("127.0.0.1:0".parse().expect("address"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn zero_durations_are_refused_by_flag() {
        type Set = fn(&mut Config, Duration);
        let cases: [(&str, Set); 8] = [
            ("--usage-flush-interval", |c, d| c.usage_flush_interval = d),
            ("--last-used-precision", |c, d| c.last_used_precision = d),
            ("--usage-count-flush-interval", |c, d| {
                c.usage_count_flush_interval = d
            }),
            ("--rate-limit-sync-interval", |c, d| {
                c.rate_limit_sync_interval = d
            }),
            ("--request-timeout", |c, d| c.request_timeout = d),
            ("--cache-ttl", |c, d| c.cache_ttl = d),
            ("--negative-cache-ttl", |c, d| c.negative_cache_ttl = d),
            ("--console-session-ttl", |c, d| c.console_session_ttl = d),
        ];
        for (flag, set) in cases {
            let mut config = Config::default();
            set(&mut config, Duration::ZERO);
            assert_eq!(config.validate(), Err(ConfigError::Zero { flag }));
            assert_eq!(refused(&config), format!("{flag} must be greater than 0"));

            // The smallest positive value and the bound itself are fine.
            set(&mut config, Duration::from_nanos(1));
            assert_eq!(config.validate(), Ok(()), "{flag}");
            let max = if flag == "--negative-cache-ttl" {
                MAX_NEGATIVE_CACHE_TTL
            } else {
                MAX_INTERVAL
            };
            set(&mut config, max);
            assert_eq!(config.validate(), Ok(()), "{flag}");

            // Just above the bound, and absurdly above it, are refused.
            set(&mut config, max + Duration::from_millis(1));
            let msg = refused(&config);
            assert!(
                msg.starts_with(&format!("{flag} must be at most ")),
                "{msg}"
            );
            set(&mut config, Duration::from_secs(876_000 * 3600));
            let msg = refused(&config);
            assert!(msg.starts_with(flag), "{msg}");
            assert!(msg.ends_with("got 876000h"), "{msg}");
            set(&mut config, Duration::MAX);
            assert!(refused(&config).starts_with(flag));
        }
    }

    #[test]
    fn bounds_are_stated_in_flag_units() {
        let config = Config {
            cache_ttl: Duration::from_secs(25 * 3600),
            ..Config::default()
        };
        assert_eq!(refused(&config), "--cache-ttl must be at most 24h, got 25h");
        let config = Config {
            negative_cache_ttl: Duration::from_secs(3601),
            ..Config::default()
        };
        assert_eq!(
            refused(&config),
            "--negative-cache-ttl must be at most 1h, got 3601s"
        );
    }

    #[test]
    fn usage_retention_is_an_hour_to_ten_years() {
        let mut config = Config {
            usage_retention: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(refused(&config), "--usage-retention must be greater than 0");
        config.usage_retention = Duration::from_secs(3599);
        assert_eq!(
            refused(&config),
            "--usage-retention must be at least 1h, got 3599s"
        );
        config.usage_retention = MIN_USAGE_RETENTION;
        assert_eq!(config.validate(), Ok(()));
        config.usage_retention = MAX_USAGE_RETENTION;
        assert_eq!(config.validate(), Ok(()));
        config.usage_retention = MAX_USAGE_RETENTION + Duration::from_secs(1);
        assert!(refused(&config).starts_with("--usage-retention must be at most 87600h"));
    }

    #[test]
    fn sizes_and_counts() {
        let mut config = Config {
            cache_capacity: 0,
            ..Config::default()
        };
        assert_eq!(refused(&config), "--cache-capacity must be greater than 0");
        config.cache_capacity = 1;
        assert_eq!(config.validate(), Ok(()));
        config.cache_capacity = u64::MAX;
        assert_eq!(config.validate(), Ok(()));

        let mut config = Config::default();
        for (bytes, ok) in [
            (0, false),
            (1, false),
            (MIN_MESSAGE_BYTES - 1, false),
            (MIN_MESSAGE_BYTES, true),
            (MAX_MESSAGE_BYTES, true),
            (MAX_MESSAGE_BYTES + 1, false),
            (usize::MAX, false),
        ] {
            config.max_message_bytes = bytes;
            match config.validate() {
                Ok(()) => assert!(ok, "{bytes} accepted"),
                Err(err) => {
                    assert!(!ok, "{bytes} refused: {err}");
                    assert!(err.to_string().starts_with("--max-message-bytes must be"));
                }
            }
        }
        config.max_message_bytes = 100;
        assert_eq!(
            refused(&config),
            "--max-message-bytes must be at least 1024, got 100"
        );
    }

    #[test]
    fn default_rate_limit_is_a_safe_quota() {
        let mut config = Config {
            default_rate_limit_per_hour: 0,
            ..Config::default()
        };
        assert_eq!(
            refused(&config),
            "--default-rate-limit must be greater than 0"
        );
        for n in [1, 3600, u32::MAX] {
            config.default_rate_limit_per_hour = n;
            assert_eq!(config.validate(), Ok(()));
        }
    }

    #[test]
    fn proxy_settings_are_checked_by_flag() {
        let mut config = Config {
            key_headers: vec![],
            ..Config::default()
        };
        assert_eq!(refused(&config), "--key-headers: name at least one header");
        config.key_headers = vec!["Authorization".into()];
        assert!(refused(&config).starts_with("--key-headers: \"Authorization\" is not"));
        config.key_headers = vec!["x-api-key".into()];
        assert_eq!(config.validate(), Ok(()));
        config.ext_authz_environment = Some("staging".into());
        assert_eq!(
            refused(&config),
            "--ext-authz-environment: \"staging\" is not a configured environment (live, test)"
        );
        config.ext_authz_environment = Some("test".into());
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.proxy_settings().default_environment, "test");
        config.trusted_proxy_hops = MAX_TRUSTED_PROXY_HOPS + 1;
        assert!(refused(&config).starts_with("--trusted-proxy-hops must be at most 16"));
        assert_eq!(
            Config::default().proxy_settings().default_environment,
            "live"
        );
    }

    #[test]
    fn durations_are_formatted_exactly() {
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_nanos(5)), "5ns");
    }
}
