//! The connection a client command makes: the address (`--addr`), TLS for
//! an https:// address (`--tls-ca`, and `--tls-cert` / `--tls-key` for
//! mutual TLS, as the server's `serve` flags name them), and the management
//! key, read from `KEYGATE_TOKEN` or `--token-file` only. There is
//! deliberately no `--token` flag: a secret in argv is visible in shell
//! history and to every user running `ps`.
//!
//! Everything here that can be wrong with the input is checked before any
//! connection is tried, and is a usage error (exit 2).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::anyhow;
use keygate::Client;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

use super::{ClientArgs, error::CliError};

/// The environment variable holding the management key.
pub(super) const TOKEN_ENV: &str = "KEYGATE_TOKEN";

/// How long connecting may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one call may take; the server cancels its own calls well
/// before (`serve --request-timeout`, 10s by default).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected client that sends the management key on every call.
pub(super) async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let token = management_key(args.token_file.as_deref(), std::env::var_os(TOKEN_ENV))?;
    let endpoint = endpoint(args)?;
    let client = Client::connect_with(endpoint).await.map_err(|err| {
        CliError::Other(anyhow!(
            "cannot connect to {}: {}",
            args.addr,
            error_chain(&err)
        ))
    })?;
    client.with_management_key(&token).map_err(|_| {
        CliError::usage("the management key holds characters a key never has (not ASCII)")
    })
}

/// The management key: the contents of `token_file` if given (it wins,
/// being the more explicit), else `env` (KEYGATE_TOKEN); surrounding
/// whitespace, such as a file's last newline, is not part of it.
pub(super) fn management_key(
    token_file: Option<&Path>,
    env: Option<OsString>,
) -> Result<String, CliError> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|err| {
            CliError::usage(format!(
                "cannot read --token-file {}: {err}",
                path.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::usage(format!(
                "--token-file {} is empty",
                path.display()
            )));
        }
        return Ok(token.to_owned());
    }
    match env {
        Some(value) => {
            let value = value
                .into_string()
                .map_err(|_| CliError::usage(format!("{TOKEN_ENV} is not valid UTF-8")))?;
            let token = value.trim();
            if token.is_empty() {
                return Err(missing());
            }
            Ok(token.to_owned())
        }
        None => Err(missing()),
    }
}

fn missing() -> CliError {
    CliError::usage(format!(
        "no management key: set {TOKEN_ENV} or pass --token-file PATH \
         (a key is never taken as a flag, to keep it out of shell history and process lists)"
    ))
}

/// The endpoint for `--addr`, with TLS when it is https://.
fn endpoint(args: &ClientArgs) -> Result<Endpoint, CliError> {
    let addr = args.addr.trim();
    let uri: Uri = addr.parse().map_err(|_| bad_addr(addr))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_addr(addr)),
    };
    if uri.host().is_none() {
        return Err(bad_addr(addr));
    }
    let endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let tls_flags = [&args.tls_ca, &args.tls_cert, &args.tls_key];
    if !https {
        if tls_flags.iter().any(|f| f.is_some()) {
            return Err(CliError::usage(format!(
                "--tls-ca, --tls-cert and --tls-key (or KEYGATE_CLIENT_TLS_*) need an https:// --addr, not {addr}"
            )));
        }
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &args.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read_pem("--tls-cert", cert)?,
            read_pem("--tls-key", key)?,
        ));
    }
    endpoint
        .tls_config(tls)
        .map_err(|err| CliError::usage(format!("TLS: {}", error_chain(&err))))
}

fn bad_addr(addr: &str) -> CliError {
    CliError::usage(format!(
        "--addr {addr:?} is not an address like http://127.0.0.1:50051 or https://keygate.internal:50051"
    ))
}

/// The PEM file `path` of `flag`; a file without a PEM block is refused
/// here rather than failing the handshake obscurely.
fn read_pem(flag: &str, path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|err| CliError::usage(format!("cannot read {flag} {}: {err}", path.display())))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(CliError::usage(format!(
            "{flag} {} holds no PEM block",
            path.display()
        )));
    }
    Ok(bytes)
}

/// `err` and its sources: tonic's own message ("transport error") says
/// little without them.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: &str) -> ClientArgs {
        ClientArgs {
            addr: addr.into(),
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            json: false,
        }
    }

    #[test]
    fn the_key_comes_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  kg_live_fromfile\n").unwrap();
        assert_eq!(
            management_key(Some(&file), Some("kg_live_fromenv".into())).unwrap(),
            "kg_live_fromfile"
        );
        assert_eq!(
            management_key(None, Some(" kg_live_fromenv\n".into())).unwrap(),
            "kg_live_fromenv"
        );
        for env in [None, Some(OsString::from("  "))] {
            let err = management_key(None, env).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.message().contains("KEYGATE_TOKEN"), "{}", err.message());
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(
            management_key(Some(&file), None)
                .unwrap_err()
                .message()
                .contains("is empty")
        );
        let missing = dir.path().join("nope");
        let err = management_key(Some(&missing), None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message().contains("cannot read --token-file"));
    }

    #[test]
    fn addresses_need_a_scheme_and_tls_needs_https() {
        assert!(endpoint(&args("http://127.0.0.1:50051")).is_ok());
        assert!(endpoint(&args("https://keygate.internal:50051")).is_ok());
        for bad in ["127.0.0.1:50051", "grpc://x:1", "not a url", ""] {
            let err = endpoint(&args(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.message().contains("--addr"), "{}", err.message());
        }
        let mut plain = args("http://127.0.0.1:50051");
        plain.tls_ca = Some("ca.pem".into());
        assert!(endpoint(&plain).unwrap_err().message().contains("https://"));
        let mut missing_ca = args("https://keygate.internal:50051");
        missing_ca.tls_ca = Some("/nonexistent/ca.pem".into());
        assert!(
            endpoint(&missing_ca)
                .unwrap_err()
                .message()
                .contains("cannot read --tls-ca")
        );
    }
}
