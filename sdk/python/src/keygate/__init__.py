"""Python client of Keygate, the API key service.

* :class:`Client` and :class:`AsyncClient` manage keys and authorize them over
  gRPC; errors are :class:`KeygateError` subclasses that keep the status code
  and Keygate's error reason (``err.reason``, e.g. ``"ETAG_MISMATCH"``).
* :class:`KeygateMiddleware` protects any ASGI application.
* ``keygate.v1`` holds the generated messages and stubs.
"""

from keygate._common import UNSET, CreatedKey, RotatedKey
from keygate.aio import AsyncClient
from keygate.asgi import Identity, KeygateMiddleware, forwarded_client_ip, identity
from keygate.client import Client
from keygate.errors import (
    ERROR_DOMAIN,
    AbortedError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    KeygateError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "ERROR_DOMAIN",
    "UNSET",
    "AbortedError",
    "AsyncClient",
    "Client",
    "CreatedKey",
    "FailedPreconditionError",
    "FieldViolation",
    "Identity",
    "InvalidArgumentError",
    "KeygateError",
    "KeygateMiddleware",
    "NotFoundError",
    "PermissionDeniedError",
    "RotatedKey",
    "UnauthenticatedError",
    "UnavailableError",
    "forwarded_client_ip",
    "identity",
]
