"""Refuse bodies the API cannot take before any of them is parsed: not JSON (415), too large (413)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class _TooLarge(BaseException):
    """Raised from ``receive``; a BaseException so that body parsers' ``except Exception`` let it by."""


def is_json(content_type: str) -> bool:
    """Whether a Content-Type names JSON: ``application/json``, or ``application/<anything>+json``."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyLimits:
    """ASGI middleware: JSON only, at most ``max_bytes``, whether or not the client sent Content-Length."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _WITH_BODY
            or scope["path"].startswith(self.exempt_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, 413, "payload_too_large", self._too_large())
            return
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        if has_body and not is_json(headers.get("content-type", "")):
            await self._refuse(
                send,
                415,
                "unsupported_media_type",
                "send the body as JSON with the header Content-Type: application/json",
            )
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send, 413, "payload_too_large", self._too_large())

    def _too_large(self) -> str:
        return (
            f"the body is larger than {self.max_bytes} bytes; split the batch into smaller ones "
            "(at most 1000 events each)"
        )

    @staticmethod
    async def _refuse(send: Send, status: int, code: str, detail: str) -> None:
        body = json.dumps({"error": code, "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
