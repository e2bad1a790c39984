"""The sampler-preset route: the effective table (defaults merged with the user's presets file)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import ConfigError
from ..core.presets import table_to_wire

if TYPE_CHECKING:
    from ..services import Services


async def table(request: web.Request, services: Services) -> web.Response:
    """The table; a presets file that does not apply is reported in ``error`` beside the defaults."""
    book = services.presets
    try:
        effective, error = await asyncio.to_thread(book.table), None
    except ConfigError as e:
        effective, error = book.base, str(e)
    return web.json_response({"source": book.source(), "error": error, "families": table_to_wire(effective)})
