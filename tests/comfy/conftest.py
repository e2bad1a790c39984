"""tests/comfy tier: real ComfyUI servers running PodKit, driven over HTTP.

Every test runs once per installation (its id carries the version: ``[comfy-0.3.64]``): the trees
``scripts/setup`` prepared from ``shared/comfyui`` (the oldest supported and the newest), or the
one checkout ``COMFYUI_PATH`` names (see ``support/comfy_trees.py``). In CI (``CI=true``) a test of
this tier that skips is reported as a failure.

Environment:
    COMFYUI_PATH              one ComfyUI checkout of your own instead of the prepared trees
    COMFYUI_PYTHON            its interpreter; default: <COMFYUI_PATH>/venv/bin/python,
                              <COMFYUI_PATH>/../venv/bin/python, <COMFYUI_PATH>/.venv/bin/python
    PODKIT_TEST_MODELS_CACHE  keep the tiny random models here between sessions (default: a session
                              temp dir; generating them takes ~15 s and ~780 MiB)
    PODKIT_COMFY_START_TIMEOUT  seconds to wait for ComfyUI to answer (default 240)

Fixtures:
    comfy_install          session  ComfyInstall(checkout, python, version, site, frontend), one
                                    parameter per installation
    tiny_models            session  Path of the models dir (checkpoints/, loras/, vae/, manifest.json)
    comfy_server_factory   session  make(env=None, args=(), name="comfy", podkit=True,
                                    extra_model_paths=None, start=True) -> ComfyServer
    comfy_server           session  one shared ComfyServer with default settings
    comfy_client           function ComfyClient of the shared server
    comfy_child_env        session  sanitized_env: the environment a process of the tier gets
    s3                     module   boto3 client on the test S3 server

This file is glue: the server handle (its dirs, ports, logs, environment) is
``support/comfy_server.py``, the tiny models ``support/comfy_models.py``, the reporting (CI's
skip → failure, log tails, the time per installation) ``support/comfy_report.py``. Servers from the
factory live until the session ends unless stopped. Support modules are importable as
``support.comfy_client``, ``support.workflows``, ``support.make_tiny_models`` (this conftest puts
tests/ on sys.path).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support import comfy_report  # noqa: E402
from support.comfy_client import ComfyClient  # noqa: E402
from support.comfy_models import make_tiny_models, models_dir  # noqa: E402
from support.comfy_server import ALL, LIVE, ComfyServer, sanitized_env  # noqa: E402
from support.comfy_trees import ComfyInstall, find_installs  # noqa: E402

# finding ComfyUI (support/comfy_trees.py): every prepared tree, or COMFYUI_PATH's checkout
_FOUND = find_installs()
INSTALLS: list[ComfyInstall] = _FOUND if isinstance(_FOUND, list) else []
SKIP_REASON = _FOUND if isinstance(_FOUND, str) else ""
_FAILED: list[str] = []
_TIER_TIME = comfy_report.TierTimes(INSTALLS)


def _in_tier(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


# --------------------------------------------------------------------------------------------------
# hooks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = comfy_report.newest_frontend_elsewhere(items, INSTALLS)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
    skip = pytest.mark.skip(reason=SKIP_REASON) if SKIP_REASON else None
    for item in items:
        if _in_tier(item):
            item.add_marker(pytest.mark.comfy)
            if skip is not None:
                item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if SKIP_REASON:
        return [f"comfy tier: {SKIP_REASON}"]
    return [f"comfy tier: ComfyUI {i.version} ({i.checkout})" for i in INSTALLS]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    in_tier = _in_tier(item)
    if in_tier:
        comfy_report.fail_skips_in_ci(report)
    if report.failed and in_tier:
        comfy_report.attach_logs(report, LIVE)
        _FAILED.append(item.nodeid)
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TIER_TIME.add(report)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for line in comfy_report.summary_lines(_TIER_TIME, _FAILED, ALL):
        terminalreporter.write_line(line)


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session", params=INSTALLS or [None], ids=[i.id for i in INSTALLS] or ["no-comfyui"])
def comfy_install(request: pytest.FixtureRequest) -> ComfyInstall:
    if request.param is None:
        pytest.skip(SKIP_REASON)
    install: ComfyInstall = request.param
    return install


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models dir with checkpoints/tiny_sd15.safetensors, vae/, loras/ (see make_tiny_models.py).

    Made once for every installation (the files are plain safetensors), with the oldest one."""
    if not INSTALLS:
        pytest.skip(SKIP_REASON)
    return make_tiny_models(INSTALLS[0], models_dir(tmp_path_factory.mktemp))


@pytest.fixture(scope="session")
def comfy_server_factory(
    comfy_install: ComfyInstall, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ComfyServer]]:
    """``make(env=None, args=(), name="comfy", podkit=True, extra_model_paths=None, start=True)``.

    ``env``: extra variables for ComfyUI (PODKIT_*, R2_*, ...; None unsets); ``args``: extra main.py
    arguments; ``extra_model_paths``: more folder_paths entries ({"loras": [dir, ...]}). Stop the
    server yourself when a module is done with it (otherwise it runs until the session ends)."""
    made: list[ComfyServer] = []

    def make(
        *,
        env: dict[str, Any] | None = None,
        args: list[str] | tuple[str, ...] = (),
        name: str = "comfy",
        podkit: bool = True,
        extra_model_paths: dict[str, Any] | None = None,
        start: bool = True,
        start_timeout: float | None = None,
    ) -> ComfyServer:
        srv = ComfyServer(
            comfy_install,
            tiny_models,
            tmp_path_factory.mktemp(name),
            env=env,
            args=args,
            name=name,
            podkit=podkit,
            extra_model_paths=extra_model_paths,
            start_timeout=start_timeout,
        )
        made.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture(scope="session")
def comfy_server(comfy_server_factory: Callable[..., ComfyServer]) -> ComfyServer:
    """One ComfyUI shared by the whole session (default settings, PodKit whitelisted). Tests that
    change env/args or restart the server should make their own with ``comfy_server_factory``."""
    return comfy_server_factory(name="shared")


@pytest.fixture(scope="session")
def comfy_child_env() -> Callable[[dict[str, Any] | None], dict[str, str]]:
    """``sanitized_env``: the environment a process of the tier gets (no parent secrets or PODKIT_*)."""
    return sanitized_env


@pytest.fixture
def comfy_client(comfy_server: ComfyServer) -> ComfyClient:
    if not comfy_server.is_running():
        comfy_server.start()
    return comfy_server.client


@pytest.fixture(scope="module")
def s3(s3_server: Any) -> Any:
    """A boto3 client on the test S3 server, configured as PodKit configures R2."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
