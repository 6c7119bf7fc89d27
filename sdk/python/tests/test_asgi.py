"""KeygateMiddleware: HTTP mapping against an in-process fake Keygate, every
deny reason against a real Keygate, and an unreachable Keygate."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
from asgi_driver import Response, echo_identity, request
from conftest import KeygateServer, free_address
from google.protobuf import duration_pb2, timestamp_pb2

import keygate
import keygate.asgi
from keygate.asgi import KeygateMiddleware, Scope
from keygate.v1 import authorization_pb2, authorization_pb2_grpc

D = authorization_pb2
RESET_AT = 1_900_000_000


def rate_limit(limit: int, remaining: int, retry_after: timedelta = timedelta()) -> D.RateLimit:
    retry = duration_pb2.Duration()
    retry.FromTimedelta(retry_after)
    return D.RateLimit(
        limit=limit, remaining=remaining, reset_at=timestamp_pb2.Timestamp(seconds=RESET_AT), retry_after=retry
    )


def deny(reason: D.DenyReason.ValueType, **fields: Any) -> D.AuthorizeResponse:
    return D.AuthorizeResponse(decision=D.DECISION_DENY, reason=reason, message="denied", **fields)


class FakeKeygate(authorization_pb2_grpc.AuthorizationServiceServicer):
    """Answers every Authorize with a canned response, or fails it."""

    def __init__(self, response: D.AuthorizeResponse | None, error: grpc.StatusCode | None = None) -> None:
        self.response = response
        self.error = error
        self.requests: list[D.AuthorizeRequest] = []

    async def Authorize(  # noqa: N802 (generated name)
        self, request: D.AuthorizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> D.AuthorizeResponse:
        self.requests.append(request)
        if self.error is not None:
            await context.abort(self.error, "fake failure")
        assert self.response is not None
        return self.response


@asynccontextmanager
async def fake_client(fake: FakeKeygate) -> AsyncIterator[keygate.AsyncClient]:
    server = grpc.aio.server()
    authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with keygate.AsyncClient(f"127.0.0.1:{port}", insecure=True) as client:
            yield client
    finally:
        await server.stop(None)


def through_fake(
    fake: FakeKeygate,
    authorization: str | None = "Bearer kg_live_presented",
    **options: Any,
) -> Response:
    async def scenario() -> Response:
        async with fake_client(fake) as client:
            app = KeygateMiddleware(echo_identity, client=client, environment="live", **options)
            return await request(app, authorization=authorization)

    return asyncio.run(scenario())


def assert_refused(
    response: Response,
    status: int,
    error: str,
    *,
    missing_scopes: list[str] | None = None,
    rate_limited: bool = False,
) -> None:
    assert response.status == status, response.body
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert body["message"]
    assert body.get("missing_scopes") == missing_scopes
    assert ("www-authenticate" in response.headers) == (status == 401)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert ("retry-after" in response.headers) == (status == 429)
    assert ("x-ratelimit-limit" in response.headers) == rate_limited


ALLOW = D.AuthorizeResponse(
    decision=D.DECISION_ALLOW, key_id="key_1", owner_id="acme", environment="live",
    scopes=["dns:read"], rate_limit=rate_limit(100, 99),
)


@pytest.mark.parametrize(
    ("response", "status", "error"),
    [
        (deny(D.DENY_REASON_KEY_INVALID), 401, "key_invalid"),
        (deny(D.DENY_REASON_KEY_EXPIRED), 401, "key_expired"),
        (deny(D.DENY_REASON_KEY_REVOKED), 401, "key_revoked"),
        (deny(D.DENY_REASON_KEY_DISABLED), 401, "key_disabled"),
        (deny(D.DENY_REASON_ENVIRONMENT_MISMATCH), 401, "environment_mismatch"),
        (deny(99), 401, "key_invalid"),  # type: ignore[arg-type]
        (deny(D.DENY_REASON_IP_NOT_ALLOWED), 403, "ip_not_allowed"),
    ],
)
def test_fake_deny_mapping(response: D.AuthorizeResponse, status: int, error: str) -> None:
    assert_refused(through_fake(FakeKeygate(response)), status, error)


def test_fake_scope_missing_lists_scopes() -> None:
    response = deny(D.DENY_REASON_SCOPE_MISSING, missing_scopes=["dns:write"])
    assert_refused(through_fake(FakeKeygate(response)), 403, "scope_missing", missing_scopes=["dns:write"])


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (timedelta(), "1"),
        (timedelta(milliseconds=1), "1"),
        (timedelta(seconds=1), "1"),
        (timedelta(seconds=1, microseconds=1), "2"),
        (timedelta(minutes=59, seconds=30), "3570"),
    ],
)
def test_fake_rate_limited(retry_after: timedelta, header: str) -> None:
    response = deny(D.DENY_REASON_RATE_LIMITED, rate_limit=rate_limit(2, 0, retry_after))
    refused = through_fake(FakeKeygate(response))
    assert_refused(refused, 429, "rate_limited", rate_limited=True)
    assert refused.headers["retry-after"] == header
    assert (refused.headers["x-ratelimit-limit"], refused.headers["x-ratelimit-remaining"]) == ("2", "0")
    assert refused.headers["x-ratelimit-reset"] == str(RESET_AT)


def test_fake_allow_passes_identity_and_headers() -> None:
    fake = FakeKeygate(ALLOW)
    response = through_fake(fake, scopes=["dns:read"], client_ip=lambda scope: "198.51.100.4")
    assert (response.status, response.body) == (200, b"acme/key_1")
    assert response.headers["x-ratelimit-limit"] == "100"
    assert response.headers["x-ratelimit-remaining"] == "99"
    assert response.headers["x-ratelimit-reset"] == str(RESET_AT)
    assert fake.requests == [
        D.AuthorizeRequest(
            key="kg_live_presented", required_scopes=["dns:read"], environment="live", client_ip="198.51.100.4"
        )
    ]


def test_fake_allow_passes_metadata() -> None:
    response = D.AuthorizeResponse()
    response.CopyFrom(ALLOW)
    response.metadata["plan"] = "pro"
    seen: list[keygate.asgi.Identity | None] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(keygate.asgi.identity(scope))
        await echo_identity(scope, receive, send)

    async def scenario() -> Response:
        async with fake_client(FakeKeygate(response)) as client:
            middleware = KeygateMiddleware(app, client=client, environment="live")
            return await request(middleware, authorization="Bearer kg_live_presented")

    assert asyncio.run(scenario()).status == 200
    assert seen[0] is not None and dict(seen[0].metadata) == {"plan": "pro"}
    # Without metadata: an empty mapping, not None.
    assert dict(keygate.asgi.Identity("k", "o", "live", ()).metadata) == {}


@pytest.mark.parametrize(
    "authorization", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   "], ids=repr
)
def test_missing_key_is_refused_without_asking_keygate(authorization: str | None) -> None:
    fake = FakeKeygate(ALLOW)
    assert_refused(through_fake(fake, authorization=authorization), 401, "key_invalid")
    assert fake.requests == []


PEER = "10.0.0.1"


@pytest.mark.parametrize(
    ("trusted_proxies", "xff", "expected"),
    [
        # No trusted proxies: the peer, whatever X-Forwarded-For says.
        (0, ["203.0.113.9"], PEER),
        (0, ["6.6.6.6, 203.0.113.9"], PEER),
        (0, [], PEER),
        # One proxy: the rightmost entry; spoofed entries to its left ignored.
        (1, ["203.0.113.9"], "203.0.113.9"),
        (1, ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        (1, ["6.6.6.6,7.7.7.7 ,  203.0.113.9"], "203.0.113.9"),
        (1, ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),
        # Two proxies: the second entry from the right.
        (2, ["6.6.6.6, 203.0.113.9, 192.168.1.5"], "203.0.113.9"),
        (2, ["203.0.113.9, 192.168.1.5"], "203.0.113.9"),
        (2, ["6.6.6.6, 203.0.113.9", "192.168.1.5"], "203.0.113.9"),
        # Fewer entries than proxies, none, or not an address: the peer.
        (2, ["203.0.113.9"], PEER),
        (1, [], PEER),
        (1, [" , "], PEER),
        (1, ["203.0.113.9, unknown"], PEER),
        # Addresses as proxies write them.
        (1, ["2001:DB8::9"], "2001:db8::9"),
        (1, ["203.0.113.9:4711"], "203.0.113.9"),
        (1, ["[2001:db8::9]:443"], "2001:db8::9"),
    ],
)
def test_client_ip(trusted_proxies: int, xff: list[str], expected: str) -> None:
    fake = FakeKeygate(ALLOW)

    async def scenario() -> None:
        async with fake_client(fake) as client:
            app = KeygateMiddleware(echo_identity, client=client, environment="live", trusted_proxies=trusted_proxies)
            headers = [(b"x-forwarded-for", value.encode()) for value in xff]
            await request(app, authorization="Bearer k", headers=headers, client=(PEER, 5555))

    asyncio.run(scenario())
    assert [r.client_ip for r in fake.requests] == [expected]


def test_client_ip_function_and_its_checks() -> None:
    fake = FakeKeygate(ALLOW)

    def real_ip(scope: Scope) -> str:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        return headers.get(b"x-real-ip", b"").decode()

    async def scenario() -> None:
        async with fake_client(fake) as client:
            app = KeygateMiddleware(echo_identity, client=client, environment="live", client_ip=real_ip)
            headers = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-real-ip", b"198.51.100.4")]
            await request(app, authorization="Bearer k", headers=headers)
            with pytest.raises(ValueError, match="not both"):
                KeygateMiddleware(echo_identity, client=client, environment="live", client_ip=real_ip, trusted_proxies=1)
            with pytest.raises(ValueError, match="negative"):
                KeygateMiddleware(echo_identity, client=client, environment="live", trusted_proxies=-1)

    asyncio.run(scenario())
    assert [r.client_ip for r in fake.requests] == ["198.51.100.4"]


def test_forwarded_client_ip_without_client() -> None:
    scope: Scope = {"type": "http", "headers": [(b"x-forwarded-for", b"203.0.113.9")]}
    assert keygate.forwarded_client_ip(scope, 0) == ""
    assert keygate.forwarded_client_ip(scope, 1) == "203.0.113.9"
    assert keygate.forwarded_client_ip(scope, 2) == ""


def test_scopes_from_a_function() -> None:
    fake = FakeKeygate(ALLOW)

    def scopes(scope: Scope) -> list[str]:
        return ["dns:read"] if scope["method"] == "GET" else ["dns:write"]

    through_fake(fake, scopes=scopes)
    assert [list(r.required_scopes) for r in fake.requests] == [["dns:read"]]


class CountingApp:
    """echo_identity, counting the requests that reach it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.calls += 1
        await echo_identity(scope, receive, send)


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNKNOWN,
    ],
    ids=lambda code: code.name,
)
def test_fake_error_fails_closed_unless_unreachable(code: grpc.StatusCode, fail_open: bool) -> None:
    """fail_open lets a request through only when Keygate is unreachable."""
    app = CountingApp()

    async def scenario() -> Response:
        async with fake_client(FakeKeygate(None, code)) as client:
            middleware = KeygateMiddleware(app, client=client, environment="live", fail_open=fail_open)
            return await request(middleware, authorization="Bearer kg_live_presented")

    response = asyncio.run(scenario())
    if fail_open and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert (response.status, response.body) == (200, b"anonymous")
        assert app.calls == 1
    else:
        assert_refused(response, 503, "authorization_unavailable")
        assert app.calls == 0


class SlowKeygate(authorization_pb2_grpc.AuthorizationServiceServicer):
    """Answers ALLOW, but only after the middleware's timeout."""

    async def Authorize(  # noqa: N802 (generated name)
        self, request: D.AuthorizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> D.AuthorizeResponse:
        await asyncio.sleep(2)
        return ALLOW


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_fake_too_slow(fail_open: bool) -> None:
    """The client's own deadline (DEADLINE_EXCEEDED) counts as unreachable."""
    async def scenario() -> Response:
        server = grpc.aio.server()
        authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(SlowKeygate(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with keygate.AsyncClient(f"127.0.0.1:{port}", insecure=True) as client:
                app = KeygateMiddleware(echo_identity, client=client, environment="live", timeout=0.1, fail_open=fail_open)
                return await request(app, authorization="Bearer kg_live_presented")
        finally:
            await server.stop(None)

    response = asyncio.run(scenario())
    if fail_open:
        assert (response.status, response.body) == (200, b"anonymous")
    else:
        assert_refused(response, 503, "authorization_unavailable")


def test_lifespan_passes_through_and_websocket_is_checked() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def scenario() -> list[dict[str, Any]]:
        async with fake_client(FakeKeygate(deny(D.DENY_REASON_KEY_REVOKED))) as client:
            middleware = KeygateMiddleware(app, client=client, environment="live")
            sent: list[dict[str, Any]] = []

            async def send(message: Any) -> None:
                sent.append(message)

            async def receive() -> Any:
                return {"type": "websocket.connect"}

            await middleware({"type": "lifespan"}, receive, send)
            headers = [(b"authorization", b"Bearer kg_live_presented")]
            await middleware({"type": "websocket", "headers": headers, "client": ("127.0.0.1", 1)}, receive, send)
            return sent

    sent = asyncio.run(scenario())
    assert seen == ["lifespan"]
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "key_revoked"}]


# --- against a real Keygate -------------------------------------------------


@pytest.fixture(scope="module")
def denial_keys(keygate_server: KeygateServer) -> Iterator[dict[str, str]]:
    """Presented keys for every deny reason, made on the live server."""
    with keygate.Client(
        keygate_server.address, management_key=keygate_server.admin_key, insecure=True
    ) as admin:
        def make(**fields: Any) -> keygate.CreatedKey:
            return admin.create_key(
                owner_id="acme", name="asgi", environment=fields.pop("environment", "live"), **fields
            )

        reader = make(scopes=["dns:read"])
        revoked = make(scopes=["dns:read"])
        admin.revoke_key(revoked.key.key_id)
        disabled = make(scopes=["dns:read"])
        admin.disable_key(disabled.key.key_id)
        expiring = make(scopes=["dns:read"], ttl=timedelta(seconds=1))
        keys = {
            "reader": reader.secret,
            "reader_id": reader.key.key_id,
            "revoked": revoked.secret,
            "disabled": disabled.secret,
            "expired": expiring.secret,
            "test_env": make(scopes=["dns:read"], environment="test").secret,
            "elsewhere": make(scopes=["dns:read"], ip_allowlist=["10.0.0.0/8"]).secret,
            "limited": make(scopes=["dns:read"], rate_limit_per_hour=2).secret,
        }
        time.sleep(1.1)  # let the 1 s key expire
        yield keys


def through_live(
    server: KeygateServer, authorization: str | None, scopes: list[str], times: int = 1
) -> list[Response]:
    async def scenario() -> list[Response]:
        async with keygate.AsyncClient(server.address, insecure=True) as client:
            app = KeygateMiddleware(echo_identity, client=client, environment="live", scopes=scopes)
            return [await request(app, authorization=authorization) for _ in range(times)]

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("key", "scopes", "status", "error"),
    [
        (None, [], 401, "key_invalid"),
        ("kg_live_00000000000000000000000000000000000000", [], 401, "key_invalid"),
        ("expired", [], 401, "key_expired"),
        ("revoked", [], 401, "key_revoked"),
        ("disabled", [], 401, "key_disabled"),
        ("test_env", [], 401, "environment_mismatch"),
        ("elsewhere", [], 403, "ip_not_allowed"),
    ],
)
def test_live_denials(
    keygate_server: KeygateServer,
    denial_keys: dict[str, str],
    key: str | None,
    scopes: list[str],
    status: int,
    error: str,
) -> None:
    authorization = None if key is None else f"Bearer {denial_keys.get(key, key)}"
    [response] = through_live(keygate_server, authorization, scopes)
    assert_refused(response, status, error)


def test_live_allow_and_scope_missing(keygate_server: KeygateServer, denial_keys: dict[str, str]) -> None:
    authorization = f"Bearer {denial_keys['reader']}"
    [allowed] = through_live(keygate_server, authorization, ["dns:read"])
    assert (allowed.status, allowed.body) == (200, f"acme/{denial_keys['reader_id']}".encode())
    assert int(allowed.headers["x-ratelimit-limit"]) > 0
    [missing] = through_live(keygate_server, authorization, ["dns:read", "dns:write"])
    assert_refused(missing, 403, "scope_missing", missing_scopes=["dns:write"])


def test_live_rate_limited(keygate_server: KeygateServer, denial_keys: dict[str, str]) -> None:
    first, second, third = through_live(keygate_server, f"Bearer {denial_keys['limited']}", ["dns:read"], times=3)
    assert [first.status, second.status] == [200, 200]
    assert [first.headers["x-ratelimit-remaining"], second.headers["x-ratelimit-remaining"]] == ["1", "0"]
    assert_refused(third, 429, "rate_limited", rate_limited=True)
    assert third.headers["x-ratelimit-limit"] == "2"
    assert 1 <= int(third.headers["retry-after"]) <= 3600
    assert time.time() < int(third.headers["x-ratelimit-reset"]) <= time.time() + 3601


# --- Keygate unreachable ----------------------------------------------------


def _closed_address() -> str:
    return free_address()


class _Blackhole:
    """Accepts TCP connections and never answers, like a hung server."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("hung", [False, True], ids=["refused", "hung"])
@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_unreachable(hung: bool, fail_open: bool) -> None:
    blackhole = _Blackhole() if hung else None
    address = blackhole.address if blackhole else _closed_address()

    async def scenario() -> Response:
        async with keygate.AsyncClient(address, insecure=True) as client:
            app = KeygateMiddleware(echo_identity, client=client, environment="live", timeout=0.3, fail_open=fail_open)
            return await request(app, authorization="Bearer kg_live_whatever")

    start = time.monotonic()
    try:
        response = asyncio.run(scenario())
    finally:
        if blackhole:
            blackhole.close()
    assert time.monotonic() - start < 2.0, "the middleware must give up after its timeout"
    if fail_open:
        assert (response.status, response.body) == (200, b"anonymous")
    else:
        assert_refused(response, 503, "authorization_unavailable")


def test_unreachable_sync_client_raises_unavailable() -> None:
    with keygate.Client(_closed_address(), insecure=True) as client:
        with pytest.raises(keygate.UnavailableError) as raised:
            client.authorize("kg_live_x", environment="live", timeout=0.5)
    assert raised.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


