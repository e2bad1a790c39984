"""Where workflow templates live: a folder on the volume, then ``templates/`` in the LoRA bucket.

``<templates dir>/<name>.json`` (default ``<volume>/podkit/templates``, ``PODKIT_TEMPLATES_DIR``)
wins over ``r2://<lora bucket>/templates/<name>.json``; a bucket template is read once per ETag.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..core.errors import ObjectNotFound, PodKitError
from ..core.objects import ObjectRef, ObjectStore
from ..core.templates import Template, UnknownTemplate, check_name, parse_template

PREFIX = "templates/"


class TemplateLibrary:
    def __init__(self, folder: Path | None, store: ObjectStore, bucket: str) -> None:
        self.folder = folder
        self.store = store
        self.bucket = bucket
        self._cache: dict[str, tuple[str, Template]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Template:
        check_name(name)
        if self.folder is not None:
            path = self.folder / f"{name}.json"
            if path.is_file():
                return parse_template(name, path.read_bytes())
        ref = ObjectRef(self.bucket, f"{PREFIX}{name}.json")
        try:
            meta = self.store.head(ref)
        except ObjectNotFound:
            raise UnknownTemplate(
                f"unknown template {name!r}; available: {', '.join(self.names()) or '(none)'}"
            ) from None
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] == meta.etag:
            return cached[1]
        template = parse_template(name, self.store.get_bytes(ref))
        with self._lock:
            self._cache[name] = (meta.etag, template)
        return template

    def names(self) -> list[str]:
        names: set[str] = set()
        if self.folder is not None and self.folder.is_dir():
            names.update(p.stem for p in self.folder.glob("*.json"))
        try:
            for meta in self.store.list(self.bucket, prefix=PREFIX):
                key = meta.ref.key[len(PREFIX) :]
                if key.endswith(".json") and "/" not in key:
                    names.add(key[: -len(".json")])
        except PodKitError:  # the bucket is down: the folder's names still help
            pass
        return sorted(names)
