"""Exceptions raised by the Keygate clients. Each keeps the gRPC status code
and the google.rpc error details Keygate attaches (reason, bad fields)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "keygate.dev"
"""The google.rpc ``ErrorInfo`` domain of Keygate's errors."""

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request (a google.rpc ``BadRequest`` violation)."""

    field: str
    """The field's path, such as ``"key_id"``."""
    description: str
    """What is wrong with it."""


@dataclass(frozen=True, slots=True)
class _Details:
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()


class KeygateError(Exception):
    """An error answered by Keygate, or by gRPC on the way there.

    ``code`` is the gRPC status code and ``message`` its details. Subclasses
    exist for the codes callers usually branch on; any other code raises
    ``KeygateError`` itself.

    From the status's google.rpc details (the ``grpc-status-details-bin``
    trailer): ``reason`` is the ``ErrorInfo`` reason, such as
    ``"KEY_NOT_FOUND"``, ``"ETAG_MISMATCH"`` or ``"KEY_REVOKED"`` (``""`` when
    the status carries none, e.g. an error raised by gRPC itself), ``domain``
    its domain (:data:`ERROR_DOMAIN` for Keygate's), ``metadata`` its
    metadata, and ``field_violations`` the ``BadRequest`` violations of an
    INVALID_ARGUMENT. Branch on ``reason`` rather than on ``message``.
    """

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: Mapping[str, str]
    field_violations: tuple[FieldViolation, ...]

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = tuple(field_violations)


class InvalidArgumentError(KeygateError):
    """INVALID_ARGUMENT: a field of the request is wrong; ``field_violations`` names it."""


class UnauthenticatedError(KeygateError):
    """UNAUTHENTICATED: the management key is missing or not valid."""


class PermissionDeniedError(KeygateError):
    """PERMISSION_DENIED: the management key may not do this."""


class NotFoundError(KeygateError):
    """NOT_FOUND: no such key (or none the management key may see)."""


class FailedPreconditionError(KeygateError):
    """FAILED_PRECONDITION: the key's state forbids it, e.g. changing a revoked
    key (reason ``KEY_REVOKED``)."""


class AbortedError(KeygateError):
    """ABORTED: a concurrent change won, e.g. the ``etag`` sent is stale
    (reason ``ETAG_MISMATCH``). Nothing was changed: read the key and retry."""


class UnavailableError(KeygateError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: Keygate could not be reached in time."""


_BY_CODE: dict[grpc.StatusCode, type[KeygateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> KeygateError:
    """Converts an error raised by a gRPC call (sync or grpc.aio)."""
    if isinstance(error, (grpc.Call, grpc.aio.AioRpcError)):
        code, message = error.code(), error.details() or ""
        details = _details(error.trailing_metadata())
    else:
        code, message, details = grpc.StatusCode.UNKNOWN, str(error), _Details()
    return _BY_CODE.get(code, KeygateError)(
        code,
        message,
        reason=details.reason,
        domain=details.domain,
        metadata=details.metadata,
        field_violations=details.field_violations,
    )


def _details(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> _Details:
    """Decodes the google.rpc.Status of the ``grpc-status-details-bin`` trailer."""
    for key, value in trailing_metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return _Details()
            return _from_status(status)
    return _Details()


def _from_status(status: status_pb2.Status) -> _Details:
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[FieldViolation] = []
    for detail in status.details:
        # Any.Unpack is False, and leaves the message alone, for another type.
        candidate = error_details_pb2.ErrorInfo()
        if info is None and detail.Unpack(candidate):
            info = candidate
            continue
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend(
                FieldViolation(field=v.field, description=v.description) for v in bad_request.field_violations
            )
    if info is None:
        return _Details(field_violations=tuple(violations))
    return _Details(
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        field_violations=tuple(violations),
    )
