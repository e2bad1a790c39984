"""Serverless job input and output, as data: what a RunPod job asks of a PodKit worker.

Inference input is drop-in compatible with ``runpod-workers/worker-comfyui``::

    {"workflow": {<API-format graph>}, "images": [{"name": "in.png", "image": "<base64 or data URL>"}]}

plus the short form ``{"template": NAME, "params": {...}}`` (``core/templates.py``) and three
options: ``return_base64`` (also put the bytes of each output in the answer, under a size cap),
``timeout`` (seconds, at most the worker's limit) and ``generation_cache`` (false: compute afresh,
neither reading nor writing the generation cache). Training input is the training route's request.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

INFERENCE_FIELDS = (
    "workflow", "template", "params", "images", "return_base64", "timeout", "generation_cache",
)  # fmt: skip
#: worker-comfyui fields accepted and ignored (never logged: one is a key)
IGNORED_FIELDS = ("comfy_org_api_key",)
IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,199}$")
MAX_IMAGE_BYTES = 64 * 1024**2
OUTPUT_KINDS = ("image", "video", "audio", "file")
EXT_RE = re.compile(r"\.[a-z0-9]{1,8}")


@dataclass(frozen=True)
class InputImage:
    name: str
    data: bytes


@dataclass(frozen=True)
class InferenceRequest:
    workflow: Mapping[str, Any] | None
    template: str | None
    params: Mapping[str, Any]
    images: tuple[InputImage, ...]
    return_base64: bool
    timeout: float
    #: False: the prompt bypasses the generation cache (ComfyUI ``extra_data``)
    generation_cache: bool = True


def parse_inference(raw: Any, *, max_timeout: float) -> InferenceRequest:
    """Validate a job's ``input``; every error names the field."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest("input must be an object with 'workflow' (or 'template' and 'params')")
    unknown = sorted(set(raw) - set(INFERENCE_FIELDS) - set(IGNORED_FIELDS))
    if unknown:
        raise InvalidRequest(
            f"unknown input field(s) {', '.join(unknown)}; valid: {', '.join(INFERENCE_FIELDS)}"
        )
    workflow, template = raw.get("workflow"), raw.get("template")
    if (workflow is None) == (template is None):
        raise InvalidRequest("input needs exactly one of 'workflow' (an API-format graph) or 'template'")
    if workflow is not None:
        check_workflow(workflow)
        if raw.get("params") is not None:
            raise InvalidRequest("'params' go with 'template', not with 'workflow'")
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise InvalidRequest("params must be an object of parameter name → value")
    return_base64 = raw.get("return_base64", False)
    if not isinstance(return_base64, bool):
        raise InvalidRequest("return_base64 must be true or false")
    generation_cache = raw.get("generation_cache", True)
    if not isinstance(generation_cache, bool):
        raise InvalidRequest("generation_cache must be true or false")
    timeout = raw.get("timeout", max_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= max_timeout:
        raise InvalidRequest(f"timeout must be a number of seconds between 1 and {max_timeout:g}")
    return InferenceRequest(
        workflow=workflow,
        template=template if template is None else str(template),
        params=params,
        images=parse_images(raw.get("images")),
        return_base64=return_base64,
        timeout=float(timeout),
        generation_cache=generation_cache,
    )


def check_workflow(workflow: Any) -> Mapping[str, Any]:
    """An API-format graph: node id → {"class_type", "inputs"}. A UI-format workflow is named as such."""
    if not isinstance(workflow, Mapping) or not workflow:
        raise InvalidRequest("workflow must be an API-format graph: an object of node id → node")
    if "nodes" in workflow and "links" in workflow:
        raise InvalidRequest(
            "workflow is in ComfyUI's UI format; export it with 'Export (API)' (API-format graph)"
        )
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise InvalidRequest(f"workflow node {node_id!r} must be an object with a 'class_type'")
        if not isinstance(node.get("inputs", {}), Mapping):
            raise InvalidRequest(f"workflow node {node_id!r}: 'inputs' must be an object")
    return workflow


def parse_images(raw: Any) -> tuple[InputImage, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("images must be a list of {name, image}")
    out: list[InputImage] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"images[{i}]"
        if not isinstance(entry, Mapping) or set(entry) - {"name", "image"}:
            raise InvalidRequest(f"{where} must be an object with 'name' and 'image'")
        name = entry.get("name")
        if not isinstance(name, str) or not IMAGE_NAME_RE.match(name) or ".." in name:
            raise InvalidRequest(f"{where}.name must be a plain file name (no folders), e.g. 'input.png'")
        if name in seen:
            raise InvalidRequest(f"{where}.name {name!r} is used twice")
        seen.add(name)
        out.append(InputImage(name, decode_base64(entry.get("image"), f"{where}.image")))
    return tuple(out)


def decode_base64(value: Any, where: str) -> bytes:
    """Plain base64 or a ``data:<type>;base64,`` URL."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{where} must be base64 text or a data URL")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    if len(text) * 3 // 4 > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"{where} is larger than {MAX_IMAGE_BYTES // 1024**2} MiB")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequest(f"{where} is not valid base64: {e}") from e
    if not data:
        raise InvalidRequest(f"{where} is empty")
    return data


def rebind_images(workflow: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The graph with every string input equal to an uploaded image's name replaced by its per-job
    path (``{"in.png": "podkit-jobs/<job>/in.png"}``), so two jobs' images never collide."""
    out: dict[str, Any] = {}
    for node_id, node in workflow.items():
        inputs = {
            k: names.get(v, v) if isinstance(v, str) else v for k, v in (node.get("inputs") or {}).items()
        }
        out[node_id] = {**node, "inputs": inputs}
    return out


def output_kind(filename: str) -> str:
    content_type = content_type_of(filename)
    major = content_type.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "file"


def content_type_of(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    return {".webp": "image/webp", ".webm": "video/webm", ".flac": "audio/flac"}.get(
        "." + filename.rsplit(".", 1)[-1].lower(), "application/octet-stream"
    )


def output_key(job_id: str, sha256: str, filename: str) -> str:
    """Content-addressed key under the job: a retried job writes the same keys, never new ones."""
    ext = ("." + filename.rsplit(".", 1)[-1].lower()) if "." in filename else ""
    if not EXT_RE.fullmatch(ext):
        ext = ""
    safe_job = re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)[:128] or "job"
    return f"{safe_job}/{sha256}{ext}"
