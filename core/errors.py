"""PodKit's exception tree; every error knows the HTTP status a route answers with.

::

    PodKitError (500)
    ├── InvalidRequest (400, ValueError)
    │   └── UnsupportedMediaType (415)
    │   └── PayloadTooLarge (413)
    ├── Unauthorized (401)
    ├── Forbidden (403, PermissionError)
    ├── NotFound (404, LookupError)
    │   └── ObjectNotFound (404, FileNotFoundError)
    ├── Conflict (409)
    ├── CorruptFile (422)
    ├── ConfigError (500)
    ├── StorageError (502)
    │   ├── StoreUnavailable (503, ConnectionError)
    │   ├── AccessDenied (502, PermissionError)   credentials or bucket policy refused us
    │   └── TransferFailed (502)
    │       └── ObjectChanged (502)   the object was replaced while we read it
    └── InsufficientStorage (507, OSError)
"""

from __future__ import annotations

from typing import ClassVar


class PodKitError(Exception):
    """Base of every error PodKit raises on purpose."""

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    #: Whether the same operation may succeed if tried again later (``core.retry.retryable``).
    retryable: ClassVar[bool] = False

    def to_wire(self) -> dict[str, object]:
        """The JSON body a route answers with (never a traceback)."""
        return {"error": self.code, "message": str(self)}


class InvalidRequest(PodKitError, ValueError):
    http_status = 400
    code = "invalid_request"


class UnsupportedMediaType(InvalidRequest):
    http_status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    code = "payload_too_large"


class Unauthorized(PodKitError):
    http_status = 401
    code = "unauthorized"


class Forbidden(PodKitError, PermissionError):
    http_status = 403
    code = "forbidden"


class NotFound(PodKitError, LookupError):
    http_status = 404
    code = "not_found"


class ObjectNotFound(NotFound, FileNotFoundError):
    code = "object_not_found"


class Conflict(PodKitError):
    http_status = 409
    code = "conflict"


class CorruptFile(PodKitError):
    http_status = 422
    code = "corrupt_file"


class ConfigError(PodKitError):
    http_status = 500
    code = "config_error"


class StorageError(PodKitError):
    http_status = 502
    code = "storage_error"
    retryable = True


class StoreUnavailable(StorageError, ConnectionError):
    http_status = 503
    code = "store_unavailable"


class AccessDenied(StorageError, PermissionError):
    code = "access_denied"
    retryable = False


class TransferFailed(StorageError):
    code = "transfer_failed"


class ObjectChanged(TransferFailed):
    code = "object_changed"


class InsufficientStorage(PodKitError, OSError):
    http_status = 507
    code = "insufficient_storage"
    retryable = True
