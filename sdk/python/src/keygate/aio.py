"""The asyncio Keygate client (grpc.aio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

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


class AsyncClient:
    """The asyncio twin of :class:`keygate.Client`, on a ``grpc.aio`` channel.

    Create it inside the event loop that uses it, and ``await close()`` (or
    use ``async with``) when done::

        async with keygate.AsyncClient("keygate:50051", insecure=True) as kg:
            decision = await kg.authorize(key, environment="live", required_scopes=["dns:read"])
    """

    keys: keys_pb2_grpc.KeyManagementServiceAsyncStub
    authorization: authorization_pb2_grpc.AuthorizationServiceAsyncStub

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
        """Opens a channel to ``target``; the arguments are those of :class:`keygate.Client`."""
        transport = _common.channel_credentials(
            insecure,
            credentials,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        metadata = _common.bearer_metadata(management_key)
        interceptors = [_MetadataInterceptor(metadata)] if metadata else None
        self._channel = (
            grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
            if transport is None
            else grpc.aio.secure_channel(target, transport, options=options, interceptors=interceptors)
        )
        self.keys = keys_pb2_grpc.KeyManagementServiceStub(self._channel)
        self.authorization = authorization_pb2_grpc.AuthorizationServiceStub(self._channel)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def create_key(
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

        See :meth:`keygate.Client.create_key` for ``metadata``.
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
        response = await _call(self.keys.CreateKey, request, timeout)
        return CreatedKey(key=response.key, secret=response.secret)

    async def get_key(self, key_id: str, *, timeout: float | None = None) -> keys_pb2.ApiKey:
        """Returns a key's metadata."""
        return (await _call(self.keys.GetKey, _common.get_key_request(key_id), timeout)).key

    async def list_keys(
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
    ) -> AsyncIterator[keys_pb2.ApiKey]:
        """Iterates over the matching keys, fetching pages as it goes.

        ``last_used_before`` finds keys nobody used since (never used counts
        as before); ``expires_before`` finds keys expiring before a time.
        Both take timezone-aware datetimes. Deleted keys are left out unless
        ``show_deleted``.
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
            page = await _call(self.keys.ListKeys, request, timeout)
            for key in page.keys:
                yield key
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def rotate_key(
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
        return _common.rotated_key(await _call(self.keys.RotateKey, request, timeout))

    async def revoke_key(
        self, key_id: str, *, reason: str = "", etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Ends a key for good."""
        request = _common.revoke_key_request(key_id, reason=reason, etag=etag)
        return (await _call(self.keys.RevokeKey, request, timeout)).key

    async def disable_key(
        self, key_id: str, *, etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Switches a key off until :meth:`enable_key`."""
        request = _common.disable_key_request(key_id, etag=etag)
        return (await _call(self.keys.DisableKey, request, timeout)).key

    async def enable_key(
        self, key_id: str, *, etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Switches a disabled key back on."""
        request = _common.enable_key_request(key_id, etag=etag)
        return (await _call(self.keys.EnableKey, request, timeout)).key

    async def update_key_expiry(
        self,
        key_id: str,
        expires_at: datetime | None,
        *,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> keys_pb2.ApiKey:
        """Sets a key's expiry (a timezone-aware datetime), or clears it with None."""
        request = _common.update_key_expiry_request(key_id, expires_at, etag=etag)
        return (await _call(self.keys.UpdateKeyExpiry, request, timeout)).key

    async def get_key_usage(
        self,
        key_id: str,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        timeout: float | None = None,
    ) -> list[keys_pb2.UsageBucket]:
        """A key's requests per hour, oldest first; see :meth:`keygate.Client.get_key_usage`."""
        request = _common.get_key_usage_request(key_id, start_time=start_time, end_time=end_time)
        return list((await _call(self.keys.GetKeyUsage, request, timeout)).buckets)

    async def update_key(
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
        """Changes the fields passed, and only those; see :meth:`keygate.Client.update_key`."""
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
        return (await _call(self.keys.UpdateKey, request, timeout)).key

    async def delete_key(
        self, key_id: str, *, etag: str | None = None, timeout: float | None = None
    ) -> keys_pb2.ApiKey:
        """Soft-deletes a key; see :meth:`keygate.Client.delete_key`."""
        request = _common.delete_key_request(key_id, etag=etag)
        return (await _call(self.keys.DeleteKey, request, timeout)).key

    async def undelete_key(self, key_id: str, *, timeout: float | None = None) -> keys_pb2.ApiKey:
        """Restores a deleted key, with the state it had."""
        return (await _call(self.keys.UndeleteKey, _common.undelete_key_request(key_id), timeout)).key

    async def list_audit_events(
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
    ) -> AsyncIterator[keys_pb2.AuditEvent]:
        """Iterates over the matching audit events, newest first; see
        :meth:`keygate.Client.list_audit_events`."""
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
            page = await _call(self.keys.ListAuditEvents, request, timeout)
            for event in page.events:
                yield event
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def authorize(
        self,
        key: str,
        *,
        environment: str,
        required_scopes: Iterable[str] = (),
        client_ip: str = "",
        timeout: float | None = None,
    ) -> authorization_pb2.AuthorizeResponse:
        """Asks whether ``key`` may make a request; a deny is a normal response."""
        request = _common.authorize_request(
            key, environment=environment, required_scopes=required_scopes, client_ip=client_ip
        )
        return await _call(self.authorization.Authorize, request, timeout)


async def _call(
    method: grpc.aio.UnaryUnaryMultiCallable[Any, _Response], request: Any, timeout: float | None
) -> _Response:
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from error


class _MetadataInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds fixed metadata (the bearer management key) to every unary call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *self._metadata)
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout,
            metadata=metadata,
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)
