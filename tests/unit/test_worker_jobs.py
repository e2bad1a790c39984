"""Serverless job input (worker-comfyui's shape and templates) and output naming."""

from __future__ import annotations

import base64
import json

import pytest

from podkit.core.errors import InvalidRequest
from podkit.core.templates import TemplateError, parse_template
from podkit.core.worker_jobs import (
    content_type_of,
    output_key,
    output_kind,
    parse_inference,
    rebind_images,
)

GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4, "model": ["4", 0]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()


def test_worker_comfyui_input_is_accepted_as_is() -> None:
    raw = {"workflow": GRAPH, "images": [{"name": "in.png", "image": "data:image/png;base64," + PNG}]}
    req = parse_inference(raw, max_timeout=600)
    assert req.workflow == GRAPH and req.template is None and req.timeout == 600
    assert req.generation_cache is True
    assert parse_inference({**raw, "generation_cache": False}, max_timeout=600).generation_cache is False
    assert req.images[0].name == "in.png" and req.images[0].data.startswith(b"\x89PNG")
    # its API key field is accepted and ignored
    assert parse_inference({**raw, "comfy_org_api_key": "k"}, max_timeout=600).workflow == GRAPH


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("x", "input must be an object"),
        ({}, "exactly one of 'workflow'"),
        ({"workflow": GRAPH, "template": "t"}, "exactly one of 'workflow'"),
        ({"workflow": GRAPH, "extra": 1}, "unknown input field(s) extra; valid: workflow"),
        ({"workflow": {"nodes": [], "links": []}}, "UI format"),
        ({"workflow": {"1": {"inputs": {}}}}, "node '1' must be an object with a 'class_type'"),
        ({"workflow": GRAPH, "params": {"a": 1}}, "'params' go with 'template'"),
        ({"workflow": GRAPH, "images": [{"name": "../x.png", "image": PNG}]}, "images[0].name"),
        (
            {"workflow": GRAPH, "images": [{"name": "a.png", "image": "%%%"}]},
            "images[0].image is not valid base64",
        ),
        ({"workflow": GRAPH, "images": [{"name": "a.png", "image": PNG}] * 2}, "used twice"),
        ({"workflow": GRAPH, "timeout": 0}, "timeout must be a number of seconds between 1 and 600"),
        ({"workflow": GRAPH, "return_base64": "yes"}, "return_base64 must be true or false"),
        ({"workflow": GRAPH, "generation_cache": "off"}, "generation_cache must be true or false"),
    ],
)
def test_bad_input_names_the_field(raw: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_inference(raw, max_timeout=600)
    assert message in str(err.value)


def test_images_are_rebound_to_their_job_folder_without_touching_the_input() -> None:
    out = rebind_images(GRAPH, {"in.png": "podkit-jobs/j1/in.png"})
    assert out["10"]["inputs"]["image"] == "podkit-jobs/j1/in.png"
    assert out["6"]["inputs"]["text"] == "a cat" and out["3"]["inputs"]["model"] == ["4", 0]
    assert GRAPH["10"]["inputs"]["image"] == "in.png"


TEMPLATE = {
    "description": "portrait",
    "workflow": GRAPH,
    "params": {
        "prompt": {"bind": "6.text", "type": "string", "required": True},
        "seed": {"bind": ["3.seed"], "type": "int", "min": 0},
        "steps": {"bind": "3.steps", "type": "int", "min": 1, "max": 50, "default": 8},
        "tier": {"bind": "3.seed", "type": "string", "choices": ["draft", "standard"]},
    },
}


def test_template_binds_params_and_keeps_the_graph_values_otherwise() -> None:
    template = parse_template("portrait", json.dumps(TEMPLATE))
    graph = template.render({"prompt": "a dog", "seed": 7})
    assert graph["6"]["inputs"]["text"] == "a dog" and graph["3"]["inputs"]["seed"] == 7
    assert graph["3"]["inputs"]["steps"] == 8  # the declared default
    assert GRAPH["6"]["inputs"]["text"] == "a cat"  # the template is not changed
    assert template.to_wire()["params"]["seed"] == {
        "type": "int",
        "bind": ["3.seed"],
        "required": False,
        "min": 0,
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"prompt": "x", "sede": 1},
            "unknown parameter(s) sede for template 'portrait'; valid: prompt, seed, steps, tier",
        ),
        ({}, "params.prompt is required"),
        ({"prompt": 3}, "params.prompt must be a string"),
        ({"prompt": "x", "seed": -1}, "params.seed must be at least 0"),
        ({"prompt": "x", "steps": 51}, "params.steps must be at most 50"),
        ({"prompt": "x", "seed": True}, "params.seed must be an integer"),
        ({"prompt": "x", "tier": "ultra"}, "params.tier must be one of draft, standard"),
    ],
)
def test_bad_params_are_named_with_the_valid_ones(params: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_template("portrait", TEMPLATE).render(params)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{", "is not valid JSON"),
        ({"params": {}}, "'workflow' must be an API-format graph"),
        ({"workflow": GRAPH, "params": {"p": {"bind": "99.text"}}}, "params.p.bind '99.text'"),
        (
            {"workflow": GRAPH, "params": {"p": {"bind": "6.text", "type": "str"}}},
            "params.p.type must be one of",
        ),
        ({"workflow": GRAPH, "params": {"p": {"bind": "6.text", "bogus": 1}}}, "unknown field(s) bogus"),
    ],
)
def test_a_bad_template_file_names_the_template_and_field(template: object, message: str) -> None:
    raw = template if isinstance(template, str) else json.dumps(template)
    with pytest.raises(TemplateError) as err:
        parse_template("t1", raw)
    assert "template 't1'" in str(err.value) and message in str(err.value)


def test_output_keys_are_content_addressed_under_the_job() -> None:
    sha = "ab" * 32
    assert output_key("job-1", sha, "ComfyUI_00001_.png") == f"job-1/{sha}.png"
    assert output_key("a/b c", sha, "clip.WEBM") == f"a_b_c/{sha}.webm"
    assert output_key("j", sha, "noext") == f"j/{sha}"
    assert (output_kind("x.webp"), output_kind("x.webm"), output_kind("x.flac"), output_kind("x.json")) == (
        "image",
        "video",
        "audio",
        "file",
    )
    assert content_type_of("x.png") == "image/png"
