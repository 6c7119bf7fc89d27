"""Client and AsyncClient against a real Keygate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from conftest import KeygateServer

import keygate
from keygate.errors import from_rpc_error
from keygate.v1 import authorization_pb2, keys_pb2

MISSING_KEY_ID = "00000000-0000-7000-8000-000000000000"


def test_key_lifecycle(admin: keygate.Client) -> None:
    created = admin.create_key(owner_id="acme", name="lifecycle", environment="live", scopes=["dns:read"])
    assert created.secret.startswith("kg_live_")
    key_id = created.key.key_id
    assert admin.get_key(key_id).status == keys_pb2.KEY_STATUS_ACTIVE

    allowed = admin.authorize(created.secret, environment="live", required_scopes=["dns:read"])
    assert allowed.decision == authorization_pb2.DECISION_ALLOW
    assert (allowed.key_id, allowed.owner_id, list(allowed.scopes)) == (key_id, "acme", ["dns:read"])
    assert allowed.HasField("rate_limit")

    rotated = admin.rotate_key(key_id, grace_period=timedelta(minutes=5))
    assert rotated.secret != created.secret and rotated.key.key_id == key_id
    assert rotated.previous_secret_expires_at is not None
    assert rotated.previous_secret_expires_at > datetime.now(timezone.utc)
    for secret in (created.secret, rotated.secret):  # both work during the grace period
        assert admin.authorize(secret, environment="live").decision == authorization_pb2.DECISION_ALLOW

    revoked = admin.revoke_key(key_id, reason="done")
    assert revoked.status == keys_pb2.KEY_STATUS_REVOKED and revoked.revoked_reason == "done"
    denied = admin.authorize(rotated.secret, environment="live")
    assert (denied.decision, denied.reason) == (
        authorization_pb2.DECISION_DENY,
        authorization_pb2.DENY_REASON_KEY_REVOKED,
    )
    with pytest.raises(keygate.FailedPreconditionError) as raised:
        admin.rotate_key(key_id)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (raised.value.reason, raised.value.domain) == ("KEY_REVOKED", keygate.ERROR_DOMAIN)


def test_disable_enable_and_expiry(admin: keygate.Client) -> None:
    created = admin.create_key(owner_id="acme", name="toggle", environment="live", scopes=["*"])
    key_id = created.key.key_id
    assert admin.disable_key(key_id).status == keys_pb2.KEY_STATUS_DISABLED
    assert admin.authorize(created.secret, environment="live").reason == authorization_pb2.DENY_REASON_KEY_DISABLED
    assert admin.enable_key(key_id).status == keys_pb2.KEY_STATUS_ACTIVE

    expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=2)
    updated = admin.update_key_expiry(key_id, expiry)
    assert updated.expires_at.ToDatetime(tzinfo=timezone.utc) == expiry
    assert not admin.update_key_expiry(key_id, None).HasField("expires_at")


def test_list_keys_iterates_over_pages(admin: keygate.Client) -> None:
    owner = f"pager-{uuid.uuid4().hex[:8]}"
    made = {
        admin.create_key(owner_id=owner, name=f"k{i}", environment="test", scopes=["dns:read"]).key.key_id
        for i in range(5)
    }
    listed = [key.key_id for key in admin.list_keys(owner_id=owner, page_size=2)]
    assert sorted(listed) == sorted(made)
    assert list(admin.list_keys(owner_id=owner, status=keys_pb2.KEY_STATUS_REVOKED)) == []


def test_list_keys_finds_unused_and_expiring_keys(admin: keygate.Client) -> None:
    owner = f"orphans-{uuid.uuid4().hex[:8]}"
    used = admin.create_key(owner_id=owner, name="used", environment="test", scopes=["dns:read"])
    idle = admin.create_key(owner_id=owner, name="idle", environment="test", scopes=["dns:read"])
    expiring = admin.create_key(
        owner_id=owner, name="expiring", environment="test", scopes=["dns:read"], ttl=timedelta(days=3)
    )
    assert admin.authorize(used.secret, environment="test").decision == authorization_pb2.DECISION_ALLOW
    now = datetime.now(timezone.utc)
    unused = {k.name for k in admin.list_keys(owner_id=owner, last_used_before=now - timedelta(minutes=1))}
    assert unused == {idle.key.name, expiring.key.name}
    soon = [k.name for k in admin.list_keys(owner_id=owner, expires_before=now + timedelta(days=7))]
    assert soon == [expiring.key.name]
    with pytest.raises(ValueError):
        list(admin.list_keys(owner_id=owner, expires_before=datetime(2030, 1, 1)))


@pytest.mark.parametrize(
    ("management_key", "call", "error", "code", "reason", "fields"),
    [
        ("admin", lambda c: c.get_key(MISSING_KEY_ID), keygate.NotFoundError, grpc.StatusCode.NOT_FOUND,
         "KEY_NOT_FOUND", []),
        ("admin", lambda c: c.get_key("not a key id"), keygate.InvalidArgumentError,
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["key_id"]),
        ("admin", lambda c: c.authorize("kg_live_x", environment=""), keygate.InvalidArgumentError,
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["environment"]),
        ("kg_live_forged", lambda c: list(c.list_keys()), keygate.UnauthenticatedError,
         grpc.StatusCode.UNAUTHENTICATED, "MANAGEMENT_KEY_INVALID", []),
        (None, lambda c: list(c.list_keys()), keygate.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED,
         "MANAGEMENT_KEY_MISSING", []),
    ],
    ids=["not-found", "bad-key-id", "no-environment", "forged-management-key", "no-management-key"],
)
def test_errors_keep_the_status_code_and_reason(
    keygate_server: KeygateServer,
    management_key: str | None,
    call: Callable[[keygate.Client], object],
    error: type[keygate.KeygateError],
    code: grpc.StatusCode,
    reason: str,
    fields: list[str],
) -> None:
    key = keygate_server.admin_key if management_key == "admin" else management_key
    with keygate.Client(keygate_server.address, management_key=key, insecure=True) as client:
        with pytest.raises(error) as raised:
            call(client)
    assert raised.value.code == code
    assert isinstance(raised.value, keygate.KeygateError) and raised.value.message
    assert (raised.value.reason, raised.value.domain) == (reason, keygate.ERROR_DOMAIN)
    assert [v.field for v in raised.value.field_violations] == fields
    assert all(v.description for v in raised.value.field_violations)


def test_async_errors_keep_the_reason(keygate_server: KeygateServer) -> None:
    async def scenario() -> None:
        async with keygate.AsyncClient(
            keygate_server.address, management_key=keygate_server.admin_key, insecure=True
        ) as client:
            with pytest.raises(keygate.NotFoundError) as not_found:
                await client.get_key(MISSING_KEY_ID)
            assert not_found.value.reason == "KEY_NOT_FOUND"
            with pytest.raises(keygate.InvalidArgumentError) as invalid:
                await client.get_key("not a key id")
            assert invalid.value.reason == "INVALID_ARGUMENT"
            assert [v.field for v in invalid.value.field_violations] == ["key_id"]

    asyncio.run(scenario())


def test_etag_mismatch_is_aborted(admin: keygate.Client) -> None:
    """A change with the key's current etag applies; one with an etag read
    before that change is ABORTED (ETAG_MISMATCH) and changes nothing."""
    key_id = admin.create_key(owner_id="acme", name="etag", environment="live", scopes=["dns:read"]).key.key_id
    old_etag = admin.get_key(key_id).etag
    assert old_etag, "GetKey returned no etag"

    disabled = admin.disable_key(key_id, etag=old_etag)
    assert disabled.status == keys_pb2.KEY_STATUS_DISABLED
    assert disabled.etag and disabled.etag != old_etag

    with pytest.raises(keygate.AbortedError) as raised:
        admin.enable_key(key_id, etag=old_etag)
    assert raised.value.code == grpc.StatusCode.ABORTED
    assert (raised.value.reason, raised.value.domain) == ("ETAG_MISMATCH", keygate.ERROR_DOMAIN)

    after = admin.get_key(key_id)
    assert after.status == keys_pb2.KEY_STATUS_DISABLED
    assert after.etag == disabled.etag


def test_get_key_usage_counts_requests_per_hour(admin: keygate.Client, keygate_server: KeygateServer) -> None:
    created = admin.create_key(owner_id="acme", name="usage", environment="live", scopes=["dns:read"])
    for _ in range(2):
        assert admin.authorize(created.secret, environment="live").decision == authorization_pb2.DECISION_ALLOW
    denied = admin.authorize(created.secret, environment="live", required_scopes=["dns:write"])
    assert denied.reason == authorization_pb2.DENY_REASON_SCOPE_MISSING

    buckets = admin.get_key_usage(created.key.key_id)
    assert len(buckets) == 25  # the last 24 hours and the current one
    assert sum(b.allowed for b in buckets) == 2
    assert sum(b.denied_other for b in buckets) == 1
    starts = [b.start_time.ToDatetime(tzinfo=timezone.utc) for b in buckets]
    assert all(later - earlier == timedelta(hours=1) for earlier, later in zip(starts, starts[1:]))

    now = datetime.now(timezone.utc)
    with pytest.raises(keygate.InvalidArgumentError) as raised:
        admin.get_key_usage(created.key.key_id, start_time=now, end_time=now - timedelta(hours=1))
    assert "end_time" in str(raised.value)
    with pytest.raises(keygate.InvalidArgumentError):
        admin.get_key_usage(created.key.key_id, start_time=now - timedelta(days=32), end_time=now)
    with pytest.raises(ValueError):
        admin.get_key_usage(created.key.key_id, start_time=datetime.now())  # naive

    async def scenario() -> list[keys_pb2.UsageBucket]:
        async with keygate.AsyncClient(
            keygate_server.address, management_key=keygate_server.admin_key, insecure=True
        ) as client:
            return await client.get_key_usage(created.key.key_id, start_time=now - timedelta(hours=2))

    assert sum(b.allowed for b in asyncio.run(scenario())) == 2


def test_least_privilege_management_key(admin: keygate.Client, keygate_server: KeygateServer) -> None:
    reader = admin.create_key(owner_id="acme", name="reader", environment="live", scopes=["keys:read"])
    with keygate.Client(keygate_server.address, management_key=reader.secret, insecure=True) as client:
        assert client.get_key(reader.key.key_id).key_id == reader.key.key_id
        with pytest.raises(keygate.PermissionDeniedError):
            client.create_key(owner_id="acme", name="nope", environment="live", scopes=["dns:read"])


def test_async_client_lifecycle(keygate_server: KeygateServer) -> None:
    async def scenario() -> None:
        async with keygate.AsyncClient(
            keygate_server.address, management_key=keygate_server.admin_key, insecure=True
        ) as client:
            created = await client.create_key(
                owner_id="acme-async", name="async", environment="live", scopes=["dns:*"], ttl=timedelta(days=30)
            )
            assert created.key.HasField("expires_at")
            decision = await client.authorize(created.secret, environment="live", required_scopes=["dns:write"])
            assert decision.decision == authorization_pb2.DECISION_ALLOW
            assert (await client.get_key(created.key.key_id)).name == "async"
            assert [k.key_id async for k in client.list_keys(owner_id="acme-async", page_size=1)] == [created.key.key_id]
            rotated = await client.rotate_key(created.key.key_id)
            assert (await client.disable_key(created.key.key_id)).status == keys_pb2.KEY_STATUS_DISABLED
            assert (await client.enable_key(created.key.key_id)).status == keys_pb2.KEY_STATUS_ACTIVE
            assert not (await client.update_key_expiry(created.key.key_id, None)).HasField("expires_at")
            assert (await client.revoke_key(created.key.key_id)).status == keys_pb2.KEY_STATUS_REVOKED
            denied = await client.authorize(rotated.secret, environment="live")
            assert denied.reason == authorization_pb2.DENY_REASON_KEY_REVOKED
            with pytest.raises(keygate.NotFoundError):
                await client.get_key(MISSING_KEY_ID)

    asyncio.run(scenario())


def test_create_key_argument_checks() -> None:
    with keygate.Client("127.0.0.1:1", insecure=True) as client:
        with pytest.raises(ValueError, match="not both"):
            client.create_key(
                owner_id="a", name="n", environment="live",
                expires_at=datetime.now(timezone.utc), ttl=timedelta(days=1),
            )
        with pytest.raises(ValueError, match="timezone-aware"):
            client.update_key_expiry(MISSING_KEY_ID, datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="exclude"):
        keygate.Client("127.0.0.1:1", insecure=True, credentials=grpc.ssl_channel_credentials())


def test_update_delete_undelete_and_audit(admin: keygate.Client) -> None:
    """Metadata comes back from authorize; update_key changes the fields
    passed; a deleted key stops authorizing, leaves list_keys (unless
    show_deleted) and refuses changes until undelete_key; the audit log
    tells it all, newest first."""
    owner = f"audit-{uuid.uuid4().hex[:8]}"
    created = admin.create_key(
        owner_id=owner, name="audited", environment="live", scopes=["dns:read"],
        metadata={"plan": "free", "tenant": "t1"},
    )
    key_id = created.key.key_id
    assert dict(created.key.metadata) == {"plan": "free", "tenant": "t1"}
    allowed = admin.authorize(created.secret, environment="live", required_scopes=["dns:read"])
    assert allowed.decision == authorization_pb2.DECISION_ALLOW
    assert dict(allowed.metadata) == {"plan": "free", "tenant": "t1"}

    updated = admin.update_key(
        key_id, scopes=["dns:read", "dns:write"], rate_limit_per_hour=500, metadata={"plan": "pro"},
        etag=created.key.etag,
    )
    assert list(updated.scopes) == ["dns:read", "dns:write"]
    assert updated.HasField("rate_limit_per_hour") and updated.rate_limit_per_hour == 500
    assert dict(updated.metadata) == {"plan": "pro"}
    assert updated.name == "audited" and updated.etag != created.key.etag
    after_update = admin.authorize(created.secret, environment="live", required_scopes=["dns:write"])
    assert after_update.decision == authorization_pb2.DECISION_ALLOW
    assert dict(after_update.metadata) == {"plan": "pro"}

    # update_key only ever names updatable fields; a bad path, sent through the stub, names the path.
    bad = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(key_id=key_id, owner_id="someone-else"))
    bad.update_mask.paths.append("owner_id")
    with pytest.raises(grpc.RpcError) as rpc_error:
        admin.keys.UpdateKey(bad)
    invalid = from_rpc_error(rpc_error.value)
    assert isinstance(invalid, keygate.InvalidArgumentError) and invalid.reason == "INVALID_ARGUMENT"
    assert [v.field for v in invalid.field_violations] == ["update_mask.paths[0]"]
    assert "owner_id" in invalid.field_violations[0].description
    with pytest.raises(keygate.InvalidArgumentError) as blank_name:
        admin.update_key(key_id, name=" ")
    assert [v.field for v in blank_name.value.field_violations] == ["key.name"]

    deleted = admin.delete_key(key_id, etag=updated.etag)
    assert deleted.status == keys_pb2.KEY_STATUS_DELETED
    assert deleted.purge_time.ToDatetime() > deleted.delete_time.ToDatetime()
    denied = admin.authorize(created.secret, environment="live", required_scopes=["dns:read"])
    assert (denied.decision, denied.reason) == (
        authorization_pb2.DECISION_DENY,
        authorization_pb2.DENY_REASON_KEY_INVALID,
    )
    assert list(admin.list_keys(owner_id=owner)) == []
    assert [k.key_id for k in admin.list_keys(owner_id=owner, show_deleted=True)] == [key_id]
    with pytest.raises(keygate.FailedPreconditionError) as refused:
        admin.update_key(key_id, rate_limit_per_hour=None)
    assert (refused.value.reason, refused.value.domain) == ("KEY_DELETED", keygate.ERROR_DOMAIN)

    restored = admin.undelete_key(key_id)
    assert restored.status == keys_pb2.KEY_STATUS_ACTIVE
    assert not restored.HasField("delete_time") and not restored.HasField("purge_time")
    again = admin.authorize(created.secret, environment="live", required_scopes=["dns:read"])
    assert again.decision == authorization_pb2.DECISION_ALLOW
    with pytest.raises(keygate.FailedPreconditionError) as not_deleted:
        admin.undelete_key(key_id)
    assert not_deleted.value.reason == "KEY_NOT_DELETED"

    events = list(admin.list_audit_events(key_id=key_id, page_size=1))  # one a page
    assert [e.method for e in events] == ["UndeleteKey", "DeleteKey", "UpdateKey", "CreateKey"]
    times = [e.time.ToDatetime() for e in events]
    assert times == sorted(times, reverse=True)
    assert all((e.key_id, e.owner_id, e.actor_owner_id) == (key_id, owner, "acme") for e in events)
    changes = {c.field: (c.old_value, c.new_value) for c in events[2].changes}
    assert set(changes) == {"scopes", "rate_limit_per_hour", "metadata.plan", "metadata.tenant"}
    assert changes["rate_limit_per_hour"] == ("", "500")
    assert changes["metadata.plan"] == ("free", "pro")
    assert changes["metadata.tenant"] == ("t1", "")
    assert "dns:write" in changes["scopes"][1] and "dns:write" not in changes["scopes"][0]
    deletes = list(admin.list_audit_events(key_id=key_id, method="DeleteKey"))
    assert [e.event_id for e in deletes] == [events[1].event_id]


def test_update_key_cannot_widen_scopes(admin: keygate.Client, keygate_server: KeygateServer) -> None:
    writer = admin.create_key(owner_id="acme", name="writer", environment="live", scopes=["keys:write", "dns:read"])
    target = admin.create_key(owner_id="acme", name="target", environment="live", scopes=["dns:read"])
    with keygate.Client(keygate_server.address, management_key=writer.secret, insecure=True) as client:
        with pytest.raises(keygate.PermissionDeniedError) as raised:
            client.update_key(target.key.key_id, scopes=["dns:*"])
        assert raised.value.reason == "SCOPE_ESCALATION"
        assert client.update_key(target.key.key_id, name="renamed").name == "renamed"


def test_async_update_delete_and_audit(keygate_server: KeygateServer) -> None:
    async def scenario() -> None:
        async with keygate.AsyncClient(
            keygate_server.address, management_key=keygate_server.admin_key, insecure=True
        ) as client:
            created = await client.create_key(
                owner_id="acme-async", name="async-audit", environment="live", scopes=["dns:read"],
                metadata={"plan": "free"},
            )
            key_id = created.key.key_id
            decision = await client.authorize(created.secret, environment="live")
            assert dict(decision.metadata) == {"plan": "free"}
            updated = await client.update_key(key_id, metadata={}, expires_at=None)
            assert dict(updated.metadata) == {} and not updated.HasField("expires_at")
            assert (await client.delete_key(key_id)).status == keys_pb2.KEY_STATUS_DELETED
            with pytest.raises(keygate.FailedPreconditionError) as refused:
                await client.update_key(key_id, name="nope")
            assert refused.value.reason == "KEY_DELETED"
            assert (await client.undelete_key(key_id)).status == keys_pb2.KEY_STATUS_ACTIVE
            methods = [e.method async for e in client.list_audit_events(key_id=key_id, page_size=1)]
            assert methods == ["UndeleteKey", "DeleteKey", "UpdateKey", "CreateKey"]

    asyncio.run(scenario())
