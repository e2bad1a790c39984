"""Download requests and manifests: what is accepted, what is refused and how it is named."""

from __future__ import annotations

import json

import pytest

from podkit.core.download_request import (
    DownloadItem,
    civitai_ids,
    parse_item,
    parse_items,
    parse_manifest,
)
from podkit.core.errors import Forbidden, InvalidRequest
from podkit.core.filenames import sanitize_name, sanitize_relpath, validate_name, validate_relpath
from podkit.core.url_policy import UrlPolicy, redact_url

SHA = "ab" * 32


def test_sources_are_inferred_from_their_fields() -> None:
    assert parse_item({"repo_id": "org/repo", "filename": "a.safetensors"}).source == "hf"
    assert parse_item({"version_id": 12}).source == "civitai"
    assert parse_item({"url": "https://civitai.com/models/5?modelVersionId=7"}).source == "civitai"
    assert parse_item({"url": "https://example.com/x.safetensors"}).source == "url"
    item = parse_item({"uri": "r2://loras/style.safetensors"})
    assert (item.source, item.uri) == ("bucket", "r2://loras/style.safetensors")


def test_common_fields_are_validated_and_normalised() -> None:
    item = parse_item(
        {"url": "https://example.com/m", "type": "vae", "name": "ae.safetensors",
         "subfolder": "/flux/", "sha256": SHA.upper()}
    )  # fmt: skip
    assert (item.type, item.name, item.subfolder, item.sha256) == ("vae", "ae.safetensors", "flux", SHA)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"url": "https://e.com/x", "nmae": "x"}, "unknown field(s) for a url item: nmae"),
        ({"url": "https://e.com/x", "type": "lorra"}, "type must be one of"),
        ({"url": "https://e.com/x", "name": "../evil.safetensors"}, "must be a plain name"),
        ({"url": "https://e.com/x", "name": ".."}, "no '..'"),
        ({"url": "https://e.com/x", "name": "..hidden"}, "must not start with '.'"),
        ({"url": "https://e.com/x", "name": "CON.txt"}, "reserved device name"),
        ({"url": "https://e.com/x", "subfolder": "a/../b"}, "must not start with '.'"),
        ({"url": "https://e.com/x", "sha256": "abc"}, "sha256 must be 64 hexadecimal"),
        ({"url": "file:///etc/passwd"}, "only http and https"),
        ({"url": "ftp://e.com/x"}, "only http and https"),
        ({"url": "https://user:pw@e.com/x"}, "must not carry credentials"),
        ({"repo_id": "../x"}, "repo_id must look like"),
        ({"repo_id": "a/b", "filename": "x", "allow_patterns": ["*"]}, "apply to a snapshot"),
        ({"repo_id": "a/b", "sha256": SHA}, "apply to one file"),
        ({"version_id": 0}, "version_id must be a positive integer"),
        ({"source": "civitai", "url": "https://example.com/models/1"}, "not a civitai.com address"),
        ({"uri": "nope"}, "a bucket item needs uri"),
        ({}, "item needs one of"),
        ({"source": "ftp"}, "source must be one of"),
    ],
)
def test_bad_items_are_refused_with_the_field_named(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_item(raw)
    assert fragment in str(e.value)


def test_url_policy_applies_to_urls_written_as_addresses() -> None:
    with pytest.raises(Forbidden, match="PODKIT_URL_ALLOW_PRIVATE"):
        parse_item({"url": "http://10.0.0.5/x"}, policy=UrlPolicy())
    with pytest.raises(Forbidden, match="link-local"):
        parse_item({"url": "http://169.254.169.254/latest"}, policy=UrlPolicy(allow_private=True))
    assert parse_item({"url": "http://127.0.0.1:9/x"}, policy=UrlPolicy(allow_private=True)).url


def test_request_bodies_one_item_many_or_a_manifest() -> None:
    assert len(parse_items({"url": "https://e.com/a"})) == 1
    assert (
        len(parse_items({"items": [{"url": "https://e.com/a"}, {"url": "https://e.com/b"}], "force": True}))
        == 2
    )
    manifest = json.dumps({"loras": [{"url": "https://e.com/a.safetensors"}]})
    (item,) = parse_items({"manifest": manifest})
    assert item.type == "lora"
    with pytest.raises(InvalidRequest, match=r"items\[1\]: url must be a non-empty string"):
        parse_items({"items": [{"url": "https://e.com/a"}, {"url": ""}]})
    with pytest.raises(InvalidRequest, match="force must be true or false"):
        parse_items({"url": "https://e.com/a", "force": "yes"})
    with pytest.raises(InvalidRequest, match="names nothing"):
        parse_items({})
    with pytest.raises(InvalidRequest, match="not both"):
        parse_items({"manifest": manifest, "items": []})


def test_yaml_manifest_with_folders_and_dest() -> None:
    text = f"""
version: 1
models:
  - repo_id: black-forest-labs/FLUX.1-dev
    filename: flux1-dev.safetensors
    type: diffusion_model
loras:
  - url: https://example.com/style.safetensors
    dest: loras/flux/style-v2.safetensors
    sha256: {SHA}
text_encoders:
  - https://example.com/t5xxl_fp16.safetensors
clip:
  - r2://models/clip_l.safetensors
"""
    items = parse_manifest(text).items
    assert [i.type for i in items] == ["diffusion_model", "lora", "text_encoder", "text_encoder"]
    lora = items[1]
    assert (lora.subfolder, lora.name, lora.sha256) == ("flux", "style-v2.safetensors", SHA)
    assert items[3].source == "bucket"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "manifest is empty"),
        ("loras: [\n", "not valid YAML at line"),
        ("{", "not valid JSON"),
        ("version: 2\nloras: [https://e.com/x]", "version 2 is not supported"),
        ("weights: [https://e.com/x]", "unknown top-level key(s) weights"),
        ("loras:\n  - url: https://e.com/x\n    type: vae", "contradicts its list"),
        ("models:\n  - url: https://e.com/x\n    dest: ../x.safetensors", "must not start with '.'"),
        (
            "models:\n  - url: https://e.com/x\n    dest: secrets/x.safetensors",
            "must start with a model folder",
        ),
        ("loras:\n  - {url: https://e.com/a}\n  - {url: 'file:///x'}", "manifest loras[1]"),
        ("loras: []", "lists no items"),
    ],
)
def test_bad_manifests_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_manifest(text)
    assert fragment in str(e.value)


def test_names_paths_and_sanitising() -> None:
    assert validate_name("model-v1.safetensors") == "model-v1.safetensors"
    assert validate_relpath("flux/dev", field="subfolder") == "flux/dev"
    for bad in ("/abs", "C:/x", "a\\b", "a//b"):
        with pytest.raises(InvalidRequest):
            validate_relpath(bad, field="dest")
    assert sanitize_name("../../etc/passwd") == "passwd"
    assert sanitize_name('we"ird<name>.safetensors') == "we_ird_name_.safetensors"
    assert sanitize_name("...") == "download"
    assert sanitize_name("nul.bin") == "_nul.bin"
    long = sanitize_name("x" * 400 + ".safetensors")
    assert long.endswith(".safetensors") and len(long) == 200
    assert sanitize_relpath("a/../b/./c.safetensors") == "a/b/c.safetensors"


def test_public_form_redacts_credentials() -> None:
    item = parse_item({"url": "https://cdn.example.com/x.bin?token=s3cret&X-Amz-Signature=abc&v=2"})
    shown = item.public()["url"]
    assert isinstance(shown, str) and "s3cret" not in shown and "abc" not in shown and "v=2" in shown
    assert redact_url("https://e.com/x") == "https://e.com/x"


def test_civitai_ids_and_labels() -> None:
    assert civitai_ids("https://civitai.com/models/123/slug?modelVersionId=456") == (123, 456)
    assert civitai_ids("https://civitai.com/api/download/models/789") == (None, 789)
    assert civitai_ids("https://civitai.com/models/5") == (5, None)
    with pytest.raises(InvalidRequest, match="different model versions"):
        parse_item({"version_id": 1, "url": "https://civitai.com/models/5?modelVersionId=2"})
    assert DownloadItem("url", url="https://e.com/dir/file.bin?x=1").label == "file.bin"
    assert DownloadItem("hf", repo_id="a/b", filename="sub/f.safetensors").label == "f.safetensors"
