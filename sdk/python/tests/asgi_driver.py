"""A minimal ASGI HTTP driver for the middleware tests (no web framework needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from keygate.asgi import ASGIApp, Message, Scope, identity


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def echo_identity(scope: Scope, receive: Any, send: Any) -> None:
    """An app answering 200 with "owner/key_id" of the caller, or "anonymous"."""
    found = identity(scope)
    body = f"{found.owner_id}/{found.key_id}".encode() if found else b"anonymous"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def request(
    app: ASGIApp,
    *,
    authorization: str | None = None,
    client: tuple[str, int] = ("127.0.0.1", 40000),
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Response:
    """Sends one GET /zones through app and collects the response."""
    all_headers = list(headers or [])
    if authorization is not None:
        all_headers.append((b"authorization", authorization.encode()))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/zones",
        "raw_path": b"/zones",
        "query_string": b"",
        "headers": all_headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
    }
    response = Response(status=0)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            for name, value in message.get("headers", ()):
                key = name.decode().lower()
                assert key not in response.headers, f"header {key} sent twice"
                response.headers[key] = value.decode()
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app(scope, receive, send)
    return response
