"""Sources against real servers: a local Hub/CivitAI (tests/support/fake_hub.py), plain HTTP, real S3.

Every resolved file is also fetched with the real download engine, so a URL that resolves but does
not download (wrong commit pin, lost token, broken redirect) fails here too.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from fake_hub import CivitFile, CivitModel, CivitVersion, FakeHub, PlainFile, fake_hub
from http_server import FaultServer, fault_server

from podkit.backends.http_download import HttpDownloader
from podkit.backends.local_store import LocalStore
from podkit.backends.sources import ResolvedFile, XetOnly, make_session, resolve
from podkit.backends.url_guard import GuardedResolver, guard_trace
from podkit.core.download_request import DownloadItem, parse_item
from podkit.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, ObjectNotFound, Unauthorized
from podkit.core.objects import ObjectRef, ObjectStore
from podkit.core.settings import Settings
from podkit.core.url_policy import UrlPolicy
from podkit.services import url_policy

MiB = 2**20
HF_TOKEN = "hf_test_token_granted"  # noqa: S105 - a test value
OTHER_TOKEN = "hf_test_token_not_granted"  # noqa: S105
CIVITAI_TOKEN = "civitai_test_key"  # noqa: S105


def blob(n: int, seed: int) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest()
    return (block * (n // 32 + 1))[:n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with fake_hub() as h:
        h.tokens |= {HF_TOKEN, OTHER_TOKEN}
        h.civitai_tokens.add(CIVITAI_TOKEN)
        yield h


def make_settings(hub: FakeHub, tmp_path: Path, **env: str) -> Settings:
    base = {
        "PODKIT_VOLUME_DIR": "",
        "PODKIT_STORE": "local",
        "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"),
        "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
        "PODKIT_STATE_DIR": str(tmp_path / "state"),
        "PODKIT_HF_ENDPOINT": hub.hub_url,
        "PODKIT_CIVITAI_BASE_URL": hub.hub_url,
        "PODKIT_URL_ALLOW_HOSTS": "127.0.0.1",  # the tests' explicit loopback allowance
    }
    return Settings.from_env({**base, **env})


class Env:
    """Settings, a policy-guarded session, a store and the engine for one test."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, store: ObjectStore) -> None:
        self.settings, self.session, self.store = settings, session, store
        self.engine = HttpDownloader(session, connections=4, backoff_base=0.01)

    async def resolve(self, raw: dict[str, object]) -> list[ResolvedFile]:
        item = parse_item(raw, policy=url_policy(self.settings))
        return await resolve(item, session=self.session, settings=self.settings, store=self.store)

    async def fetch(self, f: ResolvedFile, tmp_path: Path) -> bytes:
        part = tmp_path / f"{uuid.uuid4().hex}.part"
        r = await self.engine.fetch(f.url, part, size=f.size, sha256=f.sha256, headers=f.headers)
        assert r.size == f.size
        return part.read_bytes()


@pytest.fixture
async def env(hub: FakeHub, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    extra = getattr(request, "param", {})
    settings = make_settings(hub, tmp_path, **extra)
    session = make_session(url_policy(settings), limit=16)
    try:
        yield Env(settings, session, LocalStore(tmp_path / "store"))
    finally:
        await session.close()


def with_tokens(**tokens: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("env", [tokens], indirect=True)


# --------------------------------------------------------------------------- Hugging Face


async def test_hf_file_resolves_size_sha_and_a_commit_pinned_url(
    hub: FakeHub, env: Env, tmp_path: Path
) -> None:
    weights = blob(3 * MiB + 17, 1)
    repo = hub.add_repo(
        "black-forest-labs/FLUX.1-dev", {"ae.safetensors": weights, "model_index.json": b"{}"}
    )
    [f] = await env.resolve({"repo_id": repo.repo_id, "filename": "ae.safetensors"})
    assert f.url == f"{hub.hub_url}/black-forest-labs/FLUX.1-dev/resolve/{repo.commit}/ae.safetensors"
    assert (f.size, f.sha256, f.filename, dict(f.headers)) == (
        len(weights),
        sha(weights),
        "ae.safetensors",
        {},
    )
    assert "headers" not in repr(f) and f.public()["url"] == f.url
    assert await env.fetch(f, tmp_path) == weights
    cdn = hub.seen("cdn")
    assert cdn and all(r.path == f"/blobs/{sha(weights)}" for r in cdn)  # the bytes came from the CDN


async def test_hf_snapshot_with_allow_and_ignore_patterns(hub: FakeHub, env: Env, tmp_path: Path) -> None:
    files = {
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": blob(MiB, 2),
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": blob(MiB + 5, 3),
        "transformer/config.json": b'{"in_channels": 64}',
        "vae/diffusion_pytorch_model.safetensors": blob(MiB, 4),
        "flux1-dev.safetensors": blob(2 * MiB, 5),
        "README.md": b"# model card",
        ".gitattributes": b"*.safetensors filter=lfs",
    }
    repo = hub.add_repo("org/flux", files)
    got = await env.resolve(
        {"repo_id": "org/flux", "allow_patterns": ["transformer/*", "vae/*"], "ignore_patterns": ["*.json"]}
    )
    names = [f.filename for f in got]
    assert names == sorted(
        ["transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
         "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
         "vae/diffusion_pytorch_model.safetensors"]
    )  # fmt: skip
    for f in got:
        data = files[f.filename]
        assert (f.size, f.sha256) == (len(data), sha(data))
        assert f"/resolve/{repo.commit}/" in f.url
        assert await env.fetch(f, tmp_path) == data
    # Without patterns: every visible file; small git files get their size, and no sha256 (git ids are sha1).
    everything = {f.filename: f for f in await env.resolve({"repo_id": "org/flux"})}
    assert ".gitattributes" not in everything and len(everything) == len(files) - 1
    card = everything["README.md"]
    assert (card.size, card.sha256) == (len(files["README.md"]), None)
    assert await env.fetch(card, tmp_path) == files["README.md"]


async def test_hf_revision_pins_urls_to_that_commit(hub: FakeHub, env: Env) -> None:
    repo = hub.add_repo("org/m", {"w.safetensors": blob(1000, 6)})
    repo.refs["v1.0"] = "c" * 40
    [f] = await env.resolve({"repo_id": "org/m", "filename": "w.safetensors", "revision": "v1.0"})
    assert f"/resolve/{'c' * 40}/w.safetensors" in f.url
    with pytest.raises(NotFound, match="revision 'v9' does not exist"):
        await env.resolve({"repo_id": "org/m", "filename": "w.safetensors", "revision": "v9"})


async def test_hf_gated_repo_without_token_is_a_clear_401(hub: FakeHub, env: Env) -> None:
    hub.add_repo("org/gated", {"flux1-dev.safetensors": blob(1000, 7)}, gated=True)
    with pytest.raises(Unauthorized, match="gated.*set HF_TOKEN") as e:
        await env.resolve({"repo_id": "org/gated", "filename": "flux1-dev.safetensors"})
    assert e.value.http_status == 401


@with_tokens(HF_TOKEN=OTHER_TOKEN)
async def test_hf_gated_repo_with_a_token_not_granted_is_a_clear_403(hub: FakeHub, env: Env) -> None:
    hub.add_repo("org/gated", {"flux1-dev.safetensors": blob(1000, 7)}, gated=True)
    with pytest.raises(Forbidden, match="not been granted access") as e:
        await env.resolve({"repo_id": "org/gated", "filename": "flux1-dev.safetensors"})
    assert e.value.http_status == 403 and OTHER_TOKEN not in str(e.value)


@with_tokens(HF_TOKEN="hf_unknown_token")
async def test_hf_invalid_token_is_named(hub: FakeHub, env: Env) -> None:
    hub.add_repo("org/m", {"w.safetensors": blob(1000, 8)})
    with pytest.raises(Unauthorized, match="invalid or expired") as e:
        await env.resolve({"repo_id": "org/m", "filename": "w.safetensors"})
    assert "hf_unknown_token" not in str(e.value)


@with_tokens(HF_TOKEN=HF_TOKEN)
async def test_hf_token_reaches_the_hub_but_never_the_cdn(hub: FakeHub, env: Env, tmp_path: Path) -> None:
    weights = blob(2 * MiB, 9)
    repo = hub.add_repo("org/gated", {"flux1-dev.safetensors": weights}, gated=True)
    repo.granted.add(HF_TOKEN)
    [f] = await env.resolve({"repo_id": "org/gated", "filename": "flux1-dev.safetensors"})
    assert f.headers == {"Authorization": f"Bearer {HF_TOKEN}"} and HF_TOKEN not in repr(f)
    assert HF_TOKEN not in str(f.public())
    assert await env.fetch(f, tmp_path) == weights
    resolves = [r for r in hub.seen("hub") if "/resolve/" in r.path]
    assert resolves and all(r.authorization == f"Bearer {HF_TOKEN}" for r in resolves)
    cdn = hub.seen("cdn")
    assert cdn and all(r.authorization is None for r in cdn)  # another origin: the token stayed home


async def test_hf_unknown_repo_file_and_pattern_are_404(hub: FakeHub, env: Env) -> None:
    hub.add_repo("org/m", {"w.safetensors": blob(1000, 10)})
    with pytest.raises(NotFound, match="repo org/nope was not found.*HF_TOKEN"):
        await env.resolve({"repo_id": "org/nope", "filename": "w.safetensors"})
    with pytest.raises(NotFound, match="'missing.safetensors' is not a file of Hugging Face repo org/m"):
        await env.resolve({"repo_id": "org/m", "filename": "missing.safetensors"})
    with pytest.raises(NotFound, match="matches the allow/ignore patterns"):
        await env.resolve({"repo_id": "org/m", "allow_patterns": ["*.gguf"]})


async def test_hf_xet_only_file_is_reported_clearly(hub: FakeHub, env: Env) -> None:
    hub.add_repo("org/xet", {"a.safetensors": blob(1000, 11), "b.safetensors": blob(1000, 12)},
                 xet_only=("b.safetensors",))  # fmt: skip
    with pytest.raises(XetOnly, match="b.safetensors.*stored with Xet only.*hf download") as e:
        await env.resolve({"repo_id": "org/xet", "filename": "b.safetensors"})
    assert e.value.http_status == 502 and e.value.code == "xet_only"
    with pytest.raises(XetOnly, match="b.safetensors"):  # the second file of a snapshot is probed too
        await env.resolve({"repo_id": "org/xet"})
    [a] = await env.resolve({"repo_id": "org/xet", "filename": "a.safetensors"})
    assert a.sha256 == sha(blob(1000, 11))


async def test_request_sha256_must_agree_with_the_source(hub: FakeHub, env: Env) -> None:
    weights = blob(1000, 13)
    hub.add_repo("org/m", {"w.safetensors": weights})
    with pytest.raises(Conflict, match="differs"):
        await env.resolve({"repo_id": "org/m", "filename": "w.safetensors", "sha256": "0" * 64})
    [f] = await env.resolve({"repo_id": "org/m", "filename": "w.safetensors", "sha256": sha(weights).upper()})
    assert f.sha256 == sha(weights)


# --------------------------------------------------------------------------- CivitAI


def civitai_fixture(hub: FakeHub, *, early_access: bool = False) -> tuple[CivitModel, bytes, bytes, bytes]:
    new, old, vae = blob(MiB + 3, 20), blob(MiB, 21), blob(4096, 22)
    model = CivitModel(
        model_id=1234,
        name="Detail Tweaker",
        type="LORA",
        versions=[
            CivitVersion(
                2002, 1234, "v2",
                [CivitFile("detail_v2.safetensors", new, file_id=1),
                 CivitFile("detail_v2_vae.safetensors", vae, type="VAE", primary=False, file_id=2)],
                early_access=early_access,
            ),
            CivitVersion(2001, 1234, "v1", [CivitFile("detail_v1.safetensors", old, file_id=3)]),
        ],
    )  # fmt: skip
    return hub.add_civitai_model(model), new, old, vae


async def test_civitai_by_version_id(hub: FakeHub, env: Env, tmp_path: Path) -> None:
    _, _, old, _ = civitai_fixture(hub)
    [f] = await env.resolve({"version_id": 2001})
    assert f.url == f"{hub.hub_url}/api/download/models/2001"
    assert (f.filename, f.size, f.sha256, f.type_hint) == (
        "detail_v1.safetensors",
        len(old),
        sha(old),
        "lora",
    )
    assert await env.fetch(f, tmp_path) == old


async def test_civitai_by_page_url_with_and_without_version(hub: FakeHub, env: Env, tmp_path: Path) -> None:
    _, new, old, vae = civitai_fixture(hub)
    [f] = await env.resolve({"url": "https://civitai.com/models/1234/detail-tweaker?modelVersionId=2001"})
    assert (f.filename, f.sha256) == ("detail_v1.safetensors", sha(old))
    [latest] = await env.resolve({"url": "https://civitai.com/models/1234/detail-tweaker"})
    assert (latest.filename, latest.sha256, latest.type_hint) == ("detail_v2.safetensors", sha(new), "lora")
    assert await env.fetch(latest, tmp_path) == new
    [v] = await env.resolve(
        {"url": "https://civitai.com/models/1234", "filename": "detail_v2_vae.safetensors"}
    )
    assert (v.size, v.sha256) == (len(vae), sha(vae))
    assert await env.fetch(v, tmp_path) == vae
    [named] = await env.resolve(
        {"url": "https://civitai.com/api/download/models/2002", "name": "mine.safetensors"}
    )
    assert named.filename == "mine.safetensors"
    with pytest.raises(NotFound, match="no file named 'x.safetensors'.*detail_v2.safetensors"):
        await env.resolve({"version_id": 2002, "filename": "x.safetensors"})
    with pytest.raises(NotFound, match="CivitAI has no model-versions/999"):
        await env.resolve({"version_id": 999})
    with pytest.raises(NotFound, match="CivitAI has no models/77"):
        await env.resolve({"url": "https://civitai.com/models/77"})


async def test_civitai_version_that_needs_a_token(hub: FakeHub, env: Env) -> None:
    civitai_fixture(hub, early_access=True)
    with pytest.raises(Unauthorized, match="set CIVITAI_TOKEN"):
        await env.resolve({"version_id": 2002})


@with_tokens(CIVITAI_TOKEN=CIVITAI_TOKEN)
async def test_civitai_token_reaches_civitai_but_never_the_cdn(
    hub: FakeHub, env: Env, tmp_path: Path
) -> None:
    _, new, _, _ = civitai_fixture(hub, early_access=True)
    [f] = await env.resolve({"version_id": 2002})
    assert f.headers == {"Authorization": f"Bearer {CIVITAI_TOKEN}"}
    assert await env.fetch(f, tmp_path) == new
    downloads = [r for r in hub.seen("hub") if r.path.startswith("/api/download/")]
    assert downloads and all(r.authorization == f"Bearer {CIVITAI_TOKEN}" for r in downloads)
    assert all(r.authorization is None for r in hub.seen("cdn"))


# --------------------------------------------------------------------------- plain URLs


async def test_plain_url_head_refused_falls_back_to_a_ranged_get(
    hub: FakeHub, env: Env, tmp_path: Path
) -> None:
    data = blob(MiB + 1, 30)
    url = hub.add_plain(
        "/files/download", PlainFile(data, disposition="real name.safetensors", head_status=405)
    )
    [f] = await env.resolve({"url": url})
    assert (f.filename, f.size, f.sha256, dict(f.headers)) == ("real name.safetensors", len(data), None, {})
    gets = [r for r in hub.seen("cdn") if r.method == "GET"]
    assert [r.range for r in gets] == ["bytes=0-0"]  # one byte asked, not the file
    assert await env.fetch(f, tmp_path) == data


async def test_plain_url_name_from_the_path_and_missing_files(hub: FakeHub, env: Env) -> None:
    url = hub.add_plain("/m/4x%20Ultra.pth", PlainFile(b"x" * 100))
    [f] = await env.resolve({"url": url})
    assert (f.filename, f.size) == ("4x Ultra.pth", 100)
    [named] = await env.resolve({"url": url, "name": "ultra.pth"})
    assert named.filename == "ultra.pth"
    with pytest.raises(NotFound, match="HTTP 404"):
        await env.resolve({"url": hub.cdn_url + "/nothing/here.bin"})


# --------------------------------------------------------------------------- URL policy on real connections


@pytest.fixture
def files() -> Iterator[FaultServer]:
    with fault_server() as srv:
        srv.add("/model.safetensors", b"weights")
        yield srv


async def test_default_policy_refuses_loopback_urls_and_names(files: FaultServer, tmp_path: Path) -> None:
    settings = Settings.from_env({"PODKIT_VOLUME_DIR": ""})
    async with make_session(url_policy(settings), limit=4) as session:
        engine = HttpDownloader(session, backoff_base=0.01)
        port = files.server_address[1]
        for url in (files.url("/model.safetensors"), f"http://localhost:{port}/model.safetensors",
                    f"http://[::ffff:127.0.0.1]:{port}/model.safetensors"):  # fmt: skip
            with pytest.raises(Forbidden, match="loopback"):
                await engine.fetch(url, tmp_path / "p")
        with pytest.raises(Forbidden, match="loopback"):  # the source's HEAD too
            await resolve(DownloadItem("url", url=f"http://localhost:{port}/x"), session=session,
                          settings=settings, store=LocalStore(tmp_path / "s"))  # fmt: skip
    assert files.requests == []  # nothing ever reached the server
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [("http://10.1.2.3/x", Forbidden, "private"), ("http://169.254.169.254/latest/meta-data/", Forbidden, "metadata"),
     ("http://[fd00:ec2::254]/latest", Forbidden, "metadata"), ("http://0x0a010203:1/x", Forbidden, "10.1.2.3 is a private"),
     ("file:///etc/passwd", InvalidRequest, "only http and https")],
)  # fmt: skip
async def test_redirect_from_an_allowed_host_to_a_refused_address(
    files: FaultServer, tmp_path: Path, target: str, error: type[Exception], match: str
) -> None:
    files.redirects["/r"] = target
    settings = Settings.from_env({"PODKIT_VOLUME_DIR": "", "PODKIT_URL_ALLOW_HOSTS": "127.0.0.1"})
    async with make_session(url_policy(settings), limit=4) as session:
        with pytest.raises(error, match=match):
            await HttpDownloader(session, backoff_base=0.01).fetch(files.url("/r"), tmp_path / "p")
    assert files.statuses() == [302]  # refused at once: no retry, the target never contacted


class StaticResolver(AbstractResolver):
    """A DNS stand-in answering fixed addresses (the names are not in any real zone)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
             "proto": 0, "flags": 0}
            for a in self.answers[host]
        ]  # fmt: skip

    async def close(self) -> None:
        return None


async def test_names_resolving_to_refused_addresses_are_refused(files: FaultServer) -> None:
    port = files.server_address[1]
    answers = {"models.example.com": ["10.1.2.3"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
               "meta.example.com": ["169.254.169.254"], "lan.example.com": ["127.0.0.1"]}  # fmt: skip
    policy = UrlPolicy(allow_private=True)
    resolver = GuardedResolver(policy, inner=StaticResolver(answers))
    with pytest.raises(Forbidden, match="metadata"):
        await resolver.resolve("meta.example.com", 80)
    default = GuardedResolver(UrlPolicy(), inner=StaticResolver(answers))
    for name in ("models.example.com", "mixed.example.com"):  # one bad answer spoils the lot
        with pytest.raises(Forbidden):
            await default.resolve(name, 80)
    # Through a real session: the connection goes to the checked address.
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[guard_trace(policy)]) as session:
        async with session.get(f"http://lan.example.com:{port}/model.safetensors") as resp:
            assert await resp.read() == b"weights"
        with pytest.raises(aiohttp.ClientConnectorDNSError) as e:
            await session.get(f"http://meta.example.com:{port}/model.safetensors")
    assert isinstance(e.value.os_error, Forbidden)


# --------------------------------------------------------------------------- bucket objects (real S3)


@pytest.mark.s3
async def test_bucket_object_via_the_real_s3_server(hub: FakeHub, tmp_path: Path, s3_server: object) -> None:
    from podkit.backends.s3_store import S3Store

    store = S3Store(**s3_server.store_kwargs())  # type: ignore[attr-defined]
    bucket = f"sources-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    data = blob(70_000, 40)
    ref = ObjectRef(bucket, "loras/style v1.safetensors")
    store.put_bytes(data, ref, content_type="application/octet-stream", metadata={"sha256": sha(data)})
    settings = make_settings(hub, tmp_path)
    async with make_session(url_policy(settings), limit=4) as session:
        item = parse_item({"uri": f"r2://{bucket}/loras/style v1.safetensors", "name": "style.safetensors"})
        [f] = await resolve(item, session=session, settings=settings, store=store)
        assert (f.store_uri, f.filename, f.size, f.sha256) == (
            ref.uri,
            "style.safetensors",
            len(data),
            sha(data),
        )
        [plain] = await resolve(parse_item({"uri": ref.uri}), session=session, settings=settings, store=store)
        assert plain.filename == "style v1.safetensors"
        with pytest.raises(ObjectNotFound):
            await resolve(parse_item({"uri": f"r2://{bucket}/missing.safetensors"}), session=session,
                          settings=settings, store=store)  # fmt: skip
    store.delete(ref)
