"""How the web server protects itself from what clients send: a cap on request bodies, applied before a body is
read, and separate limits on waiting sampling jobs and waiting quick views, so that one never crowds out the other.
"""

from __future__ import annotations

import logging
import math
from typing import Awaitable, Callable, MutableMapping

import gradio as gr
from fastapi.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ddpm_app.image import MAX_FILE_BYTES

# The largest legal request: a photo of MAX_FILE_BYTES sent as a base64 data: URL inside the JSON of an API call
# (4 bytes for every 3), with 1 MiB for the rest of the request. A multipart upload of the largest file is smaller.
MAX_BODY_BYTES = math.ceil(MAX_FILE_BYTES / 3) * 4 + 2**20
JOBS = "model"  # the concurrency group of the sampling jobs (Generate, Denoise, …): one at a time per device
TOO_LARGE = (f"The request is too large (at most {MAX_BODY_BYTES / 2**20:.1f} MB); photos may be at most "
             f"{MAX_FILE_BYTES // 2**20} MB.")

log = logging.getLogger(__name__)

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised inside the app when a body without a Content-Length grows past the cap; FastAPI answers it with 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE, headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware that refuses any HTTP request whose body exceeds ``max_bytes`` with 413: from its
    Content-Length header before a byte of the body is read, or, for a body streamed without one, as soon as what
    has arrived passes the cap. The connection is then closed, so the rest of the body is never read either. A
    client that goes away before its body is in is a line in the log, not a traceback."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await refuse(send)
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:  # raised where nothing turned it into a response
            if not started:
                await refuse(send)
        except ClientDisconnect:  # a tab closed in the middle of an upload: nobody is left to answer, nothing broke
            log.info("a client left before it had sent all of its request (%s %s)", scope.get("method"),
                     scope.get("path"))


async def refuse(send: Send) -> None:
    """Answer 413 with a message saying the limit, and close the connection."""
    body = ('{"detail": "' + TOO_LARGE + '"}').encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def limit_waiting(demo: gr.Blocks, jobs: str, max_jobs: int, max_views: int) -> None:
    """Refuse a request as busy ("Queue is full") when ``max_jobs`` events of concurrency group ``jobs`` (sampling:
    long) already wait, or ``max_views`` other events (quick views: a frame, a training step) do. Gradio's own
    ``max_size`` counts all waiting events together, so sampling jobs filling it would refuse the quick views too.

    Gradio 6 has no per-event queue size; this wraps the queue's ``push`` (where Gradio checks ``max_size``) and
    reads how many events wait in each of its concurrency groups. Call it after ``demo.queue(max_size=None)``."""
    queue = demo._queue
    push = queue.push

    async def push_within_limits(body, request, username):
        fn = demo.fns.get(body.fn_index) if body.fn_index is not None else None
        if fn is not None:
            waiting = {group: len(events.queue) for group, events in queue.event_queue_per_concurrency_id.items()}
            if fn.concurrency_id == jobs:
                full, limit = waiting.get(jobs, 0) >= max_jobs, max_jobs
            else:
                full, limit = sum(waiting.values()) - waiting.get(jobs, 0) >= max_views, max_views
            if full:
                return False, f"Queue is full: {limit} requests of this kind are waiting. Please try again.", "queue_full"
        return await push(body, request, username)

    queue.push = push_within_limits
