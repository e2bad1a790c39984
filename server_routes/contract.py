"""PodKit's published route contract: one OpenAPI 3.1 document built from per-area fragments.

Each area of routes describes itself in ``openapi/<area>.yaml`` (``paths`` and
``components.schemas`` only), next to the handlers it documents. This module merges them under
the shared parts (the error body, the bearer scheme, the common error answers) and serves the
result at ``GET /podkit/openapi.json``. ``tests/routes/test_openapi.py`` checks the running routes
against it, and ``tests/routes/test_route_table.py`` checks that the bearer scheme is documented on
exactly the routes the table protects.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

if TYPE_CHECKING:
    from ..services import Services

FRAGMENTS_DIR = Path(__file__).with_name("openapi")


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _base(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ComfyUI-PodKit",
            "version": version,
            "description": (
                "PodKit's routes on ComfyUI's server (also under /api/podkit/...) or on the standalone "
                "control plane. Mutations take JSON bodies only and, when PODKIT_API_TOKEN is set, "
                "'Authorization: Bearer <token>'. Errors are JSON: {error: <code>, message: <text>}."
            ),
        },
        "paths": {},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            },
            "responses": {
                "BadRequest": _error_response("The request is invalid; the message says which field."),
                "Unauthorized": _error_response(
                    "PODKIT_API_TOKEN is set; the bearer token is missing or wrong."
                ),
                "Forbidden": _error_response("Refused by policy (e.g. a private address for a download)."),
                "NotFound": _error_response("No such job, object or route parameter."),
                "Conflict": _error_response("The request conflicts with the current state."),
                "TooLarge": _error_response("The JSON body is over the size limit."),
                "NotJson": _error_response("The body is not application/json."),
                "Unavailable": _error_response("A dependency (the object store) is unavailable."),
            },
        },
    }


def build_document(version: str, fragments_dir: Path = FRAGMENTS_DIR) -> dict[str, Any]:
    """Merge every fragment in ``fragments_dir`` into one OpenAPI document.

    Raises:
        ValueError: two fragments define the same path or schema name, or a fragment has other
            top-level keys.
    """
    doc = _base(version)
    schemas: dict[str, Any] = doc["components"]["schemas"]
    for path in sorted(fragments_dir.glob("*.yaml")):
        fragment = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        extra = set(fragment) - {"paths", "components"}
        if extra or set(fragment.get("components") or {}) - {"schemas"}:
            raise ValueError(f"{path.name}: only 'paths' and 'components.schemas' belong in a fragment")
        for route, item in (fragment.get("paths") or {}).items():
            if route in doc["paths"]:
                raise ValueError(f"{path.name}: path {route} is already described by another fragment")
            doc["paths"][route] = item
        for name, schema in ((fragment.get("components") or {}).get("schemas") or {}).items():
            if name in schemas:
                raise ValueError(f"{path.name}: schema {name} is already defined by another fragment")
            schemas[name] = schema
    return doc


@functools.lru_cache(maxsize=4)
def document(version: str) -> dict[str, Any]:
    """The merged document (built once per version)."""
    return build_document(version)


async def openapi(request: web.Request, services: Services) -> web.Response:
    return web.json_response(document(services.version))
