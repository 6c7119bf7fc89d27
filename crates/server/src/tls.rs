//! TLS for the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`):
//! the files are read and the rustls configuration built when Keygate
//! opens, so a missing file, a key that does not match its certificate or a
//! CA file without a certificate stops the start, naming the flag, instead
//! of failing the first handshake.
//!
//! With `--tls-client-ca`, every client must present a certificate signed
//! by that CA (mutual TLS); without it, any client may connect and the
//! management key alone authenticates.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::ConfigError;

/// The files TLS is served with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the CA client certificates must be signed by;
    /// `None`: no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files and builds the server's TLS configuration, failing
    /// with the flag whose file is unusable.
    pub fn load(&self) -> Result<ServerTlsConfig, ConfigError> {
        let cert = read_pem("--tls-cert", &self.cert, "CERTIFICATE")?;
        let key = read_pem("--tls-key", &self.key, "PRIVATE KEY")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            let ca = read_pem("--tls-client-ca", ca, "CERTIFICATE")?;
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // Build it now: rustls checks the key against the certificate and
        // parses the CA here.
        Server::builder()
            .tls_config(config.clone())
            .map_err(|err| ConfigError::Invalid {
                flag: if self.client_ca.is_some() {
                    "--tls-cert / --tls-key / --tls-client-ca"
                } else {
                    "--tls-cert / --tls-key"
                },
                problem: error_chain(&err),
            })?;
        Ok(config)
    }
}

/// Reads `path` for `flag`; it must hold a PEM block whose label contains
/// `label` (`CERTIFICATE`, or `PRIVATE KEY` for any key type).
fn read_pem(flag: &'static str, path: &Path, label: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|err| ConfigError::Invalid {
        flag,
        problem: format!("cannot read {}: {err}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains(label));
    if !has_block {
        return Err(ConfigError::Invalid {
            flag,
            problem: format!("{} holds no PEM {label}", path.display()),
        });
    }
    Ok(bytes)
}

/// `err` and its sources, outermost first.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn self_signed() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn usable_files_load() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = self_signed();
        let files = TlsFiles {
            cert: write(dir.path(), "cert.pem", &cert),
            key: write(dir.path(), "key.pem", &key),
            client_ca: Some(write(dir.path(), "ca.pem", &cert)),
        };
        files.load().expect("loads");
    }

    #[test]
    fn unusable_files_name_their_flag() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = self_signed();
        let (other_cert, _) = self_signed();
        let good = TlsFiles {
            cert: write(dir.path(), "cert.pem", &cert),
            key: write(dir.path(), "key.pem", &key),
            client_ca: None,
        };
        let flag_of = |files: TlsFiles| match files.load() {
            Err(ConfigError::Invalid { flag, problem }) => (flag, problem),
            other => panic!("expected an invalid setting, got {other:?}"),
        };

        let (flag, problem) = flag_of(TlsFiles {
            cert: dir.path().join("missing.pem"),
            ..good.clone()
        });
        assert_eq!(flag, "--tls-cert");
        assert!(problem.contains("cannot read"), "{problem}");

        let (flag, problem) = flag_of(TlsFiles {
            key: write(dir.path(), "cert-as-key.pem", &cert),
            ..good.clone()
        });
        assert_eq!(flag, "--tls-key");
        assert!(problem.contains("no PEM PRIVATE KEY"), "{problem}");

        let (flag, _) = flag_of(TlsFiles {
            client_ca: Some(write(dir.path(), "key-as-ca.pem", &key)),
            ..good.clone()
        });
        assert_eq!(flag, "--tls-client-ca");

        // A key that is not the certificate's.
        let (flag, _) = flag_of(TlsFiles {
            cert: write(dir.path(), "other.pem", &other_cert),
            ..good
        });
        assert_eq!(flag, "--tls-cert / --tls-key");
    }
}
