"""PodKit Save to R2: PNG with workflow metadata → durable outbox → bucket; URLs back to the graph.

The node encodes each image once (the bytes in the bucket are exactly the PNG it wrote, metadata
included), spools it durably and returns: the upload runs in the background, survives restarts and
store outages, and never blocks the graph. Keys and URLs go to the STRING outputs and to the node's
``ui`` output, which API clients read from ``/history/<prompt_id>``.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from ..core.errors import PodKitError
from ..core.naming import DEFAULT_KEY_TEMPLATE, check_template
from ..core.objects import validate_bucket
from ..core.saving import URL_MODES, SavedObject
from ._comfy import CATEGORY, io
from .host import services

logger = logging.getLogger(__name__)


def png_text(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """The tEXt chunks core SaveImage writes (none under ``--disable-metadata``)."""
    from comfy.cli_args import args

    if getattr(args, "disable_metadata", False):
        return {}
    text: dict[str, str] = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for k, v in extra_pnginfo.items():
            text[str(k)] = json.dumps(v)
    return text


def _preview(png: bytes) -> dict[str, str]:
    """Write the PNG to ComfyUI's temp folder so the node shows it (no second encode)."""
    import folder_paths

    folder = Path(folder_paths.get_temp_directory()) / "podkit"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"podkit_{uuid.uuid4().hex[:16]}.png"
    (folder / name).write_bytes(png)
    return {"filename": name, "subfolder": "podkit", "type": "temp"}


class PodKitSaveToR2(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PodKitSaveToR2",
            display_name="Save Image to R2/S3",
            category=f"{CATEGORY}/output",
            description="Saves PNGs (with the workflow embedded, like Save Image) to the R2/S3 output bucket "
            "through a durable outbox: images are spooled to disk first and uploaded in the background "
            "with retries, so an R2 outage or a restart loses nothing. Outputs the object URLs and keys.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The images to save."),
                io.String.Input(
                    "filename_prefix",
                    default="PodKit",
                    tooltip="Prefix of the object keys; '/' makes folders. "
                    "Available as {prefix} in key_template.",
                ),
                io.String.Input(
                    "key_template",
                    default=DEFAULT_KEY_TEMPLATE,
                    tooltip="Object key pattern. Fields: {prefix} {date} {time} {year} {month} {day} {hour} "
                    "{minute} {second} {prompt_id} {node_id} {batch} {hash} {width} {height} {uuid} {ext}; "
                    "format specs work, e.g. {batch:03d} or {hash:.12}.",
                ),
                io.Combo.Input(
                    "url_mode",
                    options=list(URL_MODES),
                    default="auto",
                    tooltip="auto: public URL when PODKIT_PUBLIC_BASE_URL is set, else a presigned URL; "
                    "none: keys only.",
                ),
                io.String.Input(
                    "bucket",
                    default="",
                    optional=True,
                    tooltip="Bucket override; empty uses R2_OUTPUT_BUCKET.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "urls", display_name="urls", tooltip="One URL per image, newline-separated."
                ),
                io.String.Output(
                    "keys", display_name="keys", tooltip="One object URI per image, newline-separated."
                ),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, key_template: str | None = None, bucket: str | None = None) -> bool | str:
        checks = (("key_template", key_template, check_template), ("bucket", bucket, validate_bucket))
        for name, value, check in checks:
            if value:
                try:
                    check(value)
                except PodKitError as e:
                    return f"{name}: {e}"
        return True

    @classmethod
    def execute(
        cls,
        images: Any,
        filename_prefix: str,
        key_template: str,
        url_mode: str,
        bucket: str | None = None,
    ) -> io.NodeOutput:
        from comfy_execution.utils import get_executing_context

        from ..backends.png import encode_png, to_uint8

        svc = services()
        ctx = get_executing_context()
        prompt_id = ctx.prompt_id if ctx is not None else None
        node_id = str(cls.hidden.unique_id) if cls.hidden.unique_id is not None else None
        text = png_text(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        saved: list[SavedObject] = []
        previews: list[dict[str, str]] = []
        batch = images.cpu().numpy()
        for index, image in enumerate(batch):
            png = encode_png(to_uint8(image), text=text)
            height, width = int(image.shape[0]), int(image.shape[1])
            saved.append(
                svc.saver.save(
                    png,
                    template=key_template,
                    prefix=filename_prefix,
                    prompt_id=prompt_id,
                    node_id=node_id,
                    batch=index,
                    width=width,
                    height=height,
                    bucket=bucket or None,
                    url_mode=url_mode,
                )
            )
            previews.append(_preview(png))
        urls = "\n".join(s.url or "" for s in saved)
        keys = "\n".join(s.uri for s in saved)
        ui = {"images": previews, "podkit_uploads": [s.to_wire() for s in saved]}
        return io.NodeOutput(urls, keys, ui=ui)
