from __future__ import annotations

from pathlib import Path

import pytest

from podkit.core.errors import ConfigError
from podkit.core.settings import ENV_VARS, Settings, parse_size


def test_defaults_without_volume_use_comfy_dirs(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"PODKIT_INSTANCE_ID": "a"},
        comfy_models_dir=tmp_path / "models",
        comfy_user_dir=tmp_path / "user",
        volume_candidates=[tmp_path / "missing"],
    )
    assert s.store_kind == "local"
    assert s.cache_dir == tmp_path / "models" / "podkit-cache"
    assert s.state_dir == tmp_path / "user" / "podkit" / "state" / "a"
    assert (s.lora_bucket, s.output_bucket) == ("loras", "outputs")
    assert s.volume_dir is None


def test_volume_is_preferred_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "runpod-volume", tmp_path / "workspace"
    second.mkdir()
    s = Settings.from_env({}, port=8188, volume_candidates=[first, second])
    assert s.volume_dir == second
    assert s.cache_dir == second / "podkit" / "cache"
    assert s.state_dir.parent == second / "podkit" / "state"
    assert s.instance_id.endswith("-8188")
    first.mkdir()
    assert Settings.from_env({}, volume_candidates=[first, second]).volume_dir == first


def test_seed_names_and_r2_endpoint() -> None:
    env = {
        "R2_ACCOUNT_ID": "abc123",
        "R2_ACCESS_KEY_ID": "AKIDSECRET",
        "R2_SECRET_ACCESS_KEY": "s3cr3t",
        "R2_LORA_BUCKET": "my-loras",
        "R2_OUTPUT_BUCKET": "my-outputs",
        "HF_TOKEN": "hf_xyz",
        "PODKIT_VOLUME_DIR": "",
    }
    s = Settings.from_env(env)
    assert s.store_kind == "s3"
    assert s.s3_endpoint == "https://abc123.r2.cloudflarestorage.com"
    assert (s.lora_bucket, s.output_bucket) == ("my-loras", "my-outputs")
    assert set(s.secrets()) == {"AKIDSECRET", "s3cr3t", "hf_xyz"}
    view = repr(s) + repr(s.public_view())
    for secret in s.secrets():
        assert secret not in view
    assert s.public_view()["endpoint_host"] == "abc123.r2.cloudflarestorage.com"


def test_explicit_endpoint_wins_and_store_can_be_forced() -> None:
    s = Settings.from_env(
        {"PODKIT_S3_ENDPOINT": "http://127.0.0.1:9000", "R2_ACCOUNT_ID": "x", "PODKIT_VOLUME_DIR": ""}
    )
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert (
        Settings.from_env({"PODKIT_STORE": "local", "PODKIT_S3_ENDPOINT": "http://h:1"}).store_kind == "local"
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PODKIT_S3_ENDPOINT": "ftp://x"}, "PODKIT_S3_ENDPOINT"),
        ({"PODKIT_CACHE_MAX_BYTES": "lots"}, "PODKIT_CACHE_MAX_BYTES"),
        ({"PODKIT_PRESIGN_TTL": "99999999"}, "PODKIT_PRESIGN_TTL"),
        ({"R2_LORA_BUCKET": "Bad_Bucket"}, "R2_LORA_BUCKET"),
        ({"PODKIT_STORE": "ftp"}, "PODKIT_STORE"),
        ({"PODKIT_MULTIPART_THRESHOLD": "1M"}, "PODKIT_MULTIPART_THRESHOLD"),
        ({"PODKIT_PUBLIC_BASE_URL": "cdn.example.com"}, "PODKIT_PUBLIC_BASE_URL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_parse_size() -> None:
    assert parse_size("512", name="X") == 512
    assert parse_size("1K", name="X") == 1024
    assert parse_size("50G", name="X") == 50 * 2**30
    assert parse_size("1.5GiB", name="X") == int(1.5 * 2**30)


def test_every_variable_is_documented_in_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in ENV_VARS if name not in readme]
    assert not missing, f"README.md does not document {missing}"
