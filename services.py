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
from typing import Any

from . import __version__
from .backends.decode_tiers import model_cache_tier
from .backends.gencache_mirror import BucketMirror
from .backends.gencache_store import GenerationStore
from .backends.idle_watch import ActivityProbe, IdleWatch, command_runner, runpod_stopper
from .backends.local_store import LocalStore
from .backends.monitor import MetricsStore, Monitor
from .backends.pod_health import HealthChecker
from .backends.state_db import StateDB
from .backends.trainer import AiToolkitBackend
from .core.decode_cache import DecodeCache
from .core.events import Notifier, NullNotifier
from .core.gencache import GenerationStats
from .core.host import STANDALONE, HostInfo
from .core.lora_patches import DEFAULT_MAX_ENTRIES, LoraPatchCache
from .core.loras import LoraLibrary
from .core.lru import ByteLRU
from .core.model_cache import ModelCache
from .core.objects import ObjectStore
from .core.presets import PresetBook
from .core.retry import Backoff
from .core.saving import OutputSaver
from .core.settings import Settings
from .core.url_policy import UrlPolicy
from .jobs.dataset_intake import DatasetFetcher
from .jobs.downloads import DownloadService
from .jobs.gpu_policy import gpu_policy
from .jobs.outbox import Outbox, sqlite_outbox
from .jobs.training import TrainingOptions, TrainingService

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
    """Every service, each always present: a capability a host lacks (no ai-toolkit, an idle stop
    that is off) is the service's own answer, never a missing field that each caller must check."""

    settings: Settings
    store: ObjectStore
    cache: ModelCache
    db: StateDB
    outbox: Outbox
    loras: LoraLibrary
    saver: OutputSaver
    notifier: SwitchableNotifier
    lora_ram: ByteLRU[object]
    downloads: DownloadService
    training: TrainingService  #: without PODKIT_AI_TOOLKIT_DIR it refuses launches (403)
    monitor: Monitor
    activity: ActivityProbe
    idle: IdleWatch  #: off unless PODKIT_IDLE_MINUTES is set (its policy says so)
    health: HealthChecker
    version: str = __version__
    presets: PresetBook = field(default_factory=lambda: PresetBook(None))
    decode_cache: DecodeCache[object] = field(default_factory=lambda: DecodeCache(2**30))
    #: parsed LoRA patches per (LoRA, model, text encoder), for the LoRA loader nodes
    lora_patches: LoraPatchCache[dict[Any, Any]] = field(default_factory=LoraPatchCache)
    started_at: float = field(default_factory=time.time)
    #: what PodKit runs inside (set when it attaches to ComfyUI; standalone otherwise)
    host: HostInfo = STANDALONE
    #: None when PODKIT_GENERATION_CACHE is off: no store, no folder on the volume (the routes and
    #: gauges report it as off, and the host does not register a cache provider)
    generation: GenerationStore | None = None

    def set_queue_length(self, queue_length: Callable[[], int]) -> None:
        """The host's prompt queue, for the idle watch and the health check (inside ComfyUI)."""
        self.activity.queue_length = queue_length
        self.health.queue_length = queue_length

    def start(self) -> None:
        """Start background work: outbox workers, a first LoRA listing, temp-file cleanup."""
        self.outbox.start()
        self.downloads.start()
        self.monitor.start()
        self.cache.clean_temp_files()
        threading.Thread(target=self._first_listing, name="podkit-lora-listing", daemon=True).start()
        self.idle.start()
        self.training.start()  # reconciles the jobs an earlier process left, then dispatches

    def _first_listing(self) -> None:
        listing = self.loras.refresh_listing()
        if listing.error:
            logger.warning("PodKit: cannot list LoRA bucket %s: %s", self.settings.lora_bucket, listing.error)

    def close(self) -> None:
        self.idle.close()
        self.training.close()  # detaches: running trainers go on and are re-attached next start
        self.outbox.stop()
        self.downloads.close()
        if self.generation is not None:
            self.generation.close()
        closer = getattr(self.store, "close", None)
        if callable(closer):
            closer()
        self.db.close()


def url_policy(settings: Settings) -> UrlPolicy:
    """The outbound URL policy the settings name (``PODKIT_URL_ALLOW_HOSTS``, ``_ALLOW_PRIVATE``)."""
    return UrlPolicy(
        allow_hosts=frozenset(settings.url_allow_hosts), allow_private=settings.url_allow_private
    )


def make_store(settings: Settings) -> ObjectStore:
    """The object store the settings ask for."""
    if settings.store_kind == "s3":
        from .backends.s3_store import S3Store

        return S3Store.from_settings(settings)
    store = LocalStore(settings.local_store_dir)
    for bucket in {settings.lora_bucket, settings.output_bucket}:
        store.ensure_bucket(bucket)
    return store


def hub_dirs(settings: Settings) -> tuple[Path, ...]:
    """Hugging Face caches where a preset base model may already be (volume first)."""
    env = settings.trainer_env
    found: list[Path] = []
    if env.get("HF_HUB_CACHE"):
        found.append(Path(env["HF_HUB_CACHE"]))
    if env.get("HF_HOME"):
        found.append(Path(env["HF_HOME"]) / "hub")
    if settings.volume_dir is not None:
        volume = settings.volume_dir
        found += [volume / "huggingface" / "hub", volume / ".cache" / "huggingface" / "hub"]
    if env.get("HOME"):
        found.append(Path(env["HOME"]) / ".cache" / "huggingface" / "hub")
    return tuple(dict.fromkeys(found))


def training_options(settings: Settings) -> TrainingOptions:
    """How training runs, from the settings (the folders it may read, the trainer's environment)."""
    volume = settings.volume_dir
    return TrainingOptions(
        training_dir=settings.state_dir / "training",
        lora_bucket=settings.lora_bucket,
        roots=tuple(p for p in (volume, settings.models_dir) if p is not None),
        hub_dirs=hub_dirs(settings),
        passthrough_env=settings.trainer_env,
        hf_token=settings.hf_token,
        hf_home=volume / "huggingface" if volume is not None else None,
        concurrency=settings.training_concurrency,
    )


def build_training_service(
    settings: Settings,
    db: StateDB,
    store: ObjectStore,
    outbox: Outbox,
    *,
    notifier: Notifier | None = None,
    on_lora_uploaded: Callable[[], object] | None = None,
    downloads: DatasetFetcher | None = None,
) -> TrainingService:
    """The training service the settings describe (training is disabled without an ai-toolkit dir)."""
    return TrainingService(
        db,
        store,
        AiToolkitBackend(settings.ai_toolkit_dir, settings.ai_toolkit_python),
        training_options(settings),
        outbox=outbox,
        notifier=notifier,
        on_lora_uploaded=on_lora_uploaded,
        downloads=downloads,
        gpu=gpu_policy(settings.training_gpu_policy),
    )


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
    outbox = sqlite_outbox(db, settings.state_dir / "spool", store, notifier=switch, backoff=backoff)
    loras = LoraLibrary(store, cache, settings.lora_bucket, etag_ttl=settings.etag_ttl)
    saver = OutputSaver(
        outbox,
        store,
        bucket=settings.output_bucket,
        public_base_url=settings.public_base_url,
        presign_ttl=settings.presign_ttl,
    )
    lora_ram: ByteLRU[object] = ByteLRU(settings.lora_ram_cache_bytes)
    downloads = DownloadService(settings, db, store, policy=url_policy(settings), notifier=switch)
    training = build_training_service(
        settings,
        db,
        store,
        outbox,
        notifier=switch,
        on_lora_uploaded=loras.refresh_listing,
        downloads=downloads,
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
        downloads=downloads,
        training=training,
        monitor=monitor,
        activity=probe,
        idle=IdleWatch(pod.idle, probe, action, notifier=switch),
        health=health,
        presets=PresetBook(settings.presets_file),
        decode_cache=DecodeCache(
            settings.decode_ram_cache_bytes, model_cache_tier(cache) if settings.decode_disk_cache else None
        ),
        lora_patches=LoraPatchCache(DEFAULT_MAX_ENTRIES),
        generation=build_generation_store(settings, store),
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
