"""PodKit's configuration: one frozen ``Settings`` built from the environment, once.

No other module reads ``os.environ``. Secrets are kept in fields with ``repr=False`` and never
leave through :meth:`Settings.public_view` (the only shape routes may expose).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError, InvalidRequest
from .objects import ObjectRef, parse_object_uri
from .pod_settings import ENV_DOCS as POD_ENV_DOCS
from .pod_settings import PodSettings
from .sizes import parse_size
from .trainer_env import GPU_POLICIES, trainer_passthrough
from .url_policy import parse_allow_hosts

#: Network-volume mount points, in order of preference (serverless workers, then pods).
VOLUME_CANDIDATES: tuple[Path, ...] = (Path("/runpod-volume"), Path("/workspace"))

#: Every environment variable PodKit reads, with a one-line meaning (README and ``status`` use it).
ENV_VARS: Mapping[str, str] = {
    "R2_ACCOUNT_ID": "Cloudflare account id; the S3 endpoint becomes https://<id>.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "access key for R2/S3 (else boto3's default credential chain)",
    "R2_SECRET_ACCESS_KEY": "secret key for R2/S3 (else boto3's default credential chain)",
    "R2_LORA_BUCKET": "bucket holding LoRAs (default 'loras')",
    "R2_OUTPUT_BUCKET": "bucket receiving generated images (default 'outputs')",
    "HF_TOKEN": "Hugging Face token for gated repos",
    "CIVITAI_TOKEN": "CivitAI API token",
    "PODKIT_S3_ENDPOINT": "S3 endpoint URL for non-R2 stores (MinIO, Ceph RGW, AWS)",
    "PODKIT_S3_REGION": "S3 region (default 'auto', which R2 expects)",
    "PODKIT_STORE": "'s3' or 'local'; default: s3 when an endpoint or R2 account is set, else local",
    "PODKIT_LOCAL_STORE_DIR": "root of the embedded local object store (one folder per bucket)",
    "PODKIT_PUBLIC_BASE_URL": "public base URL of the output bucket (custom domain); else presigned URLs",
    "PODKIT_PRESIGN_TTL": "lifetime of presigned URLs in seconds (default 86400, at most 604800)",
    "PODKIT_CACHE_DIR": "shared content-addressed model cache (default: on the network volume)",
    "PODKIT_CACHE_MAX_BYTES": "size cap of the model cache, e.g. 50G (default 100G)",
    "PODKIT_STATE_DIR": "per-instance state: database and upload spool",
    "PODKIT_VOLUME_DIR": "network volume root; overrides the /runpod-volume, /workspace probe ('' = none)",
    "PODKIT_INSTANCE_ID": "name of this instance's state folder (default: pod id or host name, plus port)",
    "PODKIT_API_TOKEN": "when set, mutating PodKit routes require 'Authorization: Bearer <token>'",
    "PODKIT_LORA_RAM_CACHE": "bytes of LoRA state dicts kept in RAM (default 2G)",
    "PODKIT_ETAG_TTL": "seconds a remote ETag is trusted before another HEAD (default 10)",
    "PODKIT_MULTIPART_THRESHOLD": "uploads/downloads above this size use parallel parts (default 64M)",
    "PODKIT_HF_ENDPOINT": "Hugging Face Hub endpoint for model downloads (default https://huggingface.co)",
    "PODKIT_CIVITAI_BASE_URL": "CivitAI site/API base URL (default https://civitai.com)",
    "PODKIT_URL_ALLOW_HOSTS": "comma list of hosts, addresses or CIDR networks downloads may reach even "
    "when private or link-local (no '*')",
    "PODKIT_URL_ALLOW_PRIVATE": "1 lets downloads reach private and loopback addresses (default 0; "
    "link-local/metadata stay refused)",
    "PODKIT_MODELS_DIR": "where downloads are placed, one ComfyUI model folder per type (default "
    "<volume>/podkit/models, else ComfyUI's models folder)",
    "PODKIT_DOWNLOAD_FILES": "files downloaded at once (default 3)",
    "PODKIT_DOWNLOAD_CONNECTIONS": "connections per downloaded file (default 8)",
    "PODKIT_AI_TOOLKIT_DIR": "ai-toolkit checkout used for LoRA training (default <volume>/ai-toolkit "
    "when it holds run.py; unset = training disabled)",
    "PODKIT_AI_TOOLKIT_PYTHON": "ai-toolkit's interpreter (default <dir>/venv/bin/python, "
    "<dir>/.venv/bin/python, else ComfyUI's)",
    "PODKIT_TRAINING_CONCURRENCY": "training jobs holding the GPU at once (default 1; the others wait "
    "in a queue)",
    "PODKIT_TRAINING_GPU_POLICY": "'exclusive' (default: a trainer waits for ComfyUI's queue to drain and "
    "unloads its models) or 'shared' (start at once, ComfyUI keeps its models)",
    "PODKIT_TRAINER_ENV": "comma list of extra environment variables passed to the trainer (R2_*, AWS_*, "
    "PODKIT_* and CIVITAI_* never are)",
    "PODKIT_PRESETS_FILE": "YAML/JSON file overriding sampler presets (default <volume>/podkit/presets.yaml, "
    "else <ComfyUI user dir>/podkit/presets.yaml)",
    "PODKIT_METRICS_RETENTION_DAYS": "days of generation records kept in the state database (default 30)",
    "PODKIT_DECODE_RAM_CACHE": "bytes of decoded images the Cached Tiled VAE Decode keeps in RAM (1G)",
    "PODKIT_DECODE_DISK_CACHE": "1 = also keep decoded images in the model cache on disk (default off; "
    "with the generation cache on, they go there instead)",
    "PODKIT_GENERATION_CACHE": "1/0: share node outputs between pods and restarts through ComfyUI's cache "
    "provider API (ComfyUI 0.33+; default on when a network volume is present)",
    "PODKIT_GENERATION_CACHE_MAX_BYTES": "size cap of the generation cache, e.g. 20G (default 20G)",
    "PODKIT_GENERATION_CACHE_BUCKET_PREFIX": "r2://bucket/prefix (or a prefix in R2_OUTPUT_BUCKET): also "
    "keep generation cache entries there, for pods without the same volume (empty = off)",
    **POD_ENV_DOCS,
}

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_INSTANCE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r} is not an integer") from e
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1 or 0)")


def _base_url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{name}={value!r} is not an http(s) base URL")
    return value.rstrip("/")


def _mirror(env: Mapping[str, str]) -> ObjectRef | None:
    """PODKIT_GENERATION_CACHE_BUCKET_PREFIX as (bucket, prefix without slashes), or None when off.
    A bare prefix lies in the output bucket."""
    text = env.get("PODKIT_GENERATION_CACHE_BUCKET_PREFIX", "").strip().strip("/")
    if not text:
        return None
    try:
        return parse_object_uri(text, _bucket(env, "R2_OUTPUT_BUCKET", "outputs"))
    except InvalidRequest as e:
        raise ConfigError(f"PODKIT_GENERATION_CACHE_BUCKET_PREFIX: {e}") from e


def _bucket(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not _BUCKET_RE.match(value):
        raise ConfigError(f"{name}={value!r} is not a valid bucket name")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything PodKit is configured with. Build it with :meth:`from_env`."""

    store_kind: str  # "s3" or "local"
    lora_bucket: str
    output_bucket: str
    cache_dir: Path
    state_dir: Path
    local_store_dir: Path
    volume_dir: Path | None = None
    s3_endpoint: str | None = None
    s3_region: str = "auto"
    r2_account_id: str | None = None
    public_base_url: str | None = None
    presign_ttl: int = 86400
    cache_max_bytes: int = 100 * 2**30
    lora_ram_cache_bytes: int = 2 * 2**30
    etag_ttl: float = 10.0
    multipart_threshold: int = 64 * 2**20
    instance_id: str = "default"
    hf_endpoint: str = "https://huggingface.co"
    civitai_base_url: str = "https://civitai.com"
    url_allow_hosts: tuple[str, ...] = ()
    url_allow_private: bool = False
    models_dir: Path | None = None
    download_files: int = 3
    download_connections: int = 8
    ai_toolkit_dir: Path | None = None
    ai_toolkit_python: str | None = None
    training_concurrency: int = 1
    training_gpu_policy: str = "exclusive"
    trainer_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    presets_file: Path | None = None
    metrics_retention_days: int = 30
    decode_ram_cache_bytes: int = 2**30
    decode_disk_cache: bool = False
    pod: PodSettings = field(default_factory=PodSettings)
    generation_cache: bool = False
    generation_cache_max_bytes: int = 20 * 2**30
    #: where generation cache entries are mirrored (bucket, key prefix); None = volume only
    generation_cache_mirror: ObjectRef | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)
    civitai_token: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        comfy_models_dir: Path | None = None,
        comfy_user_dir: Path | None = None,
        port: int | None = None,
        volume_candidates: Sequence[Path] = VOLUME_CANDIDATES,
    ) -> Settings:
        """Read PodKit's settings from ``env`` (normally ``os.environ``).

        Args:
            env: the environment mapping.
            comfy_models_dir: ComfyUI's models folder, the cache's home when there is no volume.
            comfy_user_dir: ComfyUI's user folder, the state's home when there is no volume.
            port: the server port, part of the default instance id so two ComfyUI processes on one
                host keep separate state.
            volume_candidates: where to look for a network volume.

        Raises:
            ConfigError: a variable has an invalid value; the message names it.
        """

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        volume: Path | None
        if "PODKIT_VOLUME_DIR" in env:
            raw_volume = env["PODKIT_VOLUME_DIR"].strip()
            volume = Path(raw_volume) if raw_volume else None
        else:
            volume = next((p for p in volume_candidates if p.is_dir()), None)

        instance = get("PODKIT_INSTANCE_ID") or get("RUNPOD_POD_ID") or socket.gethostname() or "default"
        if port is not None and not get("PODKIT_INSTANCE_ID"):
            instance = f"{instance}-{port}"
        instance = _INSTANCE_RE.sub("_", instance)[:64]

        if volume is not None:
            base = volume / "podkit"
            default_cache, default_state = base / "cache", base / "state" / instance
            default_store = base / "store"
            default_models = base / "models"
            default_presets = base / "presets.yaml"
        else:
            home = Path.home() / ".cache" / "podkit"
            default_cache = (comfy_models_dir / "podkit-cache") if comfy_models_dir else home / "cache"
            user_base = (comfy_user_dir / "podkit") if comfy_user_dir else home
            default_state = user_base / "state" / instance
            default_store = user_base / "store"
            default_models = comfy_models_dir or home / "models"
            default_presets = user_base / "presets.yaml"

        account = get("R2_ACCOUNT_ID")
        endpoint = get("PODKIT_S3_ENDPOINT")
        if endpoint is None and account is not None:
            if not re.fullmatch(r"[A-Za-z0-9]{1,64}", account):
                raise ConfigError("R2_ACCOUNT_ID must be alphanumeric")
            endpoint = f"https://{account}.r2.cloudflarestorage.com"
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"PODKIT_S3_ENDPOINT={endpoint!r} is not an http(s) URL")

        store_kind = (get("PODKIT_STORE") or ("s3" if endpoint else "local")).lower()
        if store_kind not in ("s3", "local"):
            raise ConfigError(f"PODKIT_STORE={store_kind!r} must be 's3' or 'local'")

        public = get("PODKIT_PUBLIC_BASE_URL")
        if public is not None and urlsplit(public).scheme not in ("http", "https"):
            raise ConfigError(f"PODKIT_PUBLIC_BASE_URL={public!r} is not an http(s) URL")

        cache_max = parse_size(get("PODKIT_CACHE_MAX_BYTES") or "100G", name="PODKIT_CACHE_MAX_BYTES")
        ram = parse_size(get("PODKIT_LORA_RAM_CACHE") or "2G", name="PODKIT_LORA_RAM_CACHE")
        threshold = parse_size(get("PODKIT_MULTIPART_THRESHOLD") or "64M", name="PODKIT_MULTIPART_THRESHOLD")
        if threshold < 5 * 2**20:
            raise ConfigError("PODKIT_MULTIPART_THRESHOLD must be at least 5M (the S3 minimum part size)")
        try:
            etag_ttl = float(get("PODKIT_ETAG_TTL") or "10")
        except ValueError as e:
            raise ConfigError("PODKIT_ETAG_TTL must be a number of seconds") from e
        if not 0 <= etag_ttl <= 3600:
            raise ConfigError("PODKIT_ETAG_TTL must be between 0 and 3600 seconds")

        try:
            allow_hosts = parse_allow_hosts(env.get("PODKIT_URL_ALLOW_HOSTS", ""))
        except InvalidRequest as e:
            raise ConfigError(f"PODKIT_URL_ALLOW_HOSTS: {e}") from e

        ai_toolkit = get("PODKIT_AI_TOOLKIT_DIR")
        if ai_toolkit is None and volume is not None and (volume / "ai-toolkit" / "run.py").is_file():
            ai_toolkit = str(volume / "ai-toolkit")
        gpu_policy = (get("PODKIT_TRAINING_GPU_POLICY") or "exclusive").lower()
        if gpu_policy not in GPU_POLICIES:
            raise ConfigError(
                f"PODKIT_TRAINING_GPU_POLICY={gpu_policy!r} must be one of {', '.join(GPU_POLICIES)}"
            )
        extra_trainer_env = (get("PODKIT_TRAINER_ENV") or "").split(",")

        return cls(
            store_kind=store_kind,
            lora_bucket=_bucket(env, "R2_LORA_BUCKET", "loras"),
            output_bucket=_bucket(env, "R2_OUTPUT_BUCKET", "outputs"),
            cache_dir=Path(get("PODKIT_CACHE_DIR") or default_cache),
            state_dir=Path(get("PODKIT_STATE_DIR") or default_state),
            local_store_dir=Path(get("PODKIT_LOCAL_STORE_DIR") or default_store),
            volume_dir=volume,
            s3_endpoint=endpoint,
            s3_region=get("PODKIT_S3_REGION") or "auto",
            r2_account_id=account,
            public_base_url=public.rstrip("/") if public else None,
            presign_ttl=_int(env, "PODKIT_PRESIGN_TTL", 86400, 60, 604800),
            cache_max_bytes=cache_max,
            lora_ram_cache_bytes=ram,
            etag_ttl=etag_ttl,
            multipart_threshold=threshold,
            instance_id=instance,
            hf_endpoint=_base_url(env, "PODKIT_HF_ENDPOINT", "https://huggingface.co"),
            civitai_base_url=_base_url(env, "PODKIT_CIVITAI_BASE_URL", "https://civitai.com"),
            url_allow_hosts=allow_hosts,
            url_allow_private=_bool(env, "PODKIT_URL_ALLOW_PRIVATE", False),
            models_dir=Path(get("PODKIT_MODELS_DIR") or default_models),
            download_files=_int(env, "PODKIT_DOWNLOAD_FILES", 3, 1, 32),
            download_connections=_int(env, "PODKIT_DOWNLOAD_CONNECTIONS", 8, 1, 64),
            ai_toolkit_dir=Path(ai_toolkit) if ai_toolkit else None,
            ai_toolkit_python=get("PODKIT_AI_TOOLKIT_PYTHON"),
            training_concurrency=_int(env, "PODKIT_TRAINING_CONCURRENCY", 1, 1, 16),
            training_gpu_policy=gpu_policy,
            trainer_env=trainer_passthrough(env, extra_trainer_env),
            presets_file=Path(get("PODKIT_PRESETS_FILE") or default_presets),
            metrics_retention_days=_int(env, "PODKIT_METRICS_RETENTION_DAYS", 30, 1, 3650),
            decode_ram_cache_bytes=parse_size(
                get("PODKIT_DECODE_RAM_CACHE") or "1G", name="PODKIT_DECODE_RAM_CACHE"
            ),
            decode_disk_cache=_bool(env, "PODKIT_DECODE_DISK_CACHE", False),
            pod=PodSettings.from_env(env),
            generation_cache=_bool(env, "PODKIT_GENERATION_CACHE", volume is not None),
            generation_cache_max_bytes=parse_size(
                get("PODKIT_GENERATION_CACHE_MAX_BYTES") or "20G", name="PODKIT_GENERATION_CACHE_MAX_BYTES"
            ),
            generation_cache_mirror=_mirror(env),
            access_key_id=get("R2_ACCESS_KEY_ID"),
            secret_access_key=get("R2_SECRET_ACCESS_KEY"),
            hf_token=get("HF_TOKEN"),
            civitai_token=get("CIVITAI_TOKEN"),
            api_token=get("PODKIT_API_TOKEN"),
        )

    def secrets(self) -> tuple[str, ...]:
        """Every secret value configured (for redaction and for tests that grep for leaks)."""
        values = (
            self.access_key_id,
            self.secret_access_key,
            self.hf_token,
            self.civitai_token,
            self.api_token,
            self.pod.runpod_api_key,
        )
        return tuple(v for v in values if v)

    def public_view(self) -> dict[str, object]:
        """The settings a route may show: no secrets, the endpoint reduced to its host."""
        return {
            "store": self.store_kind,
            "endpoint_host": urlsplit(self.s3_endpoint).hostname if self.s3_endpoint else None,
            "lora_bucket": self.lora_bucket,
            "output_bucket": self.output_bucket,
            "public_base_url": self.public_base_url,
            "presign_ttl": self.presign_ttl,
            "cache_dir": str(self.cache_dir),
            "cache_max_bytes": self.cache_max_bytes,
            "state_dir": str(self.state_dir),
            "volume_dir": str(self.volume_dir) if self.volume_dir else None,
            "instance_id": self.instance_id,
            "ai_toolkit_dir": str(self.ai_toolkit_dir) if self.ai_toolkit_dir else None,
            "training_concurrency": self.training_concurrency,
            "training_gpu_policy": self.training_gpu_policy,
            "hf_endpoint": self.hf_endpoint,
            "civitai_base_url": self.civitai_base_url,
            "url_allow_hosts": list(self.url_allow_hosts),
            "url_allow_private": self.url_allow_private,
            "models_dir": str(self.models_dir) if self.models_dir else None,
            "credentials": "configured" if self.access_key_id else "default chain",
            "hf_token": self.hf_token is not None,
            "civitai_token": self.civitai_token is not None,
            "api_token_required": self.api_token is not None,
            "pod": self.pod.public_view(),
            "generation_cache": self.generation_cache,
            "generation_cache_max_bytes": self.generation_cache_max_bytes,
            "generation_cache_mirror": (
                self.generation_cache_mirror.uri if self.generation_cache_mirror else None
            ),
        }
