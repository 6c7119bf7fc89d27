"""ASGI middleware that protects an application with Keygate.

Plain ASGI 3, so it wraps Starlette, FastAPI, Django (ASGI) or any other ASGI
application without depending on them::

    app = KeygateMiddleware(app, client=keygate.AsyncClient(...), environment="live",
                            scopes=["dns:read"])

A request needs an ``Authorization: Bearer <key>`` header with a key that
Keygate allows for every required scope. The HTTP mapping is that of the Go
SDK's middleware:

* 401 with ``WWW-Authenticate: Bearer``: no key, or ``key_invalid``,
  ``key_expired``, ``key_revoked``, ``key_disabled``, ``environment_mismatch``;
* 403: ``scope_missing`` (the body lists ``missing_scopes``), ``ip_not_allowed``;
* 429 with ``Retry-After``: ``rate_limited``;
* 503 ``authorization_unavailable`` when Keygate cannot decide: it is
  unreachable, too slow, or answers with an error. ``fail_open=True`` lets
  the request through, without identity, only when Keygate is unreachable
  (the call failed with UNAVAILABLE or DEADLINE_EXCEEDED); any other error
  (INVALID_ARGUMENT from a misconfigured environment, INTERNAL, …) still
  answers 503.

The client address sent to Keygate (for keys with an IP allowlist) is the
connection's peer, ``scope["client"]``. Behind reverse proxies, set
``trusted_proxies`` to their number to use the address they recorded in
``X-Forwarded-For`` instead (see :func:`forwarded_client_ip`).

Bodies are JSON: ``{"error": "<reason>", "message": "..."}``.
``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (unix seconds) are set
whenever Keygate returned rate-limit figures. An allowed request carries an
:class:`Identity` in ``scope["state"]["keygate"]`` (``request.state.keygate``
in Starlette and FastAPI). WebSocket connections are checked too and closed
with code 1008 when denied; other scope types (lifespan) pass untouched.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from keygate.aio import AsyncClient
from keygate.errors import KeygateError
from keygate.v1 import authorization_pb2

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_TIMEOUT = 0.5
"""Seconds each Authorize call may take, unless the middleware is told otherwise."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The key an allowed request was made with."""

    key_id: str
    owner_id: str
    environment: str
    scopes: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The key's own data (``ApiKey.metadata``), such as a customer's plan."""


def identity(scope: Scope) -> Identity | None:
    """The :class:`Identity` the middleware attached to ``scope``, if any."""
    value = scope.get("state", {}).get("keygate")
    return value if isinstance(value, Identity) else None


def remote_addr_ip(scope: Scope) -> str:
    """The connection peer's address: the default client IP."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def forwarded_client_ip(scope: Scope, trusted_proxies: int) -> str:
    """The client's address behind ``trusted_proxies`` reverse proxies.

    Each proxy appends the address it received the request from to
    ``X-Forwarded-For``, so the client is the ``trusted_proxies``-th entry
    from the right (with 1, the rightmost); the entries further left are
    whatever the client sent and are ignored. Several ``X-Forwarded-For``
    headers count as one list, in order. The peer's address
    (:func:`remote_addr_ip`) is returned instead when ``trusted_proxies`` is
    0, when the header has fewer entries than that, or when that entry is not
    an IP address (optionally with a port): the request did not come through
    the configured proxies.
    """
    if trusted_proxies <= 0:
        return remote_addr_ip(scope)
    entries = [
        entry.strip()
        for name, value in scope.get("headers", ())
        if name.lower() == b"x-forwarded-for"
        for entry in value.decode("latin-1").split(",")
        # Empty entries are dropped: proxies never write one, so this cannot
        # move a proxy-written entry.
        if entry.strip()
    ]
    if len(entries) < trusted_proxies:
        return remote_addr_ip(scope)
    return _parse_forwarded_ip(entries[-trusted_proxies]) or remote_addr_ip(scope)


def _parse_forwarded_ip(entry: str) -> str:
    """An X-Forwarded-For entry's address ("192.0.2.1", "192.0.2.1:4711",
    "[2001:db8::1]:443", "2001:db8::1"), canonical, or "" if it is none."""
    candidates = [entry]
    if entry.startswith("["):
        candidates.append(entry[1:].partition("]")[0])
    elif entry.count(":") == 1:
        candidates.append(entry.partition(":")[0])
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        return str(address)
    return ""


_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""The Authorize failures ``fail_open=True`` lets requests through on."""


_UNAUTHENTICATED = 401
_STATUS_BY_REASON: dict[int, int] = {
    authorization_pb2.DENY_REASON_KEY_INVALID: 401,
    authorization_pb2.DENY_REASON_KEY_EXPIRED: 401,
    authorization_pb2.DENY_REASON_KEY_REVOKED: 401,
    authorization_pb2.DENY_REASON_KEY_DISABLED: 401,
    authorization_pb2.DENY_REASON_ENVIRONMENT_MISMATCH: 401,
    authorization_pb2.DENY_REASON_SCOPE_MISSING: 403,
    authorization_pb2.DENY_REASON_IP_NOT_ALLOWED: 403,
    authorization_pb2.DENY_REASON_RATE_LIMITED: 429,
}


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    body: dict[str, Any]
    headers: list[tuple[bytes, bytes]]


class KeygateMiddleware:
    """Checks every HTTP request's API key with Keygate; see the module docs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncClient,
        environment: str,
        scopes: Sequence[str] | Callable[[Scope], Sequence[str]] = (),
        timeout: float = DEFAULT_TIMEOUT,
        fail_open: bool = False,
        trusted_proxies: int = 0,
        client_ip: Callable[[Scope], str] | None = None,
    ) -> None:
        """
        Args:
            app: the application to protect.
            client: the Keygate client; it must live on the server's event loop.
            environment: the environment this service runs in, such as ``"live"``.
            scopes: the scopes every request needs, or a function of the ASGI
                scope returning them (for per-route or per-method scopes).
            timeout: seconds each Authorize call may take.
            fail_open: let requests through, without identity, when Keygate
                is unreachable (UNAVAILABLE or DEADLINE_EXCEEDED); every other
                failure still answers 503 (the default for all failures).
            trusted_proxies: how many reverse proxies, each appending to
                ``X-Forwarded-For``, sit in front of this application. 0 (the
                default) ignores the header and uses the connection's peer;
                n uses the n-th entry from the right, falling back to the peer
                when there are fewer (see :func:`forwarded_client_ip`). Set it
                only if the application cannot be reached but through them.
            client_ip: a function of the ASGI scope returning the client's
                address, replacing the above for a set-up of your own (such
                as a header only your proxy writes); return ``""`` when
                unknown: a key with an allowlist is then denied.
        """
        if trusted_proxies < 0:
            raise ValueError("trusted_proxies must not be negative")
        if client_ip is not None and trusted_proxies:
            raise ValueError("give trusted_proxies or client_ip, not both")
        self.app = app
        self._client = client
        self._environment = environment
        self._scopes = scopes
        self._timeout = timeout
        self._fail_open = fail_open
        self._trusted_proxies = trusted_proxies
        self._client_ip = client_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        key = _bearer_key(scope)
        if not key:
            await _refuse(scope, send, _refusal(_UNAUTHENTICATED, "key_invalid", "missing API key"))
            return
        scopes = self._scopes(scope) if callable(self._scopes) else self._scopes
        try:
            decision = await self._client.authorize(
                key,
                environment=self._environment,
                required_scopes=scopes,
                client_ip=self._address(scope),
                timeout=self._timeout,
            )
        except KeygateError as error:
            if self._fail_open and error.code in _UNREACHABLE:
                await self.app(scope, receive, send)
                return
            refusal = _refusal(503, "authorization_unavailable", "authorization service unavailable")
            await _refuse(scope, send, refusal)
            return

        rate_headers = _rate_limit_headers(decision)
        if decision.decision != authorization_pb2.DECISION_ALLOW:
            await _refuse(scope, send, _deny_refusal(decision, rate_headers))
            return

        allowed = dict(scope)
        allowed["state"] = {
            **scope.get("state", {}),
            "keygate": Identity(
                key_id=decision.key_id,
                owner_id=decision.owner_id,
                environment=decision.environment,
                scopes=tuple(decision.scopes),
                metadata=dict(decision.metadata),
            ),
        }

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and rate_headers:
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), *rate_headers]
            await send(message)

        await self.app(allowed, receive, send_with_headers)

    def _address(self, scope: Scope) -> str:
        if self._client_ip is not None:
            return self._client_ip(scope)
        return forwarded_client_ip(scope, self._trusted_proxies)


def _bearer_key(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, key = value.decode("latin-1").strip().partition(" ")
            return key.strip() if scheme.lower() == "bearer" else ""
    return ""


def _rate_limit_headers(decision: authorization_pb2.AuthorizeResponse) -> list[tuple[bytes, bytes]]:
    if not decision.HasField("rate_limit"):
        return []
    rl = decision.rate_limit
    return [
        (b"x-ratelimit-limit", str(rl.limit).encode()),
        (b"x-ratelimit-remaining", str(rl.remaining).encode()),
        (b"x-ratelimit-reset", str(rl.reset_at.seconds).encode()),
    ]


def _refusal(
    status: int,
    reason: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> _Refusal:
    headers = list(headers or [])
    if status == _UNAUTHENTICATED:
        headers.append((b"www-authenticate", b"Bearer"))
    return _Refusal(status, {"error": reason, "message": message, **extra}, headers)


def _deny_refusal(
    decision: authorization_pb2.AuthorizeResponse, headers: list[tuple[bytes, bytes]]
) -> _Refusal:
    status = _STATUS_BY_REASON.get(decision.reason)
    if status is None:
        # A reason this SDK does not know (a newer server): refuse as invalid.
        return _refusal(_UNAUTHENTICATED, "key_invalid", decision.message, headers)
    reason = authorization_pb2.DenyReason.Name(decision.reason).removeprefix("DENY_REASON_").lower()
    if decision.reason == authorization_pb2.DENY_REASON_SCOPE_MISSING:
        return _refusal(status, reason, decision.message, headers, missing_scopes=list(decision.missing_scopes))
    if decision.reason == authorization_pb2.DENY_REASON_RATE_LIMITED:
        retry_after = decision.rate_limit.retry_after.ToTimedelta().total_seconds()
        headers = [*headers, (b"retry-after", str(max(1, math.ceil(retry_after))).encode())]
    return _refusal(status, reason, decision.message, headers)


async def _refuse(scope: Scope, send: Send, refusal: _Refusal) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.body["error"]})
        return
    body = json.dumps(refusal.body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *refusal.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
