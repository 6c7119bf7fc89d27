"""TLS options of Client and AsyncClient, live against a Keygate that requires
client certificates (see the tls_keygate_server fixture)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import TlsKeygateServer

import keygate
from keygate.v1 import authorization_pb2

Clients = [keygate.Client, keygate.AsyncClient]
SSL = grpc.ssl_channel_credentials()


def test_mutual_tls(tls_keygate_server: TlsKeygateServer) -> None:
    server = tls_keygate_server
    with keygate.Client(
        server.address,
        management_key=server.admin_key,
        tls_ca_file=server.ca_file,
        tls_cert_file=server.cert_file,
        tls_key_file=str(server.key_file),
    ) as kg:
        created = kg.create_key(owner_id="acme", name="mtls", environment="live", scopes=["dns:read"])
        allowed = kg.authorize(created.secret, environment="live", required_scopes=["dns:read"])
    assert (allowed.decision, allowed.key_id) == (authorization_pb2.DECISION_ALLOW, created.key.key_id)


def test_async_mutual_tls(tls_keygate_server: TlsKeygateServer) -> None:
    server = tls_keygate_server

    async def scenario() -> authorization_pb2.AuthorizeResponse:
        async with keygate.AsyncClient(
            server.address,
            management_key=server.admin_key,
            tls_ca_file=server.ca_file,
            tls_cert_file=server.cert_file,
            tls_key_file=server.key_file,
        ) as kg:
            created = await kg.create_key(owner_id="acme", name="mtls-async", environment="live")
            return await kg.authorize(created.secret, environment="live")

    assert asyncio.run(scenario()).decision == authorization_pb2.DECISION_ALLOW


@pytest.mark.parametrize("refused", ["plaintext", "no client certificate"])
def test_tls_server_refuses(tls_keygate_server: TlsKeygateServer, refused: str) -> None:
    server = tls_keygate_server
    transport: dict[str, Any] = (
        {"insecure": True} if refused == "plaintext" else {"tls_ca_file": server.ca_file}
    )
    with keygate.Client(server.address, management_key=server.admin_key, **transport) as kg:
        with pytest.raises(keygate.UnavailableError):
            kg.get_key("00000000-0000-7000-8000-000000000000", timeout=10)


@pytest.mark.parametrize("client_class", Clients)
@pytest.mark.parametrize(
    ("options", "conflict"),
    [
        ({"insecure": True, "tls_ca_file": "ca.pem"}, "insecure=True and tls_ca_file"),
        ({"credentials": SSL, "tls_cert_file": "c.pem", "tls_key_file": "k.pem"}, "credentials and tls_"),
        ({"insecure": True, "credentials": SSL}, "insecure=True and credentials"),
        ({"tls_cert_file": "c.pem"}, "tls_cert_file and tls_key_file go together"),
        ({"tls_ca_file": "ca.pem", "tls_key_file": "k.pem"}, "tls_cert_file and tls_key_file go together"),
    ],
)
def test_conflicting_transport_options(
    client_class: type[keygate.Client | keygate.AsyncClient], options: dict[str, Any], conflict: str
) -> None:
    with pytest.raises(ValueError, match=conflict):
        client_class("localhost:50051", **options)


@pytest.mark.parametrize("client_class", Clients)
def test_unusable_tls_files_are_named(
    client_class: type[keygate.Client | keygate.AsyncClient], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(FileNotFoundError, match="tls_ca_file") as raised:
        client_class("localhost:50051", tls_ca_file=missing)
    assert str(missing) in str(raised.value)

    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValueError, match=re.escape(f"tls_ca_file: {not_pem} holds no PEM CERTIFICATE")):
        client_class("localhost:50051", tls_ca_file=not_pem)
