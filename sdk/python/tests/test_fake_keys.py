"""Client and AsyncClient against an in-process fake KeyManagementService:
the requests they build (etag included) and the error details they decode."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import keygate
from keygate.errors import from_rpc_error
from keygate.v1 import keys_pb2, keys_pb2_grpc

KEY_ID = "0190f6c2-0000-7000-8000-000000000001"
EXPIRY = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def status_details(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    violations: tuple[tuple[str, str], ...] = (),
    metadata: dict[str, str] | None = None,
) -> bytes:
    """A serialized google.rpc.Status as Keygate attaches to its errors."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="keygate.dev", metadata=metadata))
    if violations:
        status.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
                ]
            )
        )
    return status.SerializeToString()


class FakeKeys(keys_pb2_grpc.KeyManagementServiceServicer):
    """Records every request; GetKey fails as told by the key id asked for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Any] = []

    def _record(self, request: Any) -> None:
        with self.lock:
            self.requests.append(request)

    def CreateKey(  # noqa: N802 (generated name)
        self, request: keys_pb2.CreateKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.CreateKeyResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    def ListKeys(  # noqa: N802
        self, request: keys_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> keys_pb2.ListKeysResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    def GetKey(  # noqa: N802
        self, request: keys_pb2.GetKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.GetKeyResponse:
        self._record(request)
        failures: dict[str, tuple[grpc.StatusCode, str, bytes | None]] = {
            "invalid": (
                grpc.StatusCode.INVALID_ARGUMENT,
                "2 fields are invalid",
                status_details(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "2 fields are invalid",
                    reason="INVALID_ARGUMENT",
                    violations=(("key_id", "must not be empty"), ("etag", "must be short")),
                    metadata={"hint": "x"},
                ),
            ),
            "stale": (
                grpc.StatusCode.ABORTED,
                "etag mismatch",
                status_details(grpc.StatusCode.ABORTED, "etag mismatch", reason="ETAG_MISMATCH"),
            ),
            "plain": (grpc.StatusCode.INTERNAL, "boom", None),
            "garbage": (grpc.StatusCode.INTERNAL, "boom", b"\xff\xff not a status"),
        }
        if request.key_id in failures:
            code, message, details = failures[request.key_id]
            if details is not None:
                context.set_trailing_metadata((("grpc-status-details-bin", details),))
            context.abort(code, message)
        return keys_pb2.GetKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id, etag="e2"))

    def RotateKey(  # noqa: N802
        self, request: keys_pb2.RotateKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.RotateKeyResponse:
        self._record(request)
        return keys_pb2.RotateKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id), secret="kg_live_new")

    def RevokeKey(  # noqa: N802
        self, request: keys_pb2.RevokeKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.RevokeKeyResponse:
        self._record(request)
        return keys_pb2.RevokeKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id))

    def DisableKey(  # noqa: N802
        self, request: keys_pb2.DisableKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.DisableKeyResponse:
        self._record(request)
        return keys_pb2.DisableKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id))

    def EnableKey(  # noqa: N802
        self, request: keys_pb2.EnableKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.EnableKeyResponse:
        self._record(request)
        return keys_pb2.EnableKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id))

    def UpdateKeyExpiry(  # noqa: N802
        self, request: keys_pb2.UpdateKeyExpiryRequest, context: grpc.ServicerContext
    ) -> keys_pb2.UpdateKeyExpiryResponse:
        self._record(request)
        return keys_pb2.UpdateKeyExpiryResponse(key=keys_pb2.ApiKey(key_id=request.key_id))

    def GetKeyUsage(  # noqa: N802
        self, request: keys_pb2.GetKeyUsageRequest, context: grpc.ServicerContext
    ) -> keys_pb2.GetKeyUsageResponse:
        self._record(request)
        bucket = keys_pb2.UsageBucket(allowed=7)
        bucket.start_time.CopyFrom(request.start_time)
        return keys_pb2.GetKeyUsageResponse(buckets=[bucket])

    def UpdateKey(  # noqa: N802
        self, request: keys_pb2.UpdateKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.UpdateKeyResponse:
        self._record(request)
        return keys_pb2.UpdateKeyResponse(key=request.key)

    def DeleteKey(  # noqa: N802
        self, request: keys_pb2.DeleteKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.DeleteKeyResponse:
        self._record(request)
        return keys_pb2.DeleteKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id, status=keys_pb2.KEY_STATUS_DELETED))

    def UndeleteKey(  # noqa: N802
        self, request: keys_pb2.UndeleteKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.UndeleteKeyResponse:
        self._record(request)
        return keys_pb2.UndeleteKeyResponse(key=keys_pb2.ApiKey(key_id=request.key_id, status=keys_pb2.KEY_STATUS_ACTIVE))

    def ListAuditEvents(  # noqa: N802
        self, request: keys_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> keys_pb2.ListAuditEventsResponse:
        """Five events, "e4" to "e0", two a page; key id "invalid" fails."""
        self._record(request)
        if request.key_id == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key_id is invalid")
        start = int(request.page_token or "0")
        ids = [f"e{i}" for i in range(4, -1, -1)][start : start + 2]
        next_token = str(start + 2) if start + 2 < 5 else ""
        return keys_pb2.ListAuditEventsResponse(
            events=[keys_pb2.AuditEvent(event_id=i, method="UpdateKey") for i in ids], next_page_token=next_token
        )


@pytest.fixture
def fake_keys() -> Iterator[tuple[FakeKeys, str]]:
    fake = FakeKeys()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    keys_pb2_grpc.add_KeyManagementServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def expected_requests(etag: str) -> list[Any]:
    expires_at = keys_pb2.UpdateKeyExpiryRequest(key_id=KEY_ID, etag=etag)
    expires_at.expires_at.FromDatetime(EXPIRY)
    rotate = keys_pb2.RotateKeyRequest(key_id=KEY_ID, etag=etag)
    rotate.grace_period.FromTimedelta(timedelta(minutes=5))
    return [
        rotate,
        keys_pb2.RevokeKeyRequest(key_id=KEY_ID, reason="leaked", etag=etag),
        keys_pb2.DisableKeyRequest(key_id=KEY_ID, etag=etag),
        keys_pb2.EnableKeyRequest(key_id=KEY_ID, etag=etag),
        expires_at,
        keys_pb2.UpdateKeyExpiryRequest(key_id=KEY_ID, etag=etag),
    ]


@pytest.mark.parametrize(("etag", "sent"), [("e1", "e1"), (None, ""), ("", "")], ids=["etag", "none", "empty"])
def test_sync_client_sends_etag(fake_keys: tuple[FakeKeys, str], etag: str | None, sent: str) -> None:
    fake, address = fake_keys
    with keygate.Client(address, insecure=True) as client:
        assert client.rotate_key(KEY_ID, grace_period=timedelta(minutes=5), etag=etag).secret == "kg_live_new"
        assert client.revoke_key(KEY_ID, reason="leaked", etag=etag).key_id == KEY_ID
        client.disable_key(KEY_ID, etag=etag)
        client.enable_key(KEY_ID, etag=etag)
        client.update_key_expiry(KEY_ID, EXPIRY, etag=etag)
        client.update_key_expiry(KEY_ID, None, etag=etag)
    assert fake.requests == expected_requests(sent)


@pytest.mark.parametrize(("etag", "sent"), [("e1", "e1"), (None, "")], ids=["etag", "none"])
def test_async_client_sends_etag(fake_keys: tuple[FakeKeys, str], etag: str | None, sent: str) -> None:
    fake, address = fake_keys

    async def scenario() -> None:
        async with keygate.AsyncClient(address, insecure=True) as client:
            await client.rotate_key(KEY_ID, grace_period=timedelta(minutes=5), etag=etag)
            await client.revoke_key(KEY_ID, reason="leaked", etag=etag)
            await client.disable_key(KEY_ID, etag=etag)
            await client.enable_key(KEY_ID, etag=etag)
            await client.update_key_expiry(KEY_ID, EXPIRY, etag=etag)
            await client.update_key_expiry(KEY_ID, None, etag=etag)

    asyncio.run(scenario())
    assert fake.requests == expected_requests(sent)


def check_invalid(error: keygate.KeygateError) -> None:
    assert isinstance(error, keygate.InvalidArgumentError)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "2 fields are invalid")
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", keygate.ERROR_DOMAIN)
    assert error.metadata == {"hint": "x"}
    assert error.field_violations == (
        keygate.FieldViolation(field="key_id", description="must not be empty"),
        keygate.FieldViolation(field="etag", description="must be short"),
    )


def check_stale(error: keygate.KeygateError) -> None:
    assert isinstance(error, keygate.AbortedError)
    assert (error.code, error.reason, error.domain) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH", "keygate.dev")
    assert error.field_violations == ()


def check_plain(error: keygate.KeygateError) -> None:
    assert type(error) is keygate.KeygateError
    assert (error.code, error.message) == (grpc.StatusCode.INTERNAL, "boom")
    assert (error.reason, error.domain, error.metadata, error.field_violations) == ("", "", {}, ())


CHECKS = {"invalid": check_invalid, "stale": check_stale, "plain": check_plain, "garbage": check_plain}


@pytest.mark.parametrize("case", list(CHECKS))
def test_sync_error_details(fake_keys: tuple[FakeKeys, str], case: str) -> None:
    _, address = fake_keys
    with keygate.Client(address, insecure=True) as client:
        with pytest.raises(keygate.KeygateError) as raised:
            client.get_key(case)
    CHECKS[case](raised.value)


@pytest.mark.parametrize("case", list(CHECKS))
def test_async_error_details(fake_keys: tuple[FakeKeys, str], case: str) -> None:
    _, address = fake_keys

    async def scenario() -> keygate.KeygateError:
        async with keygate.AsyncClient(address, insecure=True) as client:
            with pytest.raises(keygate.KeygateError) as raised:
                await client.get_key(case)
            return raised.value

    CHECKS[case](asyncio.run(scenario()))


def test_error_without_a_call() -> None:
    error = from_rpc_error(grpc.RpcError("no call"))
    assert (error.code, error.reason, error.field_violations) == (grpc.StatusCode.UNKNOWN, "", ())


def test_get_key_usage_sends_the_range(fake_keys: tuple[FakeKeys, str]) -> None:
    fake, address = fake_keys
    start = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    with keygate.Client(address, insecure=True) as client:
        buckets = client.get_key_usage("k1", start_time=start)
    sent = fake.requests[-1]
    assert isinstance(sent, keys_pb2.GetKeyUsageRequest)
    assert sent.key_id == "k1" and sent.HasField("start_time") and not sent.HasField("end_time")
    assert sent.start_time.ToDatetime(tzinfo=timezone.utc) == start
    assert [b.allowed for b in buckets] == [7]


def update_request(paths: list[str], etag: str = "", **key: Any) -> keys_pb2.UpdateKeyRequest:
    request = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(key_id=KEY_ID, **key), etag=etag)
    request.update_mask.paths.extend(paths)
    return request


def test_update_key_masks_the_fields_passed(fake_keys: tuple[FakeKeys, str]) -> None:
    """The mask names exactly the keyword arguments passed, in a fixed order;
    None clears the rate limit and the expiry, empty values clear the rest."""
    fake, address = fake_keys
    with keygate.Client(address, insecure=True) as client:
        updated = client.update_key(KEY_ID, metadata={"plan": "pro"}, scopes=["dns:read"], etag="e1")
        assert (list(updated.scopes), dict(updated.metadata)) == (["dns:read"], {"plan": "pro"})
        client.update_key(KEY_ID, rate_limit_per_hour=None, expires_at=None)
        client.update_key(KEY_ID, rate_limit_per_hour=0, expires_at=EXPIRY, name="renamed")
        client.update_key(KEY_ID, scopes=(), ip_allowlist=[], metadata={})
        client.update_key(KEY_ID, ip_allowlist=iter(["10.0.0.0/8"]), rate_limit_per_hour=keygate.UNSET)
    with_expiry = update_request(["name", "rate_limit_per_hour", "expires_at"], name="renamed", rate_limit_per_hour=0)
    with_expiry.key.expires_at.FromDatetime(EXPIRY)
    assert fake.requests == [
        update_request(["scopes", "metadata"], etag="e1", scopes=["dns:read"], metadata={"plan": "pro"}),
        update_request(["rate_limit_per_hour", "expires_at"]),
        with_expiry,
        update_request(["scopes", "ip_allowlist", "metadata"]),
        update_request(["ip_allowlist"], ip_allowlist=["10.0.0.0/8"]),
    ]
    cleared = fake.requests[1].key
    assert not cleared.HasField("rate_limit_per_hour") and not cleared.HasField("expires_at")
    assert fake.requests[2].key.HasField("rate_limit_per_hour")  # 0 is sent, not taken for "unset"


def test_update_key_argument_checks(fake_keys: tuple[FakeKeys, str]) -> None:
    fake, address = fake_keys
    with keygate.Client(address, insecure=True) as client:
        with pytest.raises(ValueError, match="at least one field"):
            client.update_key(KEY_ID)
        with pytest.raises(ValueError, match="at least one field"):
            client.update_key(KEY_ID, etag="e1", scopes=keygate.UNSET)
        with pytest.raises(ValueError, match="timezone-aware"):
            client.update_key(KEY_ID, expires_at=datetime(2030, 1, 1))
        with pytest.raises(TypeError, match="list of strings"):
            client.update_key(KEY_ID, scopes="dns:read")
    assert fake.requests == []


def test_delete_undelete_and_audit_pages(fake_keys: tuple[FakeKeys, str]) -> None:
    fake, address = fake_keys
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    with keygate.Client(address, insecure=True) as client:
        assert client.delete_key(KEY_ID, etag="e1").status == keys_pb2.KEY_STATUS_DELETED
        assert client.delete_key(KEY_ID).status == keys_pb2.KEY_STATUS_DELETED
        assert client.undelete_key(KEY_ID).status == keys_pb2.KEY_STATUS_ACTIVE
        events = client.list_audit_events(key_id=KEY_ID, method="UpdateKey", start_time=start, page_size=2)
        assert [e.event_id for e in events] == ["e4", "e3", "e2", "e1", "e0"]
        # Lazily: nothing is fetched before the first event is asked for.
        pending = client.list_audit_events(owner_id="acme")
        count = len(fake.requests)
        assert next(pending).event_id == "e4" and len(fake.requests) == count + 1
    assert fake.requests[:3] == [
        keys_pb2.DeleteKeyRequest(key_id=KEY_ID, etag="e1"),
        keys_pb2.DeleteKeyRequest(key_id=KEY_ID),
        keys_pb2.UndeleteKeyRequest(key_id=KEY_ID),
    ]
    listed = fake.requests[3:6]
    assert [r.page_token for r in listed] == ["", "2", "4"]
    first = keys_pb2.ListAuditEventsRequest(key_id=KEY_ID, method="UpdateKey", page_size=2)
    first.start_time.FromDatetime(start)
    for request in listed:
        assert isinstance(request, keys_pb2.ListAuditEventsRequest)
        request.page_token = ""
        assert request == first


def test_async_update_delete_and_audit(fake_keys: tuple[FakeKeys, str]) -> None:
    fake, address = fake_keys

    async def scenario() -> list[str]:
        async with keygate.AsyncClient(address, insecure=True) as client:
            await client.update_key(KEY_ID, rate_limit_per_hour=None, etag="e1")
            await client.delete_key(KEY_ID, etag="e2")
            await client.undelete_key(KEY_ID)
            with pytest.raises(ValueError):
                await client.update_key(KEY_ID)
            return [e.event_id async for e in client.list_audit_events(key_id=KEY_ID)]

    assert asyncio.run(scenario()) == ["e4", "e3", "e2", "e1", "e0"]
    assert fake.requests[:3] == [
        update_request(["rate_limit_per_hour"], etag="e1"),
        keys_pb2.DeleteKeyRequest(key_id=KEY_ID, etag="e2"),
        keys_pb2.UndeleteKeyRequest(key_id=KEY_ID),
    ]


def test_list_audit_events_error_is_mapped(fake_keys: tuple[FakeKeys, str]) -> None:
    _, address = fake_keys
    with keygate.Client(address, insecure=True) as client:
        with pytest.raises(keygate.InvalidArgumentError, match="key_id is invalid"):
            list(client.list_audit_events(key_id="invalid"))
