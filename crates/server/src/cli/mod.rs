//! `keygate keys …` and `keygate audit`: the management API of a running
//! Keygate from a shell, for operators and scripts that would otherwise
//! hand-write grpcurl JSON.
//!
//! This module holds the arguments and the exit codes; [`keys`] and
//! [`audit`] make the calls, [`connect`] builds the channel (address, TLS,
//! management key), [`output`] prints tables or JSON, [`time`] reads and
//! shows times, and [`error`] turns a failure into a message and an exit
//! code (2 for bad input, 1 for anything else).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use keygate::v1 as pb;

mod audit;
mod connect;
mod error;
mod keys;
mod output;
mod time;

use error::CliError;

/// Where the server is and how to reach it; the same for every `keys`
/// subcommand and `audit`. The management key is read from `KEYGATE_TOKEN`
/// or `--token-file`, never from a flag of its own, so it stays out of shell
/// history and process lists.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub(crate) struct ClientArgs {
    /// Keygate's gRPC address: http://host:port, or https://host:port for
    /// TLS.
    #[arg(
        long,
        env = "KEYGATE_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Read the management key from this file (surrounding whitespace is
    /// ignored) instead of the KEYGATE_TOKEN environment variable.
    #[arg(long, env = "KEYGATE_TOKEN_FILE", value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// Trust this PEM CA for the server's certificate (https:// only;
    /// default: the system's trusted CAs).
    #[arg(
        long,
        env = "KEYGATE_CLIENT_TLS_CA",
        value_name = "PATH",
        global = true
    )]
    tls_ca: Option<PathBuf>,
    /// Present this PEM client certificate (mutual TLS; needs --tls-key).
    #[arg(
        long,
        env = "KEYGATE_CLIENT_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        global = true
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "KEYGATE_CLIENT_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert",
        global = true
    )]
    tls_key: Option<PathBuf>,
    /// Print each response as JSON (the proto3 JSON mapping: camelCase
    /// fields, enum names, RFC 3339 times) instead of a table.
    #[arg(long, global = true, help_heading = "Output")]
    json: bool,
}

/// `keygate keys …`.
#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret, this once (on stdout alone when
    /// stdout is not a terminal; the key's details go to stderr).
    Create(CreateArgs),
    /// List keys, every page, optionally filtered.
    List(ListArgs),
    /// Show one key.
    Get(KeyIdArg),
    /// Change a key's name, scopes, IP allowlist, rate limit, metadata or
    /// expiry: only the fields whose flags are given.
    Update(UpdateArgs),
    /// Give a key a new secret and print it, this once (like create).
    Rotate(RotateArgs),
    /// End a key for good.
    Revoke(RevokeArgs),
    /// Switch a key off until `enable`.
    Disable(EtagArgs),
    /// Switch a disabled key back on.
    Enable(EtagArgs),
    /// Soft-delete a key: it stops working at once and can be restored with
    /// `undelete` until it is purged.
    Delete(EtagArgs),
    /// Restore a deleted key.
    Undelete(KeyIdArg),
    /// Requests per hour: allowed, denied by rate limit, denied otherwise
    /// (last 24 hours by default).
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
struct KeyIdArg {
    /// The key's id.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
}

#[derive(Debug, Args)]
struct EtagArgs {
    /// The key's id.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    /// Change the key only if its etag is still this one (from `get`).
    #[arg(long)]
    etag: Option<String>,
}

/// The fields `create` and `update` both set.
#[derive(Debug, Args)]
struct KeyFieldArgs {
    /// A scope to grant, such as dns:read, dns:* or * (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scope: Vec<String>,
    /// Scopes to grant, comma-separated (adds to --scope).
    #[arg(long, value_delimiter = ',', value_name = "SCOPE,…")]
    scopes: Vec<String>,
    /// A CIDR network requests may come from (repeatable; comma-separated
    /// works too); none means any address.
    #[arg(long = "ip", value_delimiter = ',', value_name = "CIDR")]
    ip: Vec<String>,
    /// Requests per hour (default: the server's).
    #[arg(long, value_name = "PER_HOUR")]
    rate_limit: Option<u32>,
    /// When the key expires, RFC 3339 (2030-01-31T00:00:00Z).
    #[arg(long, value_parser = time::rfc3339, conflicts_with = "ttl", value_name = "TIME")]
    expires_at: Option<DateTime<Utc>>,
    /// The key's lifetime from now, such as 30d or 12h.
    #[arg(long, value_parser = crate::parse_duration, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// A metadata entry KEY=VALUE (repeatable). With `update`, the entries
    /// given replace all of the key's metadata.
    #[arg(long = "metadata", value_parser = parse_metadata, value_name = "KEY=VALUE")]
    metadata: Vec<(String, String)>,
}

impl KeyFieldArgs {
    /// --scope and --scopes together, in the order given per flag.
    fn all_scopes(&self) -> Vec<String> {
        self.scope
            .iter()
            .chain(&self.scopes)
            .map(|s| s.trim().to_owned())
            .collect()
    }

    fn all_ips(&self) -> Vec<String> {
        self.ip.iter().map(|s| s.trim().to_owned()).collect()
    }

    /// The metadata map; a key given twice is an error rather than a
    /// silent last-wins.
    fn metadata_map(&self) -> Result<std::collections::HashMap<String, String>, CliError> {
        let mut map = std::collections::HashMap::new();
        for (k, v) in &self.metadata {
            if map.insert(k.clone(), v.clone()).is_some() {
                return Err(CliError::usage(format!(
                    "--metadata: key {k:?} is given twice"
                )));
            }
        }
        Ok(map)
    }
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Owner (tenant) of the new key.
    #[arg(long)]
    owner: String,
    /// A human name for the key.
    #[arg(long)]
    name: String,
    /// The key's environment, such as live or test.
    #[arg(long)]
    environment: String,
    #[command(flatten)]
    fields: KeyFieldArgs,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The key's id.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    /// A new name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    fields: KeyFieldArgs,
    /// Remove every scope.
    #[arg(long, conflicts_with_all = ["scope", "scopes"])]
    clear_scopes: bool,
    /// Remove the IP allowlist (any address may use the key).
    #[arg(long, conflicts_with = "ip")]
    clear_ips: bool,
    /// Go back to the server's default rate limit.
    #[arg(long, conflicts_with = "rate_limit")]
    clear_rate_limit: bool,
    /// Remove all metadata.
    #[arg(long, conflicts_with = "metadata")]
    clear_metadata: bool,
    /// Make the key never expire.
    #[arg(long, conflicts_with_all = ["expires_at", "ttl"])]
    clear_expiry: bool,
    /// Change the key only if its etag is still this one (from `get`).
    #[arg(long)]
    etag: Option<String>,
}

#[derive(Debug, Args)]
struct RotateArgs {
    /// The key's id.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    /// How long the old secret keeps working, such as 1h (default: it stops
    /// at once).
    #[arg(long, value_parser = crate::parse_duration, value_name = "DURATION")]
    grace: Option<Duration>,
    /// Rotate only if the key's etag is still this one (from `get`).
    #[arg(long)]
    etag: Option<String>,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The key's id.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    /// Why, for the record.
    #[arg(long)]
    reason: Option<String>,
    /// Revoke only if the key's etag is still this one (from `get`).
    #[arg(long)]
    etag: Option<String>,
}

/// A key status, as `list --status` takes it.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum StatusArg {
    Active,
    Disabled,
    Expired,
    Revoked,
    Deleted,
}

impl From<StatusArg> for pb::KeyStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Active => Self::Active,
            StatusArg::Disabled => Self::Disabled,
            StatusArg::Expired => Self::Expired,
            StatusArg::Revoked => Self::Revoked,
            StatusArg::Deleted => Self::Deleted,
        }
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only keys of this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Only keys of this environment.
    #[arg(long)]
    environment: Option<String>,
    /// Only keys with this status (deleted implies --show-deleted).
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// Include deleted keys.
    #[arg(long)]
    show_deleted: bool,
    /// Only keys last used before this time (never used counts): RFC 3339,
    /// or a duration meaning that long ago, such as 90d.
    #[arg(long, value_parser = time::past, value_name = "TIME")]
    last_used_before: Option<DateTime<Utc>>,
    /// Only keys that expire before this time: RFC 3339, or a duration
    /// meaning that long from now, such as 30d.
    #[arg(long, value_parser = time::future, value_name = "TIME")]
    expires_before: Option<DateTime<Utc>>,
    /// Keys asked for per call (1 to 1000; default: the server's); every
    /// page is listed either way.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    page_size: Option<i32>,
}

#[derive(Debug, Args)]
struct UsageArgs {
    /// The key's id.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    /// Start of the range: RFC 3339, or a duration meaning that long ago
    /// (default: 24 hours before --until).
    #[arg(long, value_parser = time::past, value_name = "TIME", conflicts_with = "hours")]
    since: Option<DateTime<Utc>>,
    /// End of the range: RFC 3339, or a duration meaning that long ago
    /// (default: now).
    #[arg(long, value_parser = time::past, value_name = "TIME", conflicts_with = "hours")]
    until: Option<DateTime<Utc>>,
    /// The last this many hours (at most 744, 31 days).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=744))]
    hours: Option<u32>,
}

/// `keygate audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only events of this key.
    #[arg(long = "key", value_name = "KEY_ID")]
    key_id: Option<String>,
    /// Only events of keys of this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Only events made by this management key.
    #[arg(long, value_name = "KEY_ID")]
    actor: Option<String>,
    /// Only events of this method, such as RevokeKey.
    #[arg(long)]
    method: Option<String>,
    /// Only events at or after this time: RFC 3339, or a duration meaning
    /// that long ago, such as 7d.
    #[arg(long, value_parser = time::past, value_name = "TIME")]
    since: Option<DateTime<Utc>>,
    /// Only events before this time: RFC 3339, or a duration meaning that
    /// long ago.
    #[arg(long, value_parser = time::past, value_name = "TIME")]
    until: Option<DateTime<Utc>>,
    /// Stop after this many events (default: every page).
    #[arg(long)]
    limit: Option<usize>,
    /// Events asked for per call (1 to 1000; default: the server's).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    page_size: Option<i32>,
    // Last: its help heading applies to the flags after it.
    #[command(flatten)]
    client: ClientArgs,
}

/// `KEY=VALUE`, split at the first `=`.
fn parse_metadata(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Runs `keygate keys …`; the exit code says how it went.
pub(crate) async fn keys(args: KeysArgs) -> ExitCode {
    finish(keys::run(args.client, args.command).await)
}

/// Runs `keygate audit`.
pub(crate) async fn audit(args: AuditArgs) -> ExitCode {
    finish(audit::run(args).await)
}

fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            err.report();
            ExitCode::from(err.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_metadata("plan=pro=max"),
            Ok(("plan".into(), "pro=max".into()))
        );
        assert_eq!(
            parse_metadata("empty="),
            Ok(("empty".into(), String::new()))
        );
        assert!(parse_metadata("plan").is_err());
        assert!(parse_metadata("=pro").is_err());
    }
}
