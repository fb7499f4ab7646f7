"""What Gradio keeps for each session (a browser tab or an API client), and when the app lets it go.

Gradio keeps a record for every session (``demo.state_holder``): its ``gr.State`` values (here the user's
:class:`~ddpm_app.views.state.UserState`) and the latest value of every component an event read or wrote, as sent.
When a session's heartbeat connection closes, Gradio runs the page's unload event and marks the session closed; an
hour later it deletes only the State values it saw an event return (UserState is never returned, so it stays), and
the record itself stays until 10,000 newer sessions have pushed it out (``launch(state_session_capacity=…)``). A
caller that opens no heartbeat (raw HTTP calls) is never closed at all.

:class:`Sessions` forgets a session, record and State values together, once nobody holds it:

- a session whose heartbeat is open (a page, a ``gradio_client``) is kept, however long it is idle;
- one whose heartbeat has closed goes ``grace`` seconds later, unless it connects again (a page that lost its
  connection for a moment keeps what it had);
- one that never opened a heartbeat goes once unused for ``time_to_live`` seconds, as long as a user's results stay.

The user's results go with it (``leave``: :meth:`ddpm_app.views.state.Users.leave`). Gradio has no call for
forgetting a session: this removes it from ``state_holder.session_data`` on the server's event loop, where Gradio
itself reads and adds sessions, so neither sees the other half-way. ``gr.State(time_to_live=…)`` would not do: its
clock starts only when an event returns the State's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import re
import time
from collections import Counter
from datetime import datetime
from typing import Any, AsyncIterator, Callable

from ddpm_app.serve.server import ASGIApp, Receive, Scope, Send

GRACE_S = 30  # seconds a session whose heartbeat closed is kept, should the page connect again
SWEEP_S = 5  # seconds between looks at the sessions
HEARTBEAT = re.compile(r"/gradio_api/heartbeat/([^/]+)/?")


class Sessions:
    """Which sessions have an open heartbeat and when each closed (fed by :class:`HeartbeatWatch`), and the sweep
    that forgets those nobody holds (run by :meth:`lifespan` every ``every`` seconds), calling ``leave`` with each."""

    def __init__(self, leave: Callable[[str], None], time_to_live: float, grace: float = GRACE_S,
                 every: float = SWEEP_S, clock: Callable[[], float] = time.monotonic):
        self.leave, self.time_to_live, self.grace, self.every, self.clock = leave, time_to_live, grace, every, clock
        self.open: Counter[str] = Counter()  # open heartbeat connections by session
        self.closed: dict[str, float] = {}  # sessions whose last heartbeat closed → when (``clock``)

    def connected(self, session: str) -> None:
        self.open[session] += 1
        self.closed.pop(session, None)

    def disconnected(self, session: str) -> None:
        self.open[session] -= 1
        if self.open[session] <= 0:
            del self.open[session]
            self.closed[session] = self.clock()

    def sweep(self, holder: Any) -> list[str]:
        """Forget the sessions of Gradio's ``holder`` (a ``StateHolder``) that nobody holds (see the module's rules);
        the ones forgotten."""
        now, wall = self.clock(), datetime.now()
        gone = []
        for session in list(holder.session_data):
            if session in self.open:
                continue
            if session in self.closed:  # left: a request it made since (a run ending) does not keep it
                idle, limit = now - self.closed[session], self.grace
            else:
                last_used = holder.time_last_used.get(session)
                idle = (wall - last_used).total_seconds() if last_used is not None else math.inf
                limit = self.time_to_live
            if idle > limit:
                gone.append(session)
        for session in gone:
            self.forget(holder, session)
        self.closed = {s: t for s, t in self.closed.items() if s in holder.session_data}
        return gone

    def forget(self, holder: Any, session: str) -> None:
        """Release the session's results and drop Gradio's record of it, State values included."""
        self.leave(session)
        holder.delete_state(session)  # its State values, through their delete_callback
        with holder.lock:
            holder.session_data.pop(session, None)
            holder.time_last_used.pop(session, None)
        self.closed.pop(session, None)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Sweep ``app.state_holder`` every ``every`` seconds while the server runs (Gradio's ``lifespan`` hook:
        ``launch(app_kwargs={"lifespan": sessions.lifespan})``)."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.every)
                if self.sweep(app.state_holder):
                    # what a request left in reference cycles (a refused value, held by its error's traceback and
                    # the queue's event) is freed only by the cycle collector, which an idle server may not run
                    gc.collect()

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class HeartbeatWatch:
    """ASGI middleware that tells ``sessions`` when a session's heartbeat connection opens and closes (Gradio's
    ``/gradio_api/heartbeat/SESSION`` stream lasts as long as the page or client is there)."""

    def __init__(self, app: ASGIApp, sessions: Sessions):
        self.app, self.sessions = app, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = HEARTBEAT.fullmatch(str(scope.get("path", ""))) if scope["type"] == "http" else None
        if found is None:
            return await self.app(scope, receive, send)
        self.sessions.connected(found[1])
        try:
            await self.app(scope, receive, send)
        finally:
            self.sessions.disconnected(found[1])
