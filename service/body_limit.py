"""Every request body bounded as it streams: an ASGI middleware that counts the bytes a
route reads and stops the read at the route's limit.

Routes read bodies in their own ways (``request.stream()``, ``request.form()``, a
dependency); the limit must hold for all of them, chunked or not, and before the bytes pile
up in memory or in a spooled file. So the count sits under every reader, in ``receive``:
the first read past the limit raises :class:`BodyTooLarge` (an HTTP 413) inside the
reader, which stops there; nothing after it is read. A declared ``Content-Length`` over the
limit is refused at the first read, before any byte. An answer sent
before its request's body was read whole (every refusal) closes the connection. The JSON API renders the 413 through
its error handler; the web page catches it and shows its own page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """The request body passed its route's limit; raised by the read that passed it."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"is {declared} bytes" if declared is not None else f"is over {limit} bytes"
        super().__init__(413, f"the body {size}; at most {limit} are accepted")
        self.limit = limit
        self.declared = declared

    def __reduce__(self) -> tuple[type[BodyTooLarge], tuple[int, int | None]]:
        return BodyTooLarge, (self.limit, self.declared)


def form_limit(spec_bytes: int) -> int:
    """What the web page's submit form may carry: an uploaded spec and a pasted one, each up
    to ``spec_bytes``, plus its small fields and the multipart framing."""
    return 2 * spec_bytes + 65536


class BodyLimit:
    """``limit_for(method, path)`` bytes per request body, counted as the body streams in."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared, chunked = _framing(scope)
        seen = 0
        unread = chunked or bool(declared)

        async def bounded() -> Message:
            nonlocal seen, unread
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit, declared)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    log.info("refused a body over %d bytes on %s %s", limit, scope["method"], scope["path"])
                    raise BodyTooLarge(limit)
                unread = bool(message.get("more_body", False))
            return message

        async def closing(message: Message) -> None:
            # An answer sent before the whole body was read (a refusal) closes the connection:
            # else the server would go on reading (and dropping) the rest to reuse the socket.
            if unread and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, bounded, closing)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared ``Content-Length`` (None: not declared) and whether the body is chunked."""
    declared, chunked = None, False
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            declared = int(text) if text.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return declared, chunked
