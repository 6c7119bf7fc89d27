"""Python client of Keygate, the API key service.

* :class:`Client` and :class:`AsyncClient` manage keys and authorize them over
  gRPC; errors are :class:`KeygateError` subclasses that keep the status code.
* :class:`KeygateMiddleware` protects any ASGI application.
* ``keygate.v1`` holds the generated messages and stubs.
"""

from keygate._common import CreatedKey, RotatedKey
from keygate.aio import AsyncClient
from keygate.asgi import Identity, KeygateMiddleware, forwarded_for_ip, identity
from keygate.client import Client
from keygate.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    KeygateError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "CreatedKey",
    "FailedPreconditionError",
    "Identity",
    "InvalidArgumentError",
    "KeygateError",
    "KeygateMiddleware",
    "NotFoundError",
    "PermissionDeniedError",
    "RotatedKey",
    "UnauthenticatedError",
    "UnavailableError",
    "forwarded_for_ip",
    "identity",
]
