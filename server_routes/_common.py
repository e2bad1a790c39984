"""What every PodKit handler shares: the route record, JSON errors, the JSON-only body guard, the
bearer token."""

from __future__ import annotations

import enum
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.errors import (
    InvalidRequest,
    PayloadTooLarge,
    PodKitError,
    Unauthorized,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    from ..services import Services

logger = logging.getLogger(__name__)

ROUTE_PREFIX = "/podkit"
MAX_JSON_BODY = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What an area module writes: the request and the services, nothing captured in a closure, so the
#: route table can name it before any service exists.
ServiceHandler = Callable[[web.Request, "Services"], Awaitable[web.StreamResponse]]


class Auth(enum.Enum):
    """Who may call a route when ``PODKIT_API_TOKEN`` is set (unset: everyone, as on a laptop)."""

    #: Anyone who reaches the server: a load balancer, a Prometheus scraper, the contract reader.
    OPEN = "open"
    #: ``Authorization: Bearer <token>``: every route that writes, or that reveals bucket keys,
    #: job details, logs, paths or cache folders.
    TOKEN = "token"  # noqa: S105 (a level's name, not a secret)


@dataclass(frozen=True)
class Route:
    """One row of the route table: the whole read/write policy is the list of these."""

    method: str
    path: str  #: under ROUTE_PREFIX, in aiohttp's syntax (``{job_id}``, ``{key:regex}``)
    handler: ServiceHandler
    auth: Auth

    @property
    def url(self) -> str:
        return ROUTE_PREFIX + self.path

    def bind(self, services: Services) -> Handler:
        """The aiohttp handler: the policy first (a refusal is a JSON 401), then the area's code."""
        token = services.settings.api_token
        needs_token = self.auth is Auth.TOKEN
        area_handler = self.handler

        async def handler(request: web.Request) -> web.StreamResponse:
            if needs_token:
                check_token(request, token)
            return await area_handler(request, services)

        handler.__name__ = handler.__qualname__ = area_handler.__name__
        handler.__doc__ = area_handler.__doc__
        return json_errors(handler)


def error_response(error: PodKitError) -> web.Response:
    return web.json_response(error.to_wire(), status=error.http_status)


def json_errors(handler: Handler) -> Handler:
    """Map PodKit errors to JSON answers with their status; never leak a traceback."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except PodKitError as e:
            if e.http_status >= 500:
                logger.warning("%s %s: %s", request.method, request.path, e)
            return error_response(e)
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return web.json_response(
                {"error": "internal_error", "message": "internal error; see the server log"}, status=500
            )

    return wrapped


def bears_token(request: web.Request, token: str | None) -> bool:
    """Whether ``request`` may see what a token guards: no token configured, or it bears it
    (``Authorization: Bearer <token>``, compared in constant time)."""
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def check_token(request: web.Request, token: str | None) -> None:
    """Require ``Authorization: Bearer <token>`` when a token is configured."""
    if not bears_token(request, token):
        raise Unauthorized("this PodKit route requires 'Authorization: Bearer <PODKIT_API_TOKEN>'")


async def require_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty).

    Mutations accept only ``application/json``: form content types can be sent cross-site without
    a CORS preflight, so refusing them closes that CSRF path.

    Raises:
        UnsupportedMediaType: another content type.
        PayloadTooLarge: a body over the limit.
        InvalidRequest: malformed JSON or not an object.
    """
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the request body as application/json")
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise PayloadTooLarge(f"request body is larger than {MAX_JSON_BODY} bytes")
    raw = await request.content.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise PayloadTooLarge(f"request body is larger than {MAX_JSON_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def only_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    """Reject fields outside ``allowed`` (a typo must not be silently ignored)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def get_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false")
    return value


def get_int(body: Mapping[str, Any], name: str, *, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be an integer between {lo} and {hi}")
    return value


def query_int(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise InvalidRequest(f"query parameter {name} must be an integer") from e
    if not lo <= value <= hi:
        raise InvalidRequest(f"query parameter {name} must be between {lo} and {hi}")
    return value
