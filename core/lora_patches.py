"""Parsed LoRA patches per (LoRA, model, text encoder), kept for the next run of the same graph.

Turning a LoRA's state dict into patches for a model (matching its keys against the model's key
map) is most of a warm LoRA load's time, and the result depends only on the LoRA's bytes and on
the model objects. So the last few are kept, keyed on the LoRA's content digest and the *identity*
of the model and text encoder.

Identity is ``id()`` checked through a weak reference: once a model is freed its id may be reused
by a new object, which must never match, and an entry whose model is gone is dropped (its patches
hold the LoRA's tensors) instead of waiting for eviction. The cache never keeps a model alive.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

P = TypeVar("P")

#: Entries kept: one per LoRA node of the graphs in use (patches share the LoRA's tensors, so each
#: entry costs little beyond what the RAM cache of state dicts already holds).
DEFAULT_MAX_ENTRIES = 4

_Key = tuple[str, int, int]


@dataclass(frozen=True)
class LoraPatchStats:
    entries: int
    max_entries: int
    bytes: int  # the LoRA tensors the entries refer to (shared with the state-dict RAM cache)
    hits: int
    misses: int
    evictions: int

    def to_wire(self) -> dict[str, int]:
        return asdict(self)


def _ref(obj: object | None) -> weakref.ref[object] | None:
    """A weak reference to ``obj`` (None for None). Raises TypeError when it cannot have one."""
    return None if obj is None else weakref.ref(obj)


def _same(ref: weakref.ref[object] | None, obj: object | None) -> bool:
    return obj is None if ref is None else ref() is obj


@dataclass(frozen=True)
class _Entry(Generic[P]):
    model: weakref.ref[object] | None  # None: built without a model
    text: weakref.ref[object] | None  # None: built without a text encoder
    patches: P
    size: int

    def matches(self, model: object | None, text: object | None) -> bool:
        return _same(self.model, model) and _same(self.text, text)

    def alive(self) -> bool:
        """Every object it was built for still exists."""
        return all(r() is not None for r in (self.model, self.text) if r is not None)


class LoraPatchCache(Generic[P]):
    """A small, thread-safe LRU of LoRA patches keyed on (LoRA digest, model, text encoder)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[_Key, _Entry[P]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, digest: str, model: object | None, text: object | None) -> P | None:
        """The patches built for exactly these objects, or None."""
        key = (digest, id(model), id(text))
        with self._lock:
            entry = self._data.get(key)
            if entry is None or not entry.matches(model, text):
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return entry.patches

    def put(self, digest: str, model: object | None, text: object | None, patches: P, size: int) -> None:
        """Keep ``patches`` (``size``: bytes of the tensors they refer to).

        Nothing is kept without a model or text encoder to key on, or for objects that cannot be
        weakly referenced (their identity could not be checked later).
        """
        if model is None and text is None:
            return
        try:
            entry = _Entry(_ref(model), _ref(text), patches, size)
        except TypeError:
            return
        key = (digest, id(model), id(text))
        with self._lock:
            self._drop_dead()
            self._data.pop(key, None)
            self._data[key] = entry
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self._evictions += 1

    def get_or_create(
        self,
        digest: str,
        model: object | None,
        text: object | None,
        create: Callable[[], tuple[P, int]],
    ) -> P:
        """The cached patches, or ``create() -> (patches, size)`` built and kept."""
        patches = self.get(digest, model, text)
        if patches is None:
            patches, size = create()
            self.put(digest, model, text, patches, size)
        return patches

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> LoraPatchStats:
        with self._lock:
            self._drop_dead()
            return LoraPatchStats(
                entries=len(self._data),
                max_entries=self.max_entries,
                bytes=sum(e.size for e in self._data.values()),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    def _drop_dead(self) -> None:
        """Forget entries whose model objects were freed (called with the lock held)."""
        for key in [k for k, e in self._data.items() if not e.alive()]:
            del self._data[key]
