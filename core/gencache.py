"""The generation cache's rules: what a node output is on disk, how entries are keyed, what counts.

ComfyUI (0.33 and later) asks a cache provider for a node's outputs by the SHA-256 of the node's
cache key (class, inputs, and the same of every ancestor). PodKit answers from content-addressed
entries on the shared volume, so a second pod, or the same pod after a restart, skips work already
done. Entries are scoped by the identity of the model files the prompt uses (their sha256), because
the cache key knows only their names: a pod with another file under the same name never gets this
pod's results.

An entry is a safetensors file: the tensors, plus a JSON *skeleton* of the outputs in its metadata
(lists, tuples, string-keyed dicts, numbers, strings, booleans, None; tensors by name) and the
entry's own digest. Nothing in it can execute code on load (no pickle). Anything else (a MODEL, a
CLIP, a VAE object) is not cached.

Optionally the entries are mirrored under a bucket prefix (same digests, same files), so pods that
do not share the volume share the cache through the bucket.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = 1
METADATA_KEY = "podkit.gencache"
#: the entry's digest, inside the entry: a file copied under another entry's name is refused
DIGEST_KEY = "podkit.gencache.digest"
ENTRY_SUFFIX = ".safetensors"
#: a prompt's ``extra_data`` key: false = the prompt neither reads nor writes the cache
BYPASS_KEY = "podkit_generation_cache"


class Unsupported(ValueError):
    """A value the cache cannot round-trip exactly (it is then not cached)."""


def entry_digest(cache_key_hash: str, scope: str) -> str:
    """The entry's content address: ComfyUI's cache-key hash within a model scope."""
    return hashlib.sha256(f"podkit-gencache:v{FORMAT}\n{scope}\n{cache_key_hash}".encode()).hexdigest()


def decode_digest(decode_key: str) -> str:
    """The entry holding the PodKit decode node's image for a decode-cache key (the decode cache's
    disk tier inside a host with the cache-provider API)."""
    return hashlib.sha256(f"podkit-decode:v{FORMAT}\n{decode_key}".encode()).hexdigest()


def mirror_key(prefix: str, digest: str) -> str:
    """The object key of an entry under a bucket prefix (fanned out like the local blobs)."""
    return f"{prefix.strip('/')}/{digest[:2]}/{digest}{ENTRY_SUFFIX}"


def model_scope(identities: Mapping[str, str]) -> str:
    """One digest for the model files a prompt uses (``"loras/x.safetensors" → sha256``)."""
    lines = "\n".join(f"{name}={digest}" for name, digest in sorted(identities.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


#: ``refs(tensor)``: the (entry digest, tensor name) of another entry holding this very tensor, or None
Refs = Callable[[Any], "tuple[str, str] | None"]
#: ``resolve(digest, name)``: that tensor of that entry; raises :class:`MissingReference` when gone
Resolve = Callable[[str, str], Any]


class MissingReference(LookupError):
    """An entry refers to a tensor of another entry that is not (or no longer) there: a miss."""


def encode(value: Any, is_tensor: Callable[[Any], bool], refs: Refs | None = None) -> tuple[Any, list[Any]]:
    """(JSON skeleton, tensors in order) of ``value``; raises :class:`Unsupported`. A tensor that
    ``refs`` knows is stored as a reference to the entry holding it, not copied."""
    tensors: list[Any] = []
    seen: dict[int, str] = {}

    def enc(obj: Any) -> Any:
        if is_tensor(obj):
            ref = refs(obj) if refs is not None else None
            if ref is not None:
                return {"r": [ref[0], ref[1]]}
            name = seen.get(id(obj))
            if name is None:
                name = seen[id(obj)] = f"t{len(tensors)}"
                tensors.append(obj)
            return {"t": name}
        if obj is None or isinstance(obj, (bool, str)):
            return {"v": obj}
        if isinstance(obj, int):
            return {"v": obj}
        if isinstance(obj, float):
            if not math.isfinite(obj):
                raise Unsupported("a non-finite float")
            return {"v": obj}
        if isinstance(obj, list):
            return {"l": [enc(x) for x in obj]}
        if isinstance(obj, tuple):
            return {"u": [enc(x) for x in obj]}
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise Unsupported("a dict with non-string keys")
            return {"d": {k: enc(v) for k, v in obj.items()}}
        raise Unsupported(f"a {type(obj).__module__}.{type(obj).__qualname__}")

    return enc(value), tensors


def decode(skeleton: Any, tensors: Mapping[str, Any], resolve: Resolve | None = None) -> Any:
    """The value :func:`encode` described (tensors looked up by name, references by ``resolve``)."""
    if not isinstance(skeleton, dict) or len(skeleton) != 1:
        raise ValueError("not a generation cache skeleton")
    ((kind, body),) = skeleton.items()
    if kind == "t":
        return tensors[body]
    if kind == "v":
        return body
    if kind == "r":
        if resolve is None or not (isinstance(body, list) and len(body) == 2):
            raise ValueError("a reference to another entry where none may be")
        return resolve(str(body[0]), str(body[1]))
    if kind == "l":
        return [decode(x, tensors, resolve) for x in body]
    if kind == "u":
        return tuple(decode(x, tensors, resolve) for x in body)
    if kind == "d":
        return {k: decode(v, tensors, resolve) for k, v in body.items()}
    raise ValueError(f"unknown skeleton kind {kind!r}")


def skeleton_text(
    outputs: Any, ui: Any, is_tensor: Callable[[Any], bool], refs: Refs | None = None
) -> tuple[str, list[Any]]:
    """The metadata text and tensors of one entry (outputs and the node's ui)."""
    skeleton, tensors = encode({"outputs": outputs, "ui": ui}, is_tensor, refs)
    return json.dumps({"format": FORMAT, "value": skeleton}, separators=(",", ":")), tensors


def read_skeleton(text: str, tensors: Mapping[str, Any], resolve: Resolve | None = None) -> tuple[Any, Any]:
    data = json.loads(text)
    if data.get("format") != FORMAT:
        raise ValueError(f"generation cache format {data.get('format')!r}, expected {FORMAT}")
    value = decode(data["value"], tensors, resolve)
    return value["outputs"], value["ui"]


@dataclass
class _NodeCounts:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    skipped: int = 0
    bytes_served: int = 0
    bytes_stored: int = 0
    #: microseconds the prompt waited: lookups that hit (reading the entry), lookups that missed,
    #: and taking entries on the prompt thread (the store's only cost to the prompt)
    hit_us: int = 0
    miss_us: int = 0
    store_us: int = 0


#: what the bucket mirror counts: entries served from it, absent there, published to it, refused
#: (a corrupt or foreign object: never served), and errors (bucket unreachable, an upload failed)
BUCKET_COUNTS = ("bucket_hits", "bucket_misses", "bucket_uploads", "bucket_refused", "bucket_errors")


@dataclass
class GenerationStats:
    """Hits, misses, stores and bytes per node type, and the bucket mirror's counts (thread-safe)."""

    nodes: dict[str, _NodeCounts] = field(default_factory=dict)
    errors: int = 0
    bucket: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKET_COUNTS, 0))
    #: prompts the cache was on for, and the microseconds their start took (the model scope: a stat
    #: and a memo read per model file the prompt names)
    prompts: int = 0
    scope_us: int = 0
    #: prompts that asked to bypass the cache (``extra_data``)
    bypassed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, class_type: str, **deltas: int) -> None:
        with self._lock:
            counts = self.nodes.setdefault(class_type or "?", _NodeCounts())
            for name, delta in deltas.items():
                setattr(counts, name, getattr(counts, name) + delta)

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def count_prompt(self, scope_us: int) -> None:
        """A prompt started with the cache on; ``scope_us``: what finding its model scope took."""
        with self._lock:
            self.prompts += 1
            self.scope_us += scope_us

    def count_bypass(self) -> None:
        with self._lock:
            self.bypassed += 1

    def count_bucket(self, name: str) -> None:
        """One more of a bucket count (a name of :data:`BUCKET_COUNTS`)."""
        with self._lock:
            self.bucket[name] += 1

    def totals(self) -> dict[str, int]:
        with self._lock:
            keys = tuple(_NodeCounts.__dataclass_fields__)
            return {k: sum(getattr(c, k) for c in self.nodes.values()) for k in keys} | {
                "errors": self.errors,
                "prompts": self.prompts,
                "scope_us": self.scope_us,
                "bypassed": self.bypassed,
                **self.bucket,
            }

    def per_node(self) -> dict[str, dict[str, int]]:
        """Node class → its counts (hits, misses, stores, skipped, bytes, microseconds)."""
        with self._lock:
            return {name: vars(c).copy() for name, c in sorted(self.nodes.items())}

    def to_wire(self) -> dict[str, object]:
        return {"totals": self.totals(), "nodes": self.per_node()}
