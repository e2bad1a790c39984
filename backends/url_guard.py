"""The outbound URL policy wired into aiohttp, so no fetch can bypass it.

Three hooks cover every hop of a request:

- :class:`GuardedResolver` checks every address DNS returns for a host (a public-looking name that
  resolves to ``10.0.0.5`` or ``169.254.169.254`` is refused, and the connection is made to the
  address that was checked, so DNS rebinding between check and connect is impossible);
- the ``on_request_start`` trace checks the first URL (scheme, literal addresses);
- the ``on_request_redirect`` trace checks each ``Location`` before aiohttp follows it.

aiohttp itself refuses legacy numeric IPv4 spellings (``http://2130706433/``) in URLs, and drops
``Authorization`` when a redirect leaves the origin.

aiohttp wraps an ``OSError`` raised by a resolver in ``ClientConnectorDNSError`` (and PodKit's
``Forbidden`` is a ``PermissionError``), so callers that catch ``aiohttp.ClientError`` or ``OSError``
to retry must first ask :func:`policy_refusal` whether the failure is a refusal: a refused URL is
final, never "the network is down, try again".
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ..core.errors import PodKitError
from ..core.url_policy import UrlPolicy, check_address, check_url


class GuardedResolver(AbstractResolver):
    """A resolver that refuses hosts resolving to addresses the policy does not admit."""

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(host, result["host"], self.policy)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guard_trace(policy: UrlPolicy) -> aiohttp.TraceConfig:
    """A trace config that checks the first URL of each request and every redirect target."""

    async def on_start(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        check_url(str(params.url), policy)

    async def on_redirect(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        location = params.response.headers.get("Location") or params.response.headers.get("URI")
        if location:
            try:
                target = params.url.join(URL(location))
            except ValueError:
                return  # aiohttp refuses a malformed Location itself
            try:
                check_url(str(target), policy)
            except PodKitError:
                params.response.release()
                raise

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_redirect.append(on_redirect)
    return trace


def guarded_connector(policy: UrlPolicy, *, limit: int, limit_per_host: int = 0) -> aiohttp.TCPConnector:
    """A connection pool whose every DNS answer goes through :class:`GuardedResolver`."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(policy), limit=limit, limit_per_host=limit_per_host, ttl_dns_cache=60
    )


def policy_refusal(exc: BaseException) -> PodKitError | None:
    """The URL-policy refusal behind ``exc`` (itself, or what aiohttp wrapped), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PodKitError):
            return current
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)
        current = os_error if isinstance(os_error, BaseException) else current.__cause__
    return None
