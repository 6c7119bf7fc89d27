"""The synchronous Keygate client."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc

from keygate import _common
from keygate._common import UNSET, ChannelOptions, CreatedKey, RotatedKey, StrPath, Unset
from keygate.errors import from_rpc_error
from keygate.v1 import (
    authorization_pb2,
    authorization_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
)

_Response = TypeVar("_Response")


class Client:
    """A connection to a Keygate server.

    ``keys`` and ``authorization`` are the generated stubs, for any call; the
    methods wrap the common ones with plain Python arguments and raise
    :class:`keygate.KeygateError` (keeping the gRPC status code) on errors.
    The management key, if given, is sent as ``authorization: Bearer <key>``
    metadata on every call.

    Use it as a context manager, or call :meth:`close`::

        with keygate.Client("keygate:50051", management_key=key, insecure=True) as kg:
            created = kg.create_key(owner_id="acme", name="ci", environment="live", scopes=["dns:read"])
    """

    keys: keys_pb2_grpc.KeyManagementServiceStub
    authorization: authorization_pb2_grpc.AuthorizationServiceStub

    def __init__(
        self,
        target: str,
        *,
        management_key: str | None = None,
        insecure: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca_file: StrPath | None = None,
        tls_cert_file: StrPath | None = None,
        tls_key_file: StrPath | None = None,
        options: ChannelOptions = (),
    ) -> None:
        """Opens a channel to ``target`` (such as ``"keygate.internal:50051"``).

        TLS with gRPC's default roots by default; ``insecure=True`` for
        plaintext. For a private CA or mutual TLS, give PEM files:
        ``tls_ca_file`` (the CA that signs the server's certificate) and, when
        Keygate requires client certificates, ``tls_cert_file`` with
        ``tls_key_file``; or your own ``credentials``
        (``grpc.ssl_channel_credentials(...)``). ``insecure``, ``credentials``
        and the ``tls_*`` files exclude each other (``ValueError``). The files
        are read here: an unreadable one raises ``OSError``, one without PEM
        ``ValueError``, naming it. The channel connects lazily, on the first
        call.
        """
        transport = _common.channel_credentials(
            insecure,
            credentials,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        channel = (
            grpc.insecure_channel(target, options=options)
            if transport is None
            else grpc.secure_channel(target, transport, options=options)
        )
        metadata = _common.bearer_metadata(management_key)
        if metadata:
            channel = grpc.intercept_channel(channel, _MetadataInterceptor(metadata))
        self._channel = channel
        self.keys = keys_pb2_grpc.KeyManagementServiceStub(channel)
        self.authorization = authorization_pb2_grpc.AuthorizationServiceStub(channel)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_key(
        self,
        *,
        owner_id: str,
        name: str,
        environment: str,
        scopes: Iterable[str] = (),
        ip_allowlist: Iterable[str] = (),
        rate_limit_per_hour: int | None = None,
        expires_at: datetime | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CreatedKey:
        """Creates a key; the result holds its secret, returned this once.

        ``metadata`` is your own data about the key (a plan, a tenant id),
        returned by :meth:`authorize` on allow: at most 32 entries, keys of 1
        to 64 characters of ``[a-zA-Z0-9_.-]``, values of at most 512 bytes.
        """
        request = _common.create_key_request(
            owner_id=owner_id,
            name=name,
            environment=environment,
            scopes=scopes,
            ip_allowlist=ip_allowlist,
            rate_limit_per_hour=rate_limit_per_hour,
            expires_at=expires_at,
            ttl=ttl,
            metadata=metadata,
        )
        response = _call(self.keys.CreateKey, request, timeout)
        return CreatedKey(key=response.key, secret=response.secret)

    def get_key(self, key_id: str, *, timeout: float | None = None) -> keys_pb2.ApiKey:
        """Returns a key's metadata."""
        return _call(self.keys.GetKey, _common.get_key_request(key_id), timeout).key

    def list_keys(
        self,
        *,
        owner_id: str = "",
        environment: str = "",
        status: keys_pb2.KeyStatus.ValueType = keys_pb2.KEY_STATUS_UNSPECIFIED,
        page_size: int = 0,
        last_used_before: datetime | None = None,
        expires_before: datetime | None = None,
        show_deleted: bool = False,
        timeout: float | None = None,
    ) -> Iterator[keys_pb2.ApiKey]:
        """Iterates over the matching keys, fetching pages as it goes.

        ``timeout`` applies to each page's call.

        ``last_used_before`` finds keys nobody used since (never used counts
        as before); ``expires_before`` finds keys expiring before a time.
        Both take timezone-aware datetimes. Deleted keys are left out unless
        ``show_deleted`` (which ``status=KEY_STATUS_DELETED`` needs too).
        """
        request = _common.list_keys_request(
            owner_id=owner_id,
            environment=environment,
            status=status,
            page_size=page_size,
            last_used_before=last_used_before,
            expires_before=expires_before,
            show_deleted=show_deleted,
        )
        while True:
            page = _call(self.keys.ListKeys, request, timeout)
            yield from page.keys
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def rotate_key(
        self,
        key_id: str,
        *,
        grace_period: timedelta | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> RotatedKey:
        """Gives a key a new secret; the old one works for ``grace_period`` more.

        With ``etag`` (the key's ``etag`` as last read), the change applies
        only if the key has not changed since; otherwise
        :class:`keygate.AbortedError` (reason ``ETAG_MISMATCH``) is raised and
        nothing changes. The same holds for every method taking ``etag``.
        """
        request = _common.rotate_key_request(key_id, grace_period=grace_period, etag=etag)
        return _common.rotated_key(_call(self.keys.RotateKey, request, timeout))

    def revoke_key(
        self, key_id: str, *, reason: str = "", etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Ends a key for good."""
        request = _common.revoke_key_request(key_id, reason=reason, etag=etag)
        return _call(self.keys.RevokeKey, request, timeout).key

    def disable_key(
        self, key_id: str, *, etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Switches a key off until :meth:`enable_key`."""
        request = _common.disable_key_request(key_id, etag=etag)
        return _call(self.keys.DisableKey, request, timeout).key

    def enable_key(
        self, key_id: str, *, etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Switches a disabled key back on."""
        request = _common.enable_key_request(key_id, etag=etag)
        return _call(self.keys.EnableKey, request, timeout).key

    def update_key_expiry(
        self,
        key_id: str,
        expires_at: datetime | None,
        *,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> keys_pb2.ApiKey:
        """Sets a key's expiry (a timezone-aware datetime), or clears it with None."""
        request = _common.update_key_expiry_request(key_id, expires_at, etag=etag)
        return _call(self.keys.UpdateKeyExpiry, request, timeout).key

    def get_key_usage(
        self,
        key_id: str,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        timeout: float | None = None,
    ) -> list[keys_pb2.UsageBucket]:
        """A key's requests per hour, oldest first, hours without requests included.

        Defaults to the last 24 hours; at most 31 days per call. Both bounds
        are timezone-aware datetimes; ``start_time`` is rounded down to the hour.
        """
        request = _common.get_key_usage_request(key_id, start_time=start_time, end_time=end_time)
        return list(_call(self.keys.GetKeyUsage, request, timeout).buckets)

    def update_key(
        self,
        key_id: str,
        *,
        name: str | Unset = UNSET,
        scopes: Iterable[str] | Unset = UNSET,
        ip_allowlist: Iterable[str] | Unset = UNSET,
        rate_limit_per_hour: int | None | Unset = UNSET,
        metadata: Mapping[str, str] | Unset = UNSET,
        expires_at: datetime | None | Unset = UNSET,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> keys_pb2.ApiKey:
        """Changes the fields passed, and only those; returns the key as changed.

        ``rate_limit_per_hour=None`` goes back to the server default and
        ``expires_at=None`` (else a timezone-aware datetime) means never;
        ``scopes=[]``, ``ip_allowlist=[]`` and ``metadata={}`` clear those.
        ``metadata`` replaces the whole mapping. The name cannot be cleared.
        Passing no field raises ``ValueError``. Scopes beyond the management
        key's own raise :class:`keygate.PermissionDeniedError` (reason
        ``SCOPE_ESCALATION``); a deleted key
        :class:`keygate.FailedPreconditionError` (reason ``KEY_DELETED``)::

            kg.update_key(key_id, scopes=["dns:read"], rate_limit_per_hour=None, metadata={"plan": "pro"})
        """
        request = _common.update_key_request(
            key_id,
            name=name,
            scopes=scopes,
            ip_allowlist=ip_allowlist,
            rate_limit_per_hour=rate_limit_per_hour,
            metadata=metadata,
            expires_at=expires_at,
            etag=etag,
        )
        return _call(self.keys.UpdateKey, request, timeout).key

    def delete_key(
        self, key_id: str, *, etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Soft-deletes a key: it stops authorizing at once (``DENY_REASON_KEY_INVALID``),
        leaves :meth:`list_keys` unless ``show_deleted``, and is purged at
        the returned key's ``purge_time`` unless :meth:`undelete_key`
        restores it first. Any other change to a deleted key raises
        :class:`keygate.FailedPreconditionError` (reason ``KEY_DELETED``).
        """
        request = _common.delete_key_request(key_id, etag=etag)
        return _call(self.keys.DeleteKey, request, timeout).key

    def undelete_key(self, key_id: str, *, timeout: float | None = None) -> keys_pb2.ApiKey:
        """Restores a deleted key, with the state it had.

        :class:`keygate.FailedPreconditionError` with reason
        ``KEY_NOT_DELETED`` for a key that is not deleted, ``KEY_PURGED``
        past its purge time.
        """
        return _call(self.keys.UndeleteKey, _common.undelete_key_request(key_id), timeout).key

    def list_audit_events(
        self,
        *,
        key_id: str = "",
        owner_id: str = "",
        actor_key_id: str = "",
        method: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[keys_pb2.AuditEvent]:
        """Iterates over the matching audit events, newest first, fetching pages as it goes.

        Filters: the key changed, its owner, the management key that made
        the change, the method (such as ``"RevokeKey"``), and a time range
        (timezone-aware datetimes: ``start_time`` included, ``end_time``
        not). ``timeout`` applies to each page's call.
        """
        request = _common.list_audit_events_request(
            key_id=key_id,
            owner_id=owner_id,
            actor_key_id=actor_key_id,
            method=method,
            start_time=start_time,
            end_time=end_time,
            page_size=page_size,
        )
        while True:
            page = _call(self.keys.ListAuditEvents, request, timeout)
            yield from page.events
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def authorize(
        self,
        key: str,
        *,
        environment: str,
        required_scopes: Iterable[str] = (),
        client_ip: str = "",
        timeout: float | None = None,
    ) -> authorization_pb2.AuthorizeResponse:
        """Asks whether ``key`` may make a request.

        A deny is a normal response (``decision == DECISION_DENY`` with a
        ``reason``); an exception means Keygate could not decide. An allow
        carries the key's ``metadata``.
        """
        request = _common.authorize_request(
            key, environment=environment, required_scopes=required_scopes, client_ip=client_ip
        )
        return _call(self.authorization.Authorize, request, timeout)


def _call(
    method: grpc.UnaryUnaryMultiCallable[Any, _Response], request: Any, timeout: float | None
) -> _Response:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails with replaceable fields."""


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds fixed metadata (the bearer management key) to every unary call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = _CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            (*(client_call_details.metadata or ()), *self._metadata),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
            client_call_details.compression,
        )
        return continuation(details, request)
