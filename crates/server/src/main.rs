//! `keygate`: serve, migrate, bootstrap. Flags and `KEYGATE_*` environment
//! variables become a [`Config`]; everything else lives in the library.

use std::{io::IsTerminal, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use keygate_domain::{environment::Environments, keyformat::KeyFormat};
use keygate_persistence::Store;
use keygate_server::{
    Config, Keygate, bootstrap,
    config::{DEFAULT_DATABASE_URL, DEFAULT_LISTEN},
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

#[derive(Debug, Args)]
struct Common {
    /// Database URL: SQLite (the default) or postgres://…
    #[arg(long, env = "KEYGATE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    database_url: String,
    /// Prefix of generated keys (`kg` gives `kg_live_…`).
    #[arg(long, env = "KEYGATE_KEY_PREFIX", default_value = "kg", global = true)]
    key_prefix: String,
    /// Comma-separated environments keys can belong to.
    #[arg(
        long,
        env = "KEYGATE_ENVIRONMENTS",
        default_value = "live,test",
        value_delimiter = ',',
        global = true
    )]
    environments: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (applies migrations first).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
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
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Requests per hour for keys without their own limit.
    #[arg(long, env = "KEYGATE_DEFAULT_RATE_LIMIT", default_value_t = 1000)]
    default_rate_limit: u32,
    /// Most keys held in the verified-key cache.
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY", default_value_t = 1_000_000)]
    cache_capacity: u64,
    /// Longest a cached key is used before it is re-read in the background
    /// (e.g. 5m, 30s); changes reach caches through invalidation long before.
    #[arg(long, env = "KEYGATE_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    cache_ttl: Duration,
    /// How long an unknown lookup id is remembered as unknown.
    #[arg(long, env = "KEYGATE_NEGATIVE_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    negative_cache_ttl: Duration,
    /// How often usage (last used, request counts) is written.
    #[arg(long, env = "KEYGATE_USAGE_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    usage_flush_interval: Duration,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "KEYGATE_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    max_message_bytes: usize,
}

/// Parses `250ms`, `5s`, `2m` or `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 5s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!(
            "unknown unit {other:?} in {s:?}; use ms, s, m or h"
        )),
    }
}

impl Common {
    fn config(&self) -> Result<Config> {
        Ok(Config {
            database_url: self.database_url.clone(),
            key_format: KeyFormat::new(&self.key_prefix).context("--key-prefix")?,
            environments: Environments::new(self.environments.iter().map(|e| e.trim().to_owned()))
                .context("--environments")?,
            ..Config::default()
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let mut config = cli.common.config()?;
    match cli.command {
        Command::Serve(args) => {
            config.listen = args.listen;
            config.default_rate_limit_per_hour = args.default_rate_limit;
            config.cache_capacity = args.cache_capacity;
            config.cache_ttl = args.cache_ttl;
            config.negative_cache_ttl = args.negative_cache_ttl;
            config.usage_flush_interval = args.usage_flush_interval;
            config.max_message_bytes = args.max_message_bytes;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let keygate = Keygate::open(config).await.context("cannot open storage")?;
            keygate.serve(listener, shutdown_signal()).await?;
            tracing::info!("keygate stopped");
        }
        Command::Migrate => {
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
        }
        Command::Bootstrap {
            owner,
            environment,
            name,
        } => {
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            let secret = bootstrap(&store, &config, &owner, &environment, &name).await?;
            println!("{secret}");
        }
    }
    Ok(())
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

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
