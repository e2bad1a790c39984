"""An asyncio loop on a thread of its own, for services whose public methods are plain and blocking.

The download service runs its transfers on one, and the blocking fetch that training uses borrows
the same loop (one HTTP session, one pool of connections) instead of starting another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """One event loop in a daemon thread: started with a setup coroutine, stopped with a shutdown one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, setup: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start the thread and wait (up to 30 s) until ``setup`` has run on the loop."""
        if self._thread is not None:
            return
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(setup,), name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _run(self, setup: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        loop.run_until_complete(setup())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop soon; nothing when the loop is not running."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(fn)

    def submit(self, make: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T] | None:
        """Run the coroutine ``make()`` returns on the loop; None (nothing made) when it is not running."""
        if self.loop is None:
            return None
        return asyncio.run_coroutine_threadsafe(make(), self.loop)

    def stop(self, shutdown: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``shutdown`` on the loop (up to 30 s), then stop the loop and join the thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = self.loop = None
