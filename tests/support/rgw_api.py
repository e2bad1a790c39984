"""What a throw-away S3 test server is to its users: ``S3Server`` (endpoint and credentials), the
``S3ServerHandle`` protocol both servers follow, and whether each can run on this host.
Import these from ``rgw``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Protocol

REGION = "us-east-1"
TEST_UID = "podkit-test"

CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


@dataclass(frozen=True)
class S3Server:
    """Connection details of a running S3-compatible test server."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # "radosgw" or "moto"

    def boto3_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def store_kwargs(self) -> dict[str, str]:
        """Keyword arguments for PodKit's ``S3Store(**kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }


class S3ServerHandle(Protocol):
    """Common interface of ``RadosGateway`` and ``MotoServer``."""

    def start(self) -> S3Server: ...

    def stop_gateway(self) -> None: ...

    def start_gateway(self) -> None: ...

    def close(self) -> None: ...


def radosgw_available() -> str | None:
    """Return ``None`` when a radosgw test cluster can be started, else the reason why not."""
    if not sys.platform.startswith("linux"):
        return f"radosgw test cluster needs Linux (running on {sys.platform})"
    missing = [b for b in CEPH_BINARIES if shutil.which(b) is None]
    if missing:
        return f"radosgw not installed (missing: {', '.join(missing)})"
    return None


def moto_available(python: str | None = None) -> str | None:
    """Return ``None`` when ``python -m moto.server`` can be run, else the reason why not."""
    exe = python or sys.executable
    try:
        proc = subprocess.run(
            [exe, "-c", "import moto.server, flask"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"moto not usable with {exe}: {exc}"
    if proc.returncode != 0:
        return f"moto[server] not installed for {exe}"
    return None
