//! `keygate`: serve, migrate, bootstrap; and `keys` / `audit`, a client of
//! a running server's management API ([`cli`]). Flags and `KEYGATE_*`
//! environment variables become a [`Config`]; everything else lives in the
//! library.

mod cli;

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{
    Args, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind, parser::ValueSource,
};
use keygate_domain::{environment::Environments, keyformat::KeyFormat, validation::quote};
use keygate_persistence::Store;
use keygate_server::{
    Config, Keygate, bootstrap,
    config::{DEFAULT_DATABASE_URL, DEFAULT_LISTEN},
    tls::TlsFiles,
};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: the verified-key cache is
/// millions of small, long-lived objects, and glibc's per-chunk headers and
/// arena slack cost a few hundred bytes per cached key.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keygate: API keys over gRPC.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// The settings of the commands that open the database (`serve`,
/// `migrate`, `bootstrap`), given before the subcommand
/// (`keygate --database-url … serve`), with their environment variables and
/// defaults. The same flags after the subcommand ([`CommonAfter`]) win.
/// Not global: `keys` and `audit` talk to a server, not to a database.
#[derive(Debug, Args)]
#[command(next_help_heading = "Database (serve, migrate, bootstrap)")]
struct Common {
    /// Database URL: SQLite (the default) or postgres://…
    #[arg(long, env = "KEYGATE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Prefix of generated keys (`kg` gives `kg_live_…`).
    #[arg(long, env = "KEYGATE_KEY_PREFIX", default_value = "kg")]
    key_prefix: String,
    /// Comma-separated environments keys can belong to.
    #[arg(
        long,
        env = "KEYGATE_ENVIRONMENTS",
        default_value = "live,test",
        value_delimiter = ','
    )]
    environments: Vec<String>,
}

/// [`Common`]'s flags given after the subcommand (`keygate migrate
/// --database-url …`), as they always could be.
#[derive(Debug, Args)]
struct CommonAfter {
    /// Database URL: SQLite (default sqlite://keygate.db?mode=rwc) or
    /// postgres://… [env: KEYGATE_DATABASE_URL]
    #[arg(long, value_name = "DATABASE_URL")]
    database_url: Option<String>,
    /// Prefix of generated keys (`kg`, the default, gives `kg_live_…`)
    /// [env: KEYGATE_KEY_PREFIX]
    #[arg(long, value_name = "KEY_PREFIX")]
    key_prefix: Option<String>,
    /// Comma-separated environments keys can belong to (default live,test)
    /// [env: KEYGATE_ENVIRONMENTS]
    #[arg(long, value_delimiter = ',', value_name = "ENVIRONMENTS")]
    environments: Option<Vec<String>>,
}

/// The ids of [`Common`]'s flags, to refuse them before `keys` / `audit`.
const COMMON_FLAGS: [&str; 3] = ["database_url", "key_prefix", "environments"];

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (applies migrations first).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(CommonAfter),
    /// Create a management key (scope keys:admin) and print it on stdout, once.
    Bootstrap {
        /// Owner (tenant) of the management key.
        #[arg(long)]
        owner: String,
        /// Environment of the management key.
        #[arg(long, default_value = "live")]
        environment: String,
        /// Name recorded for the key.
        #[arg(long, default_value = "bootstrap management key")]
        name: String,
        #[command(flatten)]
        common: CommonAfter,
    },
    /// Manage keys on a running Keygate (gRPC, management key from
    /// KEYGATE_TOKEN or --token-file).
    Keys(cli::KeysArgs),
    /// List audit events (what was done to keys), newest first.
    Audit(cli::AuditArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Requests per hour for keys without their own limit (at least 1).
    #[arg(long, env = "KEYGATE_DEFAULT_RATE_LIMIT", default_value_t = 1000)]
    default_rate_limit: u32,
    /// Most keys held in the verified-key cache (at least 1).
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY", default_value_t = 1_000_000)]
    cache_capacity: u64,
    /// Longest a cached key is used before it is re-read in the background
    /// (e.g. 5m, 30s; at most 24h); changes reach caches through
    /// invalidation long before.
    #[arg(long, env = "KEYGATE_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    cache_ttl: Duration,
    /// How long an unknown lookup id is remembered as unknown (at most 1h).
    #[arg(long, env = "KEYGATE_NEGATIVE_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    negative_cache_ttl: Duration,
    /// How often first uses are written (at most 24h); a key's first use
    /// shows within this. Later due uses go with the count flush.
    #[arg(long, env = "KEYGATE_USAGE_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    usage_flush_interval: Duration,
    /// How far a stored last-used time may lag the last use: it is
    /// rewritten only when unset or older than this (at most 24h), with the
    /// next count flush.
    #[arg(long, env = "KEYGATE_LAST_USED_PRECISION", default_value = "60s", value_parser = parse_duration)]
    last_used_precision: Duration,
    /// How often hourly request counts are added to storage (at most 24h);
    /// also at a graceful stop.
    #[arg(long, env = "KEYGATE_USAGE_COUNT_FLUSH_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    usage_count_flush_interval: Duration,
    /// How long hourly request counts are kept (1h to 3650d).
    #[arg(long, env = "KEYGATE_USAGE_RETENTION", default_value = "31d", value_parser = parse_duration)]
    usage_retention: Duration,
    /// How often rate-limit consumption is exchanged with the other
    /// replicas (PostgreSQL; at most 24h).
    #[arg(long, env = "KEYGATE_RATE_LIMIT_SYNC_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    rate_limit_sync_interval: Duration,
    /// Time one call may take before it is cancelled (at most 24h).
    #[arg(long, env = "KEYGATE_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Largest request message accepted, in bytes (1024 to 67108864).
    #[arg(long, env = "KEYGATE_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    max_message_bytes: usize,
    /// Request headers that may carry the key in requests from a proxy
    /// (Envoy ext_authz), tried in order; `authorization` takes `Bearer`.
    #[arg(
        long,
        env = "KEYGATE_KEY_HEADERS",
        value_delimiter = ',',
        default_value = "authorization,x-api-key"
    )]
    key_headers: Vec<String>,
    /// Environment of proxied requests whose route names none
    /// (context extension `keygate_environment`); default: the first of
    /// --environments.
    #[arg(long, env = "KEYGATE_EXT_AUTHZ_ENVIRONMENT")]
    ext_authz_environment: Option<String>,
    /// Proxies in front of Keygate's proxy-facing endpoints whose
    /// X-Forwarded-For entries are trusted (0: the connection's peer, or
    /// Envoy's source address, is the client; at most 16).
    #[arg(long, env = "KEYGATE_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    trusted_proxy_hops: usize,
    /// Keep the key header on requests passed upstream (removed by default).
    #[arg(long, env = "KEYGATE_FORWARD_KEY_HEADER")]
    forward_key_header: bool,
    /// Also serve HTTP here: /v1/authorize (forward-auth for nginx,
    /// Traefik, Caddy), /healthz, /readyz. Off by default.
    #[arg(long, env = "KEYGATE_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Serve the admin console at /console/ on --http-listen (sign in
    /// with a management key).
    #[arg(long, env = "KEYGATE_CONSOLE")]
    console: bool,
    /// How long a console sign-in lasts (at most 1d).
    #[arg(long, env = "KEYGATE_CONSOLE_SESSION_TTL", default_value = "8h", value_parser = parse_duration)]
    console_session_ttl: Duration,
    /// How long a deleted key can be restored (UndeleteKey) before it is
    /// removed for good (at most 3650d).
    #[arg(long, env = "KEYGATE_PURGE_AFTER", default_value = "30d", value_parser = parse_duration)]
    purge_after: Duration,
    /// Serve gRPC over TLS with this PEM certificate chain (needs
    /// --tls-key).
    #[arg(long, env = "KEYGATE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEYGATE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS;
    /// needs --tls-cert).
    #[arg(long, env = "KEYGATE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    common: CommonAfter,
}

/// Parses `250ms`, `5s`, `2m`, `1h` or `31d` (a bare number is seconds). Zero
/// parses (and is refused by [`Config::validate`], naming the flag); a
/// negative, fractional, unitless-garbage or overflowing value is an error
/// saying what is wrong. clap adds the flag's name.
fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a whole number and a unit, like 250ms, 5s, 2m, 1h or 31d";
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty duration; {EXPECTED}"));
    }
    let quoted = quote(s);
    if s.starts_with('-') {
        return Err(format!("{quoted} is negative; {EXPECTED}"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(format!("{quoted} does not start with a number; {EXPECTED}"));
    }
    let too_large = || format!("{quoted} is too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    let secs = |per_unit: u64| n.checked_mul(per_unit).map(Duration::from_secs);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => secs(60).ok_or_else(too_large),
        "h" => secs(3600).ok_or_else(too_large),
        "d" => secs(86_400).ok_or_else(too_large),
        other => Err(format!(
            "unknown unit {} in {quoted}; use ms, s, m, h or d",
            quote(other)
        )),
    }
}

impl Common {
    /// The configuration, with the flags given after the subcommand winning.
    fn config(self, after: CommonAfter) -> Result<Config> {
        let key_prefix = after.key_prefix.unwrap_or(self.key_prefix);
        let environments = after.environments.unwrap_or(self.environments);
        Ok(Config {
            database_url: after.database_url.unwrap_or(self.database_url),
            key_format: KeyFormat::new(&key_prefix).context("--key-prefix")?,
            environments: Environments::new(environments.iter().map(|e| e.trim().to_owned()))
                .context("--environments")?,
            ..Config::default()
        })
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match std::env::var("KEYGATE_LOG_FORMAT").as_deref() {
        // One JSON object per line, span fields (method, target, actor of a
        // management call) included.
        Ok("json") => builder.json().with_current_span(true).init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            builder.init();
            anyhow::bail!(
                "KEYGATE_LOG_FORMAT must be json or text, got {}",
                quote(other)
            );
        }
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let common = cli.common;
    // `keygate --database-url … keys list` would otherwise quietly ignore
    // the database it names.
    if matches!(cli.command, Command::Keys(_) | Command::Audit(_))
        && let Some(id) = COMMON_FLAGS
            .into_iter()
            .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
    {
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--{} is for serve, migrate and bootstrap; `keys` and `audit` talk to the server at --addr",
                    id.replace('_', "-")
                ),
            )
            .exit();
    }
    match cli.command {
        Command::Serve(args) => {
            let args = *args;
            let mut config = common.config(args.common)?;
            config.listen = args.listen;
            config.default_rate_limit_per_hour = args.default_rate_limit;
            config.cache_capacity = args.cache_capacity;
            config.cache_ttl = args.cache_ttl;
            config.negative_cache_ttl = args.negative_cache_ttl;
            config.usage_flush_interval = args.usage_flush_interval;
            config.last_used_precision = args.last_used_precision;
            config.usage_count_flush_interval = args.usage_count_flush_interval;
            config.usage_retention = args.usage_retention;
            config.max_message_bytes = args.max_message_bytes;
            config.rate_limit_sync_interval = args.rate_limit_sync_interval;
            config.request_timeout = args.request_timeout;
            config.key_headers = args
                .key_headers
                .iter()
                .map(|h| h.trim().to_owned())
                .collect();
            config.ext_authz_environment = args.ext_authz_environment;
            config.trusted_proxy_hops = args.trusted_proxy_hops;
            config.forward_key_header = args.forward_key_header;
            config.http_listen = args.http_listen;
            config.console = args.console;
            config.console_session_ttl = args.console_session_ttl;
            config.purge_after = args.purge_after;
            config.tls = match (args.tls_cert, args.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca,
                }),
                // clap requires both or neither.
                _ => None,
            };
            // Before binding or touching storage; `Keygate::open` checks again.
            config.validate().context("invalid configuration")?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let keygate = Keygate::open(config).await.context("cannot start")?;
            keygate.serve(listener, shutdown_signal()).await?;
            tracing::info!("keygate stopped");
        }
        Command::Migrate(after) => {
            let config = common.config(after)?;
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
        }
        Command::Bootstrap {
            owner,
            environment,
            name,
            common: after,
        } => {
            let config = common.config(after)?;
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            let secret = bootstrap(&store, &config, &owner, &environment, &name).await?;
            println!("{secret}");
        }
        Command::Keys(args) => return Ok(cli::keys(args).await),
        Command::Audit(args) => return Ok(cli::audit(args).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("31d"), Ok(Duration::from_secs(31 * 86_400)));
        assert!(
            parse_duration("5w")
                .unwrap_err()
                .contains("unknown unit \"w\"")
        );
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("does not start with a number")
        );
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(
            parse_duration("")
                .unwrap_err()
                .starts_with("empty duration")
        );
        assert!(
            parse_duration("  ")
                .unwrap_err()
                .starts_with("empty duration")
        );
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(
            parse_duration("1.5s")
                .unwrap_err()
                .contains("unknown unit \".5s\"")
        );
        // n * 3600 and n * 60 overflow: an error, not a panic or a wrap.
        let max = u64::MAX.to_string();
        for s in [
            format!("{max}h"),
            format!("{max}m"),
            format!("{max}d"),
            "5124095576030432h".into(),
        ] {
            assert_eq!(parse_duration(&s), Err(format!("{s:?} is too large")));
        }
        assert_eq!(
            parse_duration("5124095576030431h").unwrap().as_secs(),
            5124095576030431 * 3600
        );
        assert_eq!(
            parse_duration(&format!("{max}s")),
            Ok(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_duration(&format!("{max}ms")),
            Ok(Duration::from_millis(u64::MAX))
        );
        // More digits than a u64 holds.
        assert!(
            parse_duration("99999999999999999999999s")
                .unwrap_err()
                .contains("too large")
        );
        // Long input is quoted short.
        let long = format!("5{}", "x".repeat(10_000));
        let err = parse_duration(&long).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }

    /// Printable strings, strings of any characters, duration-like strings,
    /// and arbitrary bytes read as (lossy) UTF-8.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            ".{0,40}",
            " ?-?[0-9]{0,25}(ms|s|m|h|d|µs|)? ?",
            proptest::collection::vec(any::<u8>(), 0..60)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    proptest! {
        #[test]
        fn any_text_is_a_duration_or_an_error_saying_why(s in any_text()) {
            match parse_duration(&s) {
                Ok(d) => {
                    let t = s.trim();
                    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    let n: u64 = digits.parse().unwrap();
                    let want = match &t[digits.len()..] {
                        "ms" => Duration::from_millis(n),
                        "" | "s" => Duration::from_secs(n),
                        "m" => Duration::from_secs(n * 60),
                        "h" => Duration::from_secs(n * 3600),
                        "d" => Duration::from_secs(n * 86_400),
                        other => panic!("accepted unit {other:?}"),
                    };
                    prop_assert_eq!(d, want);
                }
                Err(e) => {
                    let why = ["empty", "negative", "does not start with a number", "too large", "unknown unit"];
                    prop_assert!(why.iter().any(|w| e.contains(w)), "{}", e);
                    prop_assert!(e.len() < 2 * 4 * 64 + 100, "{}", e);
                }
            }
        }

        #[test]
        fn whole_numbers_in_every_unit(n in any::<u64>()) {
            prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
            prop_assert_eq!(parse_duration(&format!("{n}s")), Ok(Duration::from_secs(n)));
            for (unit, per) in [("m", 60u64), ("h", 3600)] {
                let got = parse_duration(&format!("{n}{unit}"));
                match n.checked_mul(per) {
                    Some(secs) => prop_assert_eq!(got, Ok(Duration::from_secs(secs))),
                    None => prop_assert!(got.unwrap_err().contains("too large")),
                }
            }
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
