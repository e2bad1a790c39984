"""The composition root: builds every PodKit service once from ``Settings.from_env``.

Nodes and routes get their services from :func:`get_services`; tests and the standalone control
plane build their own with :func:`build_services`. This is the only module that reads
``os.environ``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .backends.downloads import DownloadService
from .backends.gencache_store import BucketMirror, GenerationStore
from .backends.idle_watch import ActivityProbe, IdleWatch, command_runner, runpod_stopper
from .backends.local_store import LocalStore
from .backends.monitor import MetricsStore, Monitor
from .backends.pod_health import HealthChecker
from .backends.state_db import SqliteOutboxRepo, StateDB
from .backends.training_jobs import TrainingService, build_training_service
from .core.decode_cache import DecodeCache
from .core.events import Notifier, NullNotifier
from .core.gencache import GenerationStats
from .core.host import STANDALONE, HostInfo
from .core.loras import LoraLibrary
from .core.lru import ByteLRU
from .core.model_cache import ModelCache
from .core.objects import ObjectStore
from .core.outbox import Backoff, Outbox
from .core.presets import PresetBook
from .core.saving import OutputSaver
from .core.settings import Settings

logger = logging.getLogger(__name__)


class SwitchableNotifier:
    """A notifier whose target is set once the host (ComfyUI or standalone) is known."""

    def __init__(self, target: Notifier | None = None) -> None:
        self.target: Notifier = target or NullNotifier()

    def emit(self, event: str, data: Mapping[str, object]) -> None:
        try:
            self.target.emit(event, data)
        except Exception:  # an event must never break the work that produced it
            logger.debug("event %s could not be sent", event, exc_info=True)


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    cache: ModelCache
    db: StateDB
    outbox: Outbox
    loras: LoraLibrary
    saver: OutputSaver
    notifier: SwitchableNotifier
    lora_ram: ByteLRU[object]
    version: str = __version__
    training: TrainingService | None = None
    downloads: DownloadService | None = None
    monitor: Monitor | None = None
    presets: PresetBook = field(default_factory=lambda: PresetBook(None))
    decode_cache: DecodeCache[object] = field(default_factory=lambda: DecodeCache(2**30))
    started_at: float = field(default_factory=time.time)
    #: what PodKit runs inside (set when it attaches to ComfyUI; standalone otherwise)
    host: HostInfo = STANDALONE
    generation: GenerationStore | None = None
    activity: ActivityProbe | None = None
    idle: IdleWatch | None = None
    health: HealthChecker | None = None

    def set_queue_length(self, queue_length: Callable[[], int]) -> None:
        """The host's prompt queue, for the idle watch and the health check (inside ComfyUI)."""
        if self.activity is not None:
            self.activity.queue_length = queue_length
        if self.health is not None:
            self.health.queue_length = queue_length

    def start(self) -> None:
        """Start background work: outbox workers, a first LoRA listing, temp-file cleanup."""
        self.outbox.start()
        if self.downloads is not None:
            self.downloads.start()
        if self.monitor is not None:
            self.monitor.start()
        self.cache.clean_temp_files()
        threading.Thread(target=self._first_listing, name="podkit-lora-listing", daemon=True).start()
        if self.idle is not None:
            self.idle.start()
        if self.training is not None:
            self.training.start()  # reconciles the jobs an earlier process left, then dispatches

    def _first_listing(self) -> None:
        listing = self.loras.refresh_listing()
        if listing.error:
            logger.warning("PodKit: cannot list LoRA bucket %s: %s", self.settings.lora_bucket, listing.error)

    def close(self) -> None:
        if self.idle is not None:
            self.idle.close()
        if self.training is not None:
            self.training.close()  # detaches: running trainers go on and are re-attached next start
        self.outbox.stop()
        if self.downloads is not None:
            self.downloads.close()
        closer = getattr(self.store, "close", None)
        if callable(closer):
            closer()
        self.db.close()


def make_store(settings: Settings) -> ObjectStore:
    """The object store the settings ask for."""
    if settings.store_kind == "s3":
        from .backends.s3_store import S3Store

        return S3Store.from_settings(settings)
    store = LocalStore(settings.local_store_dir)
    for bucket in {settings.lora_bucket, settings.output_bucket}:
        store.ensure_bucket(bucket)
    return store


def build_services(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    store: ObjectStore | None = None,
    backoff: Backoff | None = None,
) -> Services:
    """Build (but do not start) every service for ``settings``."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    switch = SwitchableNotifier(notifier)
    store = store or make_store(settings)
    cache = ModelCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
    db = StateDB(settings.state_dir / "podkit.sqlite3")
    repo = SqliteOutboxRepo(db)
    outbox = Outbox(settings.state_dir / "spool", repo, store, notifier=switch, backoff=backoff)
    loras = LoraLibrary(store, cache, settings.lora_bucket, etag_ttl=settings.etag_ttl)
    saver = OutputSaver(
        outbox,
        store,
        bucket=settings.output_bucket,
        public_base_url=settings.public_base_url,
        presign_ttl=settings.presign_ttl,
    )
    lora_ram: ByteLRU[object] = ByteLRU(settings.lora_ram_cache_bytes)
    downloads = DownloadService(settings, db, store, notifier=switch)
    training = build_training_service(
        settings, db, store, notifier=switch, on_lora_uploaded=loras.refresh_listing, downloads=downloads
    )
    monitor = Monitor(MetricsStore(db), switch, retention_days=settings.metrics_retention_days)
    pod = settings.pod
    probe = ActivityProbe(outbox, downloads, training)
    action = (
        runpod_stopper(pod.runpod_api_key, pod.pod_id)
        if pod.idle.action == "stop"
        else command_runner(pod.idle.command)
    )
    health = HealthChecker(
        pod,
        store=store,
        bucket=settings.output_bucket,
        outbox=outbox,
        state_dir=settings.state_dir,
        volume_dir=settings.volume_dir,
        cache_dir=settings.cache_dir,
    )
    return Services(
        settings,
        store,
        cache,
        db,
        outbox,
        loras,
        saver,
        switch,
        lora_ram,
        monitor=monitor,
        presets=PresetBook(settings.presets_file),
        decode_cache=DecodeCache(
            settings.decode_ram_cache_bytes, cache if settings.decode_disk_cache else None
        ),
        downloads=downloads,
        training=training,
        generation=build_generation_store(settings, store),
        activity=probe,
        idle=IdleWatch(pod.idle, probe, action, notifier=switch),
        health=health,
    )


def build_generation_store(settings: Settings, store: ObjectStore) -> GenerationStore | None:
    """The generation cache on the volume, mirrored under a bucket prefix when one is configured."""
    if not settings.generation_cache:
        return None
    cache = ModelCache(settings.cache_dir / "generation", max_bytes=settings.generation_cache_max_bytes)
    root = settings.generation_cache_mirror
    mirror = BucketMirror(store, root, GenerationStats()) if root is not None else None
    return GenerationStore(cache, mirror=mirror)


_lock = threading.Lock()
_services: Services | None = None


def get_services(
    *, comfy_models_dir: Path | None = None, comfy_user_dir: Path | None = None, port: int | None = None
) -> Services:
    """The process-wide services, built and started on first use from ``os.environ``."""
    global _services
    with _lock:
        if _services is None:
            settings = Settings.from_env(
                os.environ, comfy_models_dir=comfy_models_dir, comfy_user_dir=comfy_user_dir, port=port
            )
            services = build_services(settings)
            services.start()
            if settings.api_token is None:
                logger.warning(
                    "PodKit: PODKIT_API_TOKEN is not set; PodKit's mutating routes are open to anyone "
                    "who can reach this server"
                )
            logger.info(
                "PodKit %s: store=%s cache=%s state=%s",
                __version__,
                settings.store_kind,
                settings.cache_dir,
                settings.state_dir,
            )
            _services = services
        return _services


def set_services(services: Services | None) -> None:
    """Install ``services`` as the process-wide instance (standalone server, tests)."""
    global _services
    with _lock:
        _services = services
