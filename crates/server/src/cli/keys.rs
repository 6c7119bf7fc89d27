//! `keygate keys …`: one KeyManagementService call per subcommand (`list`
//! pages through every page). Each command builds its request first, so
//! flags that make no sense fail before anything is sent, then connects,
//! calls and prints.
//!
//! `create` and `rotate` print the secret once. When stdout is not a
//! terminal (`SECRET=$(keygate keys create …)`), stdout gets the secret
//! alone and the key's details go to stderr; on a terminal both go to
//! stdout, details first. `--json` prints the whole response instead,
//! secret included, for scripts that want both.

use std::io::IsTerminal;

use chrono::Utc;
use keygate::{Client, v1 as pb};
use prost_types::FieldMask;

use super::{
    ClientArgs, CreateArgs, EtagArgs, KeysCommand, ListArgs, RevokeArgs, RotateArgs, UpdateArgs,
    UsageArgs,
    connect::connect,
    error::CliError,
    output::{self, Proto},
    time,
};

/// Runs one `keys` subcommand.
pub(super) async fn run(client: ClientArgs, command: KeysCommand) -> Result<(), CliError> {
    let json = client.json;
    match command {
        KeysCommand::Create(args) => {
            let request = create_request(args)?;
            let resp = connect(&client).await?.keys.create_key(request).await?;
            let resp = resp.into_inner();
            print_secret(json, &resp, resp.key.as_ref(), &resp.secret, None)
        }
        KeysCommand::List(args) => {
            let request = list_request(&args);
            let mut keygate = connect(&client).await?;
            let keys = list_all(&mut keygate, request).await?;
            if json {
                output::stdout(&output::json(&pb::ListKeysResponse {
                    keys,
                    next_page_token: String::new(),
                })?)
            } else {
                output::stdout(&output::key_table(&keys, Utc::now()))
            }
        }
        KeysCommand::Get(args) => {
            let request = pb::GetKeyRequest {
                key_id: args.key_id,
            };
            let resp = connect(&client).await?.keys.get_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Update(args) => {
            let request = update_request(args)?;
            let resp = connect(&client).await?.keys.update_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Rotate(args) => {
            let request = rotate_request(args);
            let resp = connect(&client).await?.keys.rotate_key(request).await?;
            let resp = resp.into_inner();
            let previous = resp
                .previous_secret_expires_at
                .as_ref()
                .and_then(time::from_timestamp)
                .filter(|at| *at > Utc::now())
                .map(|at| format!("the previous secret works until {}\n", time::date(at)));
            print_secret(
                json,
                &resp,
                resp.key.as_ref(),
                &resp.secret,
                previous.as_deref(),
            )
        }
        KeysCommand::Revoke(args) => {
            let request = revoke_request(args);
            let resp = connect(&client).await?.keys.revoke_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Disable(EtagArgs { key_id, etag }) => {
            let request = pb::DisableKeyRequest {
                key_id,
                etag: etag.unwrap_or_default(),
            };
            let resp = connect(&client).await?.keys.disable_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Enable(EtagArgs { key_id, etag }) => {
            let request = pb::EnableKeyRequest {
                key_id,
                etag: etag.unwrap_or_default(),
            };
            let resp = connect(&client).await?.keys.enable_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Delete(EtagArgs { key_id, etag }) => {
            let request = pb::DeleteKeyRequest {
                key_id,
                etag: etag.unwrap_or_default(),
            };
            let resp = connect(&client).await?.keys.delete_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Undelete(args) => {
            let request = pb::UndeleteKeyRequest {
                key_id: args.key_id,
            };
            let resp = connect(&client).await?.keys.undelete_key(request).await?;
            let resp = resp.into_inner();
            print_key(json, &resp, resp.key.as_ref())
        }
        KeysCommand::Usage(args) => {
            let request = usage_request(args)?;
            let resp = connect(&client).await?.keys.get_key_usage(request).await?;
            let resp = resp.into_inner();
            if json {
                output::stdout(&output::json(&resp)?)
            } else {
                output::stdout(&output::usage_table(&resp.buckets))
            }
        }
    }
}

fn create_request(args: CreateArgs) -> Result<pb::CreateKeyRequest, CliError> {
    let fields = &args.fields;
    let expiry = match (fields.expires_at, fields.ttl) {
        (Some(at), _) => Some(pb::create_key_request::Expiry::ExpiresAt(time::timestamp(
            at,
        ))),
        (None, Some(ttl)) => Some(pb::create_key_request::Expiry::Ttl(time::duration(ttl))),
        (None, None) => None,
    };
    Ok(pb::CreateKeyRequest {
        owner_id: args.owner.clone(),
        name: args.name.clone(),
        environment: args.environment.clone(),
        scopes: fields.all_scopes(),
        ip_allowlist: fields.all_ips(),
        rate_limit_per_hour: fields.rate_limit,
        metadata: fields.metadata_map()?,
        expiry,
    })
}

fn list_request(args: &ListArgs) -> pb::ListKeysRequest {
    let status = args.status.map(pb::KeyStatus::from);
    pb::ListKeysRequest {
        owner_id: args.owner.clone().unwrap_or_default(),
        environment: args.environment.clone().unwrap_or_default(),
        status: status.unwrap_or(pb::KeyStatus::Unspecified).into(),
        page_size: args.page_size.unwrap_or(0),
        page_token: String::new(),
        last_used_before: args.last_used_before.map(time::timestamp),
        expires_before: args.expires_before.map(time::timestamp),
        // Asking for deleted keys means showing them.
        show_deleted: args.show_deleted || status == Some(pb::KeyStatus::Deleted),
    }
}

/// Every page of `request`, in the server's order (key id).
async fn list_all(
    keygate: &mut Client,
    mut request: pb::ListKeysRequest,
) -> Result<Vec<pb::ApiKey>, CliError> {
    let mut keys = Vec::new();
    loop {
        let page = keygate.keys.list_keys(request.clone()).await?.into_inner();
        keys.extend(page.keys);
        if page.next_page_token.is_empty() {
            return Ok(keys);
        }
        if page.next_page_token == request.page_token {
            return Err(anyhow::anyhow!("the server returned the same page token twice").into());
        }
        request.page_token = page.next_page_token;
    }
}

/// The request for `update`: the fields whose flags are given, and an
/// update mask naming exactly those (a `--clear-…` flag names its field
/// with no value, which clears it).
fn update_request(args: UpdateArgs) -> Result<pb::UpdateKeyRequest, CliError> {
    let fields = &args.fields;
    let scopes = fields.all_scopes();
    let ips = fields.all_ips();
    let metadata = fields.metadata_map()?;
    let expires_at = match (fields.expires_at, fields.ttl) {
        (Some(at), _) => Some(at),
        (None, Some(ttl)) => Some(
            time::shift(Utc::now(), ttl, 1).ok_or_else(|| CliError::usage("--ttl is too long"))?,
        ),
        (None, None) => None,
    };
    let mut paths = Vec::new();
    let mut name_path = |given: bool, path: &str| {
        if given {
            paths.push(path.to_owned());
        }
    };
    name_path(args.name.is_some(), "name");
    name_path(!scopes.is_empty() || args.clear_scopes, "scopes");
    name_path(!ips.is_empty() || args.clear_ips, "ip_allowlist");
    name_path(
        fields.rate_limit.is_some() || args.clear_rate_limit,
        "rate_limit_per_hour",
    );
    name_path(!metadata.is_empty() || args.clear_metadata, "metadata");
    name_path(expires_at.is_some() || args.clear_expiry, "expires_at");
    if paths.is_empty() {
        return Err(CliError::usage(
            "nothing to update: give --name, --scope/--scopes, --ip, --rate-limit, --metadata, \
             --expires-at/--ttl, or a --clear-… flag",
        ));
    }
    Ok(pb::UpdateKeyRequest {
        key: Some(pb::ApiKey {
            key_id: args.key_id,
            name: args.name.unwrap_or_default(),
            scopes,
            ip_allowlist: ips,
            rate_limit_per_hour: fields.rate_limit,
            metadata,
            expires_at: expires_at.map(time::timestamp),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths }),
        etag: args.etag.unwrap_or_default(),
    })
}

fn rotate_request(args: RotateArgs) -> pb::RotateKeyRequest {
    pb::RotateKeyRequest {
        key_id: args.key_id,
        grace_period: args.grace.map(time::duration),
        etag: args.etag.unwrap_or_default(),
    }
}

fn revoke_request(args: RevokeArgs) -> pb::RevokeKeyRequest {
    pb::RevokeKeyRequest {
        key_id: args.key_id,
        reason: args.reason.unwrap_or_default(),
        etag: args.etag.unwrap_or_default(),
    }
}

fn usage_request(args: UsageArgs) -> Result<pb::GetKeyUsageRequest, CliError> {
    let start = match args.hours {
        Some(hours) => Some(
            time::shift(
                Utc::now(),
                std::time::Duration::from_secs(u64::from(hours) * 3600),
                -1,
            )
            .ok_or_else(|| CliError::usage("--hours is too large"))?,
        ),
        None => args.since,
    };
    Ok(pb::GetKeyUsageRequest {
        key_id: args.key_id,
        start_time: start.map(time::timestamp),
        end_time: args.until.map(time::timestamp),
    })
}

/// A response carrying one key: JSON, or the key's details.
fn print_key<M: Proto>(json: bool, resp: &M, key: Option<&pb::ApiKey>) -> Result<(), CliError> {
    if json {
        return output::stdout(&output::json(resp)?);
    }
    let key = key.ok_or_else(|| anyhow::anyhow!("the server's response holds no key"))?;
    output::stdout(&output::key_details(key, Utc::now()))
}

/// A response carrying a new secret; see the module docs for where each
/// part goes.
fn print_secret<M: Proto>(
    json: bool,
    resp: &M,
    key: Option<&pb::ApiKey>,
    secret: &str,
    note: Option<&str>,
) -> Result<(), CliError> {
    if json {
        return output::stdout(&output::json(resp)?);
    }
    let key = key.ok_or_else(|| anyhow::anyhow!("the server's response holds no key"))?;
    let mut details = output::key_details(key, Utc::now());
    if let Some(note) = note {
        details.push_str(note);
    }
    if std::io::stdout().is_terminal() {
        output::stdout(&format!(
            "{details}\nsecret (shown this once; store it now):\n{secret}\n"
        ))
    } else {
        output::stderr(&format!(
            "{details}the secret went to stdout; it is shown this once\n"
        ))?;
        output::stdout(&format!("{secret}\n"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::KeysArgs;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        keys: KeysArgs,
    }

    fn parse(args: &[&str]) -> KeysCommand {
        let argv = std::iter::once("keys").chain(args.iter().copied());
        Harness::try_parse_from(argv).unwrap().keys.command
    }

    fn update(args: &[&str]) -> Result<pb::UpdateKeyRequest, CliError> {
        let mut argv = vec!["update", "k1"];
        argv.extend(args);
        match parse(&argv) {
            KeysCommand::Update(args) => update_request(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_update_mask_names_exactly_the_flags_given() {
        let req = update(&[
            "--scope",
            "dns:read",
            "--scopes",
            "dns:write,billing:*",
            "--metadata",
            "plan=pro",
            "--clear-rate-limit",
        ])
        .unwrap();
        assert_eq!(
            req.update_mask.unwrap().paths,
            ["scopes", "rate_limit_per_hour", "metadata"]
        );
        let key = req.key.unwrap();
        assert_eq!(key.key_id, "k1");
        assert_eq!(key.scopes, ["dns:read", "dns:write", "billing:*"]);
        assert_eq!(key.rate_limit_per_hour, None);
        assert_eq!(key.metadata["plan"], "pro");

        let req = update(&["--name", "n", "--ttl", "1h", "--etag", "e1"]).unwrap();
        assert_eq!(req.update_mask.unwrap().paths, ["name", "expires_at"]);
        assert!(req.key.unwrap().expires_at.is_some());
        assert_eq!(req.etag, "e1");

        let req = update(&["--clear-expiry", "--clear-ips", "--clear-scopes"]).unwrap();
        assert_eq!(
            req.update_mask.unwrap().paths,
            ["scopes", "ip_allowlist", "expires_at"]
        );

        let err = update(&[]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message().contains("nothing to update"));
        let err = update(&["--metadata", "a=1", "--metadata", "a=2"]).unwrap_err();
        assert!(err.message().contains("given twice"), "{}", err.message());
    }

    #[test]
    fn contradictory_flags_are_refused_by_the_parser() {
        let argv = |args: &[&str]| {
            Harness::try_parse_from(std::iter::once("keys").chain(args.iter().copied()))
        };
        for args in [
            &["update", "k1", "--rate-limit", "5", "--clear-rate-limit"][..],
            &["update", "k1", "--scope", "a:b", "--clear-scopes"],
            &["update", "k1", "--ttl", "1d", "--clear-expiry"],
            &[
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--environment",
                "live",
                "--ttl",
                "1d",
                "--expires-at",
                "2030-01-01T00:00:00Z",
            ],
            &["usage", "k1", "--hours", "3", "--since", "1d"],
            &["list", "--page-size", "0"],
        ] {
            let err = argv(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn create_and_list_requests_carry_the_flags() {
        let KeysCommand::Create(args) = parse(&[
            "create",
            "--owner",
            "acme",
            "--name",
            "billing",
            "--environment",
            "live",
            "--scope",
            "dns:read",
            "--ip",
            "10.0.0.0/8,192.168.0.0/16",
            "--rate-limit",
            "100",
            "--ttl",
            "30d",
            "--metadata",
            "plan=pro",
        ]) else {
            panic!()
        };
        let req = create_request(args).unwrap();
        assert_eq!(req.scopes, ["dns:read"]);
        assert_eq!(req.ip_allowlist, ["10.0.0.0/8", "192.168.0.0/16"]);
        assert_eq!(req.rate_limit_per_hour, Some(100));
        assert_eq!(
            req.expiry,
            Some(pb::create_key_request::Expiry::Ttl(prost_types::Duration {
                seconds: 30 * 86_400,
                nanos: 0
            }))
        );

        let KeysCommand::List(args) = parse(&["list", "--status", "deleted", "--page-size", "2"])
        else {
            panic!()
        };
        let req = list_request(&args);
        assert!(req.show_deleted);
        assert_eq!(req.status(), pb::KeyStatus::Deleted);
        assert_eq!(req.page_size, 2);
    }
}
