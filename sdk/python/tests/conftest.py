"""Fixtures: a real `keygate serve` built from this repository.

The server binary is $KEYGATE_BIN, or target/debug/keygate at the repository
root, built with `cargo build -p keygate-server` when missing. The tests fail,
never skip, when it cannot be started. ``keygate_server`` serves plaintext;
``tls_keygate_server`` serves mutual TLS with certificates made at test time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

import keygate


@dataclass(frozen=True)
class KeygateServer:
    address: str
    admin_key: str


@dataclass(frozen=True)
class TlsKeygateServer(KeygateServer):
    """A Keygate requiring client certificates signed by ``ca_file``, which
    also signed its own certificate (for localhost and 127.0.0.1)."""

    ca_file: Path
    cert_file: Path  # a client certificate
    key_file: Path


def _repo_root() -> Path:
    for directory in Path(__file__).resolve().parents:
        if (directory / "Cargo.toml").is_file() and (directory / "proto").is_dir():
            return directory
    raise RuntimeError("repository root (Cargo.toml beside proto/) not found")


def _keygate_binary() -> Path:
    if env := os.environ.get("KEYGATE_BIN"):
        path = Path(env)
        if not path.is_file():
            raise RuntimeError(f"KEYGATE_BIN={env} does not exist")
        return path
    root = _repo_root()
    path = root / "target" / "debug" / "keygate"
    if not path.is_file():
        subprocess.run(["cargo", "build", "-p", "keygate-server"], cwd=root, check=True)
    if not path.is_file():
        raise RuntimeError(f"`cargo build -p keygate-server` did not produce {path}")
    return path


def free_address() -> str:
    """A 127.0.0.1 address whose port was free just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _wait_serving(
    address: str,
    process: subprocess.Popen[bytes],
    credentials: grpc.ChannelCredentials | None,
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"keygate serve exited early with {process.returncode}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"keygate at {address} not SERVING after {timeout}s")
            time.sleep(0.1)


@contextmanager
def _run_keygate(
    serve_args: Sequence[str] = (), credentials: grpc.ChannelCredentials | None = None
) -> Iterator[KeygateServer]:
    """Bootstraps a management key and runs `keygate serve` with
    ``serve_args`` added until the block ends; ``credentials`` reach its
    health service (None: plaintext)."""
    binary = _keygate_binary()
    directory = Path(tempfile.mkdtemp(prefix="keygate-py-sdk-"))
    database_url = f"sqlite://{directory / 'kg.db'}?mode=rwc"
    try:
        bootstrap = subprocess.run(
            [binary, "bootstrap", "--owner", "acme", "--database-url", database_url],
            check=True,
            capture_output=True,
            text=True,
        )
        admin_key = bootstrap.stdout.strip()
        assert admin_key.startswith("kg_live_") and "\n" not in admin_key, bootstrap.stdout

        address = free_address()
        log = (directory / "serve.log").open("wb")
        process = subprocess.Popen(
            [binary, "serve", "--listen", address, "--database-url", database_url, *serve_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                _wait_serving(address, process, credentials)
            except RuntimeError as error:
                raise RuntimeError(f"{error}\n{(directory / 'serve.log').read_text()}") from None
            yield KeygateServer(address=address, admin_key=admin_key)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            finally:
                log.close()
            assert code == 0, f"keygate serve exited with {code} after SIGTERM"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def keygate_server() -> Iterator[KeygateServer]:
    with _run_keygate() as server:
        yield server


@dataclass(frozen=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path  # PEM
    key_file: Path  # PEM, PKCS#8


def _issue(
    directory: Path,
    name: str,
    issuer: _Issued | None,
    usage: x509.ObjectIdentifier | None = None,
) -> _Issued:
    """A certificate named ``name`` signed by ``issuer`` (None: a self-signed
    CA) with the extended key usage and localhost and 127.0.0.1 as names,
    written with its key to ``name``.pem and ``name``.key in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        names = [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key if issuer is None else issuer.key, hashes.SHA256())
    cert_file = directory / f"{name}.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / f"{name}.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return _Issued(cert, key, cert_file, key_file)


@pytest.fixture(scope="session")
def tls_keygate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKeygateServer]:
    directory = tmp_path_factory.mktemp("tls")
    ca = _issue(directory, "ca", None)
    server = _issue(directory, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH)
    client = _issue(directory, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    serve_args = ["--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file)]
    serve_args += ["--tls-client-ca", str(ca.cert_file)]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_file.read_bytes(),
        private_key=client.key_file.read_bytes(),
        certificate_chain=client.cert_file.read_bytes(),
    )
    with _run_keygate(serve_args, credentials) as running:
        yield TlsKeygateServer(
            address=running.address,
            admin_key=running.admin_key,
            ca_file=ca.cert_file,
            cert_file=client.cert_file,
            key_file=client.key_file,
        )


@pytest.fixture
def admin(keygate_server: KeygateServer) -> Iterator[keygate.Client]:
    with keygate.Client(
        keygate_server.address, management_key=keygate_server.admin_key, insecure=True
    ) as client:
        yield client
