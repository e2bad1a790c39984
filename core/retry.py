"""The one retry rule every job shares: exponential backoff, and whether a failure is worth a retry.

The delay doubles per attempt up to a cap (:func:`backoff_delay`); :class:`Backoff` adds the
downward jitter the background uploaders use so that many items failing together do not retry in
step. :func:`retryable` asks the error itself (``PodKitError.retryable``, "exceptions know their
outcome") and classifies the transient errors of the libraries PodKit talks through — without
importing them, so ``core`` stays free of botocore and aiohttp.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass

from .errors import PodKitError

#: OSError numbers of failures that may go away by themselves (network, a busy or full volume).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
        errno.ECONNABORTED, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPIPE,
        errno.ENOSPC,
    }
)  # fmt: skip
#: botocore exception class names that mean "the store could not be reached in time".
_BOTO_TRANSIENT = frozenset(
    {
        "ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
        "ConnectionClosedError", "ProxyConnectionError", "ResponseStreamingError",
    }
)  # fmt: skip
#: aiohttp exception class names of a connection that broke mid-answer.
_AIOHTTP_TRANSIENT = frozenset({"ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError"})
#: S3 error codes that a later attempt may not meet.
_S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0, jitter: float = 0.0) -> float:
    """Exponential backoff for retry number ``attempt`` (1-based); ``jitter`` in [0, 1) adds up to 50 %."""
    return min(cap, base * 2.0 ** max(0, attempt - 1)) * (1.0 + 0.5 * jitter)


@dataclass(frozen=True)
class Backoff:
    """:func:`backoff_delay` with a random 50–100 % factor, for queues that retry many items at once."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempts: int) -> float:
        raw = backoff_delay(attempts, base=self.base, cap=self.cap)
        return float(raw) * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto


def retryable(exc: BaseException) -> bool:
    """True when trying the same operation again later may succeed.

    PodKit's own errors say so themselves; botocore and aiohttp errors are judged by their class
    name (and an S3 answer by its status or code); an ``OSError`` by its errno. Anything else (a
    bug, a refusal) is permanent: retrying it would only repeat it.
    """
    if isinstance(exc, PodKitError):
        return type(exc).retryable
    module = type(exc).__module__
    names = {cls.__name__ for cls in type(exc).__mro__}
    if module.startswith("botocore"):
        return bool(names & _BOTO_TRANSIENT) or _s3_transient(exc)
    if module.startswith("aiohttp") and names & _AIOHTTP_TRANSIENT:
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _s3_transient(exc: BaseException) -> bool:
    """A botocore ``ClientError`` whose answer was a 5xx, a 429 or a throttling code."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(response.get("Error", {}).get("Code", ""))
    return (isinstance(status, int) and (status >= 500 or status == 429)) or code in _S3_TRANSIENT_CODES
