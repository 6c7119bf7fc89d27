"""What the sync and async clients share: channel set-up and request building.

The mutating requests take an optional ``etag`` (``ApiKey.etag`` as last
read): ``None`` or ``""`` leaves it unset, and the change applies whatever the
key's current state.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from keygate.v1 import authorization_pb2, keys_pb2

ChannelOptions = Sequence[tuple[str, Any]]
StrPath = str | os.PathLike[str]


class Unset(enum.Enum):
    """The type of :data:`UNSET`: an argument that was not passed."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET
"""The default of ``update_key``'s field arguments: leave the field alone
(where ``None`` clears it)."""

UPDATABLE_FIELDS: Final = ("name", "scopes", "ip_allowlist", "rate_limit_per_hour", "metadata", "expires_at")
"""The fields ``UpdateKey`` may change, in the order ``update_key`` names them."""


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key and its secret, which Keygate returns this once."""

    key: keys_pb2.ApiKey
    secret: str


@dataclass(frozen=True, slots=True)
class RotatedKey:
    """A rotated key, its new secret, and when the previous secret stops working."""

    key: keys_pb2.ApiKey
    secret: str
    previous_secret_expires_at: datetime | None


def channel_credentials(
    insecure: bool,
    credentials: grpc.ChannelCredentials | None,
    *,
    tls_ca_file: StrPath | None = None,
    tls_cert_file: StrPath | None = None,
    tls_key_file: StrPath | None = None,
) -> grpc.ChannelCredentials | None:
    """The transport credentials to use; None means plaintext.

    The ``tls_*`` files are PEM: the CA certificates the server's certificate
    must be signed by (None: gRPC's default roots), and a client certificate
    with its private key for mutual TLS (both or neither).
    """
    tls_files = tls_ca_file is not None or tls_cert_file is not None or tls_key_file is not None
    if insecure and credentials is not None:
        raise ValueError("insecure=True and credentials exclude each other")
    if tls_files and insecure:
        raise ValueError("insecure=True and tls_ca_file/tls_cert_file/tls_key_file exclude each other")
    if tls_files and credentials is not None:
        raise ValueError("credentials and tls_ca_file/tls_cert_file/tls_key_file exclude each other")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
    if insecure:
        return None
    if credentials is not None:
        return credentials
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem("tls_ca_file", tls_ca_file, "CERTIFICATE"),
        private_key=_read_pem("tls_key_file", tls_key_file, "PRIVATE KEY"),
        certificate_chain=_read_pem("tls_cert_file", tls_cert_file, "CERTIFICATE"),
    )


def _read_pem(option: str, path: StrPath | None, label: str) -> bytes | None:
    """The contents of ``path``, which must hold a PEM block whose label has ``label``."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        # OSError(errno, ...) is the matching subclass, e.g. FileNotFoundError.
        raise OSError(error.errno, f"{option}: {error.strerror}", os.fspath(path)) from error
    if not any(
        line.startswith(b"-----BEGIN ") and label.encode() in line for line in data.splitlines()
    ):
        raise ValueError(f"{option}: {os.fspath(path)} holds no PEM {label}")
    return data


def bearer_metadata(management_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {management_key}"),) if management_key else ()


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("datetime must be timezone-aware, e.g. datetime.now(timezone.utc)")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def create_key_request(
    *,
    owner_id: str,
    name: str,
    environment: str,
    scopes: Iterable[str],
    ip_allowlist: Iterable[str],
    rate_limit_per_hour: int | None,
    expires_at: datetime | None,
    ttl: timedelta | None,
    metadata: Mapping[str, str] | None = None,
) -> keys_pb2.CreateKeyRequest:
    if expires_at is not None and ttl is not None:
        raise ValueError("give expires_at or ttl, not both")
    request = keys_pb2.CreateKeyRequest(
        owner_id=owner_id,
        name=name,
        environment=environment,
        scopes=list(scopes),
        ip_allowlist=list(ip_allowlist),
        metadata=dict(metadata or {}),
    )
    if rate_limit_per_hour is not None:
        request.rate_limit_per_hour = rate_limit_per_hour
    if expires_at is not None:
        request.expires_at.CopyFrom(timestamp(expires_at))
    if ttl is not None:
        request.ttl.CopyFrom(duration(ttl))
    return request


def get_key_request(key_id: str) -> keys_pb2.GetKeyRequest:
    return keys_pb2.GetKeyRequest(key_id=key_id)


def rotate_key_request(
    key_id: str, *, grace_period: timedelta | None, etag: str | None
) -> keys_pb2.RotateKeyRequest:
    request = keys_pb2.RotateKeyRequest(key_id=key_id, etag=etag or "")
    if grace_period is not None:
        request.grace_period.CopyFrom(duration(grace_period))
    return request


def rotated_key(response: keys_pb2.RotateKeyResponse) -> RotatedKey:
    previous = (
        response.previous_secret_expires_at.ToDatetime(tzinfo=timezone.utc)
        if response.HasField("previous_secret_expires_at")
        else None
    )
    return RotatedKey(key=response.key, secret=response.secret, previous_secret_expires_at=previous)


def revoke_key_request(key_id: str, *, reason: str, etag: str | None) -> keys_pb2.RevokeKeyRequest:
    return keys_pb2.RevokeKeyRequest(key_id=key_id, reason=reason, etag=etag or "")


def disable_key_request(key_id: str, *, etag: str | None) -> keys_pb2.DisableKeyRequest:
    return keys_pb2.DisableKeyRequest(key_id=key_id, etag=etag or "")


def enable_key_request(key_id: str, *, etag: str | None) -> keys_pb2.EnableKeyRequest:
    return keys_pb2.EnableKeyRequest(key_id=key_id, etag=etag or "")


def update_key_expiry_request(
    key_id: str, expires_at: datetime | None, *, etag: str | None
) -> keys_pb2.UpdateKeyExpiryRequest:
    request = keys_pb2.UpdateKeyExpiryRequest(key_id=key_id, etag=etag or "")
    if expires_at is not None:
        request.expires_at.CopyFrom(timestamp(expires_at))
    return request


def list_keys_request(
    *,
    owner_id: str,
    environment: str,
    status: keys_pb2.KeyStatus.ValueType,
    page_size: int,
    last_used_before: datetime | None = None,
    expires_before: datetime | None = None,
    show_deleted: bool = False,
) -> keys_pb2.ListKeysRequest:
    request = keys_pb2.ListKeysRequest(
        owner_id=owner_id,
        environment=environment,
        status=status,
        page_size=page_size,
        show_deleted=show_deleted,
    )
    if last_used_before is not None:
        request.last_used_before.CopyFrom(timestamp(last_used_before))
    if expires_before is not None:
        request.expires_before.CopyFrom(timestamp(expires_before))
    return request


def update_key_request(
    key_id: str,
    *,
    name: str | Unset,
    scopes: Iterable[str] | Unset,
    ip_allowlist: Iterable[str] | Unset,
    rate_limit_per_hour: int | None | Unset,
    metadata: Mapping[str, str] | Unset,
    expires_at: datetime | None | Unset,
    etag: str | None,
) -> keys_pb2.UpdateKeyRequest:
    """An UpdateKeyRequest whose mask names the fields passed (not UNSET).

    ``None`` clears ``rate_limit_per_hour`` (the server default) and
    ``expires_at`` (never expires); empty ``scopes``, ``ip_allowlist`` or
    ``metadata`` clear those. ``ValueError`` if no field is passed.
    """
    request = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(key_id=key_id), etag=etag or "")
    key = request.key
    paths: list[str] = []
    if not isinstance(name, Unset):
        key.name = name
        paths.append("name")
    if not isinstance(scopes, Unset):
        _no_str("scopes", scopes)
        key.scopes.extend(scopes)
        paths.append("scopes")
    if not isinstance(ip_allowlist, Unset):
        _no_str("ip_allowlist", ip_allowlist)
        key.ip_allowlist.extend(ip_allowlist)
        paths.append("ip_allowlist")
    if not isinstance(rate_limit_per_hour, Unset):
        if rate_limit_per_hour is not None:
            key.rate_limit_per_hour = rate_limit_per_hour
        paths.append("rate_limit_per_hour")
    if not isinstance(metadata, Unset):
        key.metadata.update(metadata)
        paths.append("metadata")
    if not isinstance(expires_at, Unset):
        if expires_at is not None:
            key.expires_at.CopyFrom(timestamp(expires_at))
        paths.append("expires_at")
    if not paths:
        raise ValueError(f"update_key needs at least one field to change, of: {', '.join(UPDATABLE_FIELDS)}")
    request.update_mask.paths.extend(paths)
    return request


def _no_str(argument: str, value: Iterable[str]) -> None:
    """Refuses a lone string where a list of strings is meant (it would be split into characters)."""
    if isinstance(value, str):
        raise TypeError(f"{argument} takes a list of strings, not a str (meant [{value!r}]?)")


def delete_key_request(key_id: str, *, etag: str | None) -> keys_pb2.DeleteKeyRequest:
    return keys_pb2.DeleteKeyRequest(key_id=key_id, etag=etag or "")


def undelete_key_request(key_id: str) -> keys_pb2.UndeleteKeyRequest:
    return keys_pb2.UndeleteKeyRequest(key_id=key_id)


def list_audit_events_request(
    *,
    key_id: str,
    owner_id: str,
    actor_key_id: str,
    method: str,
    start_time: datetime | None,
    end_time: datetime | None,
    page_size: int,
) -> keys_pb2.ListAuditEventsRequest:
    request = keys_pb2.ListAuditEventsRequest(
        key_id=key_id, owner_id=owner_id, actor_key_id=actor_key_id, method=method, page_size=page_size
    )
    if start_time is not None:
        request.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(timestamp(end_time))
    return request


def get_key_usage_request(
    key_id: str, *, start_time: datetime | None, end_time: datetime | None
) -> keys_pb2.GetKeyUsageRequest:
    request = keys_pb2.GetKeyUsageRequest(key_id=key_id)
    if start_time is not None:
        request.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(timestamp(end_time))
    return request


def authorize_request(
    key: str, *, environment: str, required_scopes: Iterable[str], client_ip: str
) -> authorization_pb2.AuthorizeRequest:
    return authorization_pb2.AuthorizeRequest(
        key=key,
        environment=environment,
        required_scopes=list(required_scopes),
        client_ip=client_ip,
    )
