from __future__ import annotations

import pytest

from podkit.core.errors import InvalidRequest
from podkit.core.naming import DEFAULT_KEY_TEMPLATE, KeyContext, check_template, clean_prefix, render_key
from podkit.core.objects import ObjectRef, parse_object_uri, validate_key


def test_parse_uris() -> None:
    assert parse_object_uri("r2://bk1/a/x.safetensors", "dflt") == ObjectRef("bk1", "a/x.safetensors")
    assert parse_object_uri("s3://bk1/x", "dflt") == ObjectRef("bk1", "x")
    assert parse_object_uri("  folder/x.safetensors ", "dflt") == ObjectRef("dflt", "folder/x.safetensors")


@pytest.mark.parametrize(
    "text",
    ["", "http://b/k", "r2://bucket", "r2://bucket/", "../etc/passwd", "/abs/key", "a//b", "a/./b", "a\\b",
     "a/\x00b", "x/con.txt", "r2://Bad_Bucket/k"],
)  # fmt: skip
def test_unsafe_uris_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_object_uri(text, "dflt")


def test_key_length_limit() -> None:
    validate_key("a" * 1024)
    with pytest.raises(InvalidRequest):
        validate_key("a" * 1025)


def ctx(**over: object) -> KeyContext:
    base = dict(
        prefix="runs/portrait", prompt_id="p-1", node_id="9", batch=3, sha256="ab" * 32,
        width=1024, height=768, timestamp=0.0,
    )  # fmt: skip
    base.update(over)
    return KeyContext(**base)  # type: ignore[arg-type]


def test_default_template_is_content_addressed() -> None:
    key = render_key(DEFAULT_KEY_TEMPLATE, ctx())
    assert key == "runs/portrait/1970-01-01/p-1_03_abababababababab.png"


def test_template_fields_and_specs() -> None:
    key = render_key(
        "{prefix}/{year}{month}{day}/{node_id}-{batch:04d}-{width}x{height}-{hash:.6}.{ext}", ctx()
    )
    assert key == "runs/portrait/19700101/9-0003-1024x768-ababab.png"


@pytest.mark.parametrize(
    "template",
    [
        "{prefix}/{nope}.png",
        "{prefix.__class__}{hash}",
        "{prefix[0]}{hash}",
        "{hash!r}",
        "{prefix}.png",
        "{",
        "",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(InvalidRequest):
        check_template(template)


def test_rendered_key_is_validated() -> None:
    with pytest.raises(InvalidRequest):
        render_key("../{hash}", ctx())


def test_clean_prefix() -> None:
    assert clean_prefix("../a/./b c/<x>") == "a/b c/_x_"
    assert clean_prefix("///") == "PodKit"
