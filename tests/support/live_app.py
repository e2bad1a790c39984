"""Serve an aiohttp application on a real 127.0.0.1 port from a background thread.

For tests and benches that drive PodKit's routes from another client (schemathesis, a browser,
a load generator) rather than through aiohttp's in-process test client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web


class LiveApp:
    """``with LiveApp(make_app) as live: requests.get(live.url + "/podkit/status")``.

    ``make_app`` runs on the server thread's loop, so the app and everything it creates belong
    to that loop.
    """

    def __init__(self, make_app: Callable[[], web.Application], host: str = "127.0.0.1") -> None:
        self._make_app = make_app
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="live-app", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as e:  # surfaced to the caller of start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._cleanup())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> LiveApp:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("the app did not start") from self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> LiveApp:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
