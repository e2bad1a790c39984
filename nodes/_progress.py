"""What a running node tells the user while it works: a line of text and a byte progress bar.

One place for both, so every node speaks the same way and old hosts (without
``PromptServer.send_progress_text``) are handled once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Least seconds between two progress-bar updates (each one is a websocket message to every tab).
BAR_INTERVAL_S = 0.1


def say(node_id: str | None, text: str) -> None:
    """Show ``text`` under the node ``node_id`` (None: the node running now).

    Progress text is a newer host feature; where ``send_progress_text`` is missing the text is
    dropped rather than failing the node over a message.
    """
    from server import PromptServer

    server = PromptServer.instance
    send = getattr(server, "send_progress_text", None)
    node = node_id if node_id is not None else getattr(server, "last_node_id", None)
    if send is not None and node is not None:
        send(text, node)


class Every:
    """True at most once every ``seconds``: throttles messages sent from a tight callback."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last <= self.seconds:
            return False
        self._last = now
        return True


class ByteProgress:
    """Bytes received → the node's progress bar, throttled to :data:`BAR_INTERVAL_S`.

    Call it with each chunk's size (an ``on_bytes`` callback). The last chunk always updates the
    bar. ComfyUI's bar raises when the user interrupted the prompt, which is how a long download
    stops on cancel.
    """

    def __init__(self, total: int) -> None:
        import comfy.utils

        self.total = max(total, 1)
        self.done = 0
        self._bar = comfy.utils.ProgressBar(self.total)
        self._every = Every(BAR_INTERVAL_S)

    def __call__(self, n: int) -> None:
        self.done += n
        if self._every.due() or self.done >= self.total:
            self._bar.update_absolute(min(self.done, self.total))
