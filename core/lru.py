"""A thread-safe, byte-bounded LRU mapping for in-RAM caches (LoRA state dicts, decoded images)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class LRUStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class ByteLRU(Generic[V]):
    """Keeps values while their total size stays under ``max_bytes``; evicts least recently used.

    A single value larger than ``max_bytes`` is not kept at all.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, (_, evicted_size) = self._data.popitem(last=False)
                self._bytes -= evicted_size
                self._evictions += 1

    def get_or_create(self, key: Hashable, create: Callable[[], tuple[V, int]]) -> V:
        """Return the cached value or build it with ``create() -> (value, size)`` and keep it."""
        value = self.get(key)
        if value is not None:
            return value
        value, size = create()
        self.put(key, value, size)
        return value

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> LRUStats:
        with self._lock:
            return LRUStats(
                len(self._data), self._bytes, self.max_bytes, self._hits, self._misses, self._evictions
            )
