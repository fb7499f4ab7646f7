"""The one thread that does all of the app's tensor work: :meth:`DeviceWorker.run` for a job, :meth:`DeviceWorker.stream`
for a generator advanced there an item at a time (sampling, the 2-D lab's training, the likelihood's bound)."""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

Result = TypeVar("Result")
Item = TypeVar("Item")
_END = object()  # a generator's end, or a job's, as a value


class Cancelled(Exception):
    """The user left or pressed Stop: the job in progress on the worker ends early."""


class Reports:
    """What a long job on the worker says while it runs (``reports(item)``), for :meth:`DeviceWorker.stream` to hand
    on as it comes. Once the stream is closed, the job's next report raises :class:`Cancelled`, which ends it."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()

    def __call__(self, item: object) -> None:
        if self._cancelled.is_set():
            raise Cancelled
        self._queue.put(item)

    def until(self, job: Future) -> Iterator[object]:
        """The reports as they come, until ``job`` has ended."""
        job.add_done_callback(lambda _: self._queue.put(_END))
        while (item := self._queue.get()) is not _END:
            yield item

    def cancel(self) -> None:
        self._cancelled.set()


class DeviceWorker:
    """One thread that does all of the app's tensor work, one job at a time: :meth:`run` calls a function there,
    :meth:`stream` advances a generator there an item at a time.

    PyTorch's CPU kernels start an OpenMP thread team in each thread that calls them. A web server hands requests
    to any of its pool threads, so each would get a team; with more team threads than cores OpenMP sleeps
    between kernels instead of spinning, and sampling slows down (docs/operations.md, "Threads"). Calling every
    kernel from this one thread keeps one team.
    """

    def __init__(self, name: str = "ddpm-device", clock: Callable[[], float] = time.monotonic):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                            initializer=self._remember_thread)
        self._thread_id: int | None = None
        self.clock = clock
        self._jobs = 0  # submitted and not yet finished
        self._last_done = clock()
        self._lock = threading.Lock()

    def _remember_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def run(self, fn: Callable[..., Result], *args, **kwargs) -> Result:
        """``fn(*args, **kwargs)`` on the worker, in the caller's context (so a ``gr.Progress`` still finds its
        event, as with ``asyncio.to_thread``)."""
        if threading.get_ident() == self._thread_id:  # already on the worker (a job calling another)
            return fn(*args, **kwargs)
        return self._in_context(fn, *args, **kwargs).result()

    def stream(self, items: Iterator[Item], reports: Reports | None = None) -> Iterator[Item]:
        """Each item of the generator ``items`` computed on the worker as a job of its own (so other users' jobs take
        turns between two items) and handed on as it comes; with ``reports``, also what the job reports while it
        runs (a job too long to wait for without news). Closing this iterator (Stop, a user who left) ends the work:
        the job's next report raises :class:`Cancelled`, and ``items`` is closed on the worker once the job in
        progress has ended, so its cleanup runs there too."""
        try:
            while True:
                job = self._in_context(next, items, _END)
                if reports is not None:
                    yield from reports.until(job)
                item = job.result()
                if item is _END:
                    return
                yield item
        finally:  # also when the consumer closes us
            if reports is not None:
                reports.cancel()
            if hasattr(items, "close"):
                self.run(items.close)

    def _in_context(self, fn: Callable[..., Result], *args, **kwargs) -> Future[Result]:
        return self.submit(contextvars.copy_context().run, fn, *args, **kwargs)

    def submit(self, fn: Callable[..., Result], *args, **kwargs) -> Future[Result]:
        """Start ``fn`` on the worker and return at once."""
        with self._lock:
            self._jobs += 1
        future = self._executor.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future) -> None:
        with self._lock:
            self._jobs -= 1
            self._last_done = self.clock()

    def idle_for(self) -> float:
        """Seconds since the worker's last job ended; 0 while a job runs or waits."""
        with self._lock:
            return 0.0 if self._jobs else self.clock() - self._last_done

    def when_idle(self, action: Callable[[], object], every: float, after: float) -> threading.Thread:
        """Every ``every`` seconds, from a daemon thread, call ``action()`` if no job has run for ``after`` seconds
        (the app returns freed memory to the system this way, never between two sampling steps)."""
        def loop() -> None:
            while True:
                time.sleep(every)
                if self.idle_for() >= after:
                    action()
        thread = threading.Thread(target=loop, name="ddpm-device-idle", daemon=True)
        thread.start()
        return thread
