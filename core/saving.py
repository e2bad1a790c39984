"""Saving generated images: name the object, spool it to the outbox, and build its URL.

The node encodes the PNG (``backends/png.py``) and hands the bytes here; nothing in this module
waits for the store, so the graph is never blocked by an upload.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from .errors import InvalidRequest, PodKitError
from .naming import KeyContext, check_template, render_key
from .objects import ObjectRef, ObjectStore, validate_bucket
from .outbox import OutboxQueue

logger = logging.getLogger(__name__)

URL_MODES = ("auto", "public", "presigned", "none")


@dataclass(frozen=True)
class SavedObject:
    bucket: str
    key: str
    url: str | None
    outbox_id: str
    size: int
    sha256: str
    status: str

    @property
    def uri(self) -> str:
        return f"r2://{self.bucket}/{self.key}"

    def to_wire(self) -> dict[str, object]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "uri": self.uri,
            "url": self.url,
            "outbox_id": self.outbox_id,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status,
        }


class OutputSaver:
    """Names, spools and addresses output objects.

    Args:
        outbox: the durable upload outbox.
        store: the object store (for presigned URLs).
        bucket: default output bucket.
        public_base_url: custom-domain URL of the output bucket, if public.
        presign_ttl: lifetime of presigned URLs.
    """

    def __init__(
        self,
        outbox: OutboxQueue,
        store: ObjectStore,
        *,
        bucket: str,
        public_base_url: str | None,
        presign_ttl: int,
    ) -> None:
        self.outbox = outbox
        self.store = store
        self.bucket = bucket
        self.public_base_url = public_base_url
        self.presign_ttl = presign_ttl

    def url_for(self, ref: ObjectRef, mode: str = "auto") -> str | None:
        """The URL a client fetches ``ref`` from, per ``mode``; never raises for store errors."""
        if mode not in URL_MODES:
            raise InvalidRequest(f"url_mode must be one of {', '.join(URL_MODES)}")
        if mode == "none":
            return None
        if mode == "public" or (mode == "auto" and self.public_base_url):
            if not self.public_base_url:
                raise InvalidRequest("url_mode 'public' needs PODKIT_PUBLIC_BASE_URL")
            if ref.bucket != self.bucket:
                raise InvalidRequest("public URLs exist only for the configured output bucket")
            return f"{self.public_base_url}/{quote(ref.key)}"
        try:
            return self.store.url_for(ref, ttl=self.presign_ttl)
        except PodKitError as e:
            logger.warning("cannot build a URL for %s: %s", ref, e)
            return None

    def save(
        self,
        png: bytes,
        *,
        template: str,
        prefix: str,
        prompt_id: str | None,
        node_id: str | None,
        batch: int,
        width: int,
        height: int,
        bucket: str | None = None,
        url_mode: str = "auto",
        timestamp: float | None = None,
    ) -> SavedObject:
        """Spool one PNG for upload and return where it will be."""
        check_template(template)
        target = validate_bucket(bucket) if bucket else self.bucket
        sha = hashlib.sha256(png).hexdigest()
        key = render_key(
            template,
            KeyContext(
                prefix=prefix,
                prompt_id=prompt_id or "",
                node_id=node_id or "",
                batch=batch,
                sha256=sha,
                width=width,
                height=height,
                timestamp=time.time() if timestamp is None else timestamp,
            ),
        )
        ref = ObjectRef(target, key)
        url = self.url_for(ref, url_mode)
        item = self.outbox.submit(png, ref, content_type="image/png", prompt_id=prompt_id, sha256=sha)
        return SavedObject(target, key, url, item.id, len(png), sha, item.status)
