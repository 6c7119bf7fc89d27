"""Exceptions raised by the Keygate clients. Each keeps the gRPC status code."""

from __future__ import annotations

import grpc
import grpc.aio


class KeygateError(Exception):
    """An error answered by Keygate, or by gRPC on the way there.

    ``code`` is the gRPC status code and ``message`` its details. Subclasses
    exist for the codes callers usually branch on; any other code raises
    ``KeygateError`` itself.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgumentError(KeygateError):
    """INVALID_ARGUMENT: a field of the request is wrong; the message names it."""


class UnauthenticatedError(KeygateError):
    """UNAUTHENTICATED: the management key is missing or not valid."""


class PermissionDeniedError(KeygateError):
    """PERMISSION_DENIED: the management key may not do this."""


class NotFoundError(KeygateError):
    """NOT_FOUND: no such key (or none the management key may see)."""


class FailedPreconditionError(KeygateError):
    """FAILED_PRECONDITION: the key's state forbids it, e.g. rotating a revoked key."""


class UnavailableError(KeygateError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: Keygate could not be reached in time."""


_BY_CODE: dict[grpc.StatusCode, type[KeygateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> KeygateError:
    """Converts an error raised by a gRPC call (sync or grpc.aio)."""
    if isinstance(error, (grpc.Call, grpc.aio.AioRpcError)):
        code, message = error.code(), error.details() or ""
    else:
        code, message = grpc.StatusCode.UNKNOWN, str(error)
    return _BY_CODE.get(code, KeygateError)(code, message)
