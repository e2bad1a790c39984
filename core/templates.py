"""Workflow templates: an API-format graph plus named parameters bound to node inputs.

A client of the serverless endpoint sends ``{"template": "portrait", "params": {"prompt": "…",
"seed": 7}}`` (ten fields) instead of a 40-node graph. A template file (JSON) is::

    {
      "description": "SD1.5 portrait with a LoRA from the bucket",
      "workflow": { <API-format graph> },
      "params": {
        "prompt":  {"bind": "6.text", "type": "string"},
        "seed":    {"bind": ["3.seed"], "type": "int", "min": 0},
        "tier":    {"bind": "10.tier", "type": "string", "choices": ["draft", "standard", "high"]},
        "lora":    {"bind": "11.lora", "type": "string", "required": true}
      }
    }

``bind`` names ``<node id>.<input name>`` (one or several). A parameter that is not sent keeps the
graph's value (or ``default``); ``required`` ones must be sent. Unknown templates or parameters are
errors that list the valid names.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest, NotFound

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TYPES = ("string", "int", "float", "bool", "any")
_PARAM_FIELDS = {"bind", "type", "default", "required", "min", "max", "choices", "description"}


class TemplateError(InvalidRequest):
    code = "invalid_template"


class UnknownTemplate(NotFound):
    code = "unknown_template"


@dataclass(frozen=True)
class Param:
    name: str
    targets: tuple[tuple[str, str], ...]
    type: str = "any"
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""

    def coerce(self, value: Any) -> Any:
        """``value`` checked against the declared type, range and choices (an error names the param)."""
        where = f"params.{self.name}"
        out: Any = value
        if self.type == "string":
            if not isinstance(value, str):
                raise InvalidRequest(f"{where} must be a string")
        elif self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"{where} must be an integer")
        elif self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequest(f"{where} must be a number")
            out = float(value)
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise InvalidRequest(f"{where} must be true or false")
        if self.min is not None and isinstance(out, (int, float)) and out < self.min:
            raise InvalidRequest(f"{where} must be at least {self.min:g}")
        if self.max is not None and isinstance(out, (int, float)) and out > self.max:
            raise InvalidRequest(f"{where} must be at most {self.max:g}")
        if self.choices and out not in self.choices:
            raise InvalidRequest(f"{where} must be one of {', '.join(map(str, self.choices))}")
        return out

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {
            "type": self.type,
            "bind": [f"{n}.{i}" for n, i in self.targets],
            "required": self.required,
        }
        for key in ("default", "min", "max", "description"):
            value = getattr(self, key)
            if value not in (None, ""):
                wire[key] = value
        if self.choices:
            wire["choices"] = list(self.choices)
        return wire


@dataclass(frozen=True)
class Template:
    name: str
    workflow: Mapping[str, Any]
    params: Mapping[str, Param]
    description: str = ""

    def render(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The graph with ``params`` bound: a new dict, the template is not changed."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise InvalidRequest(
                f"unknown parameter(s) {', '.join(unknown)} for template {self.name!r}; "
                f"valid: {', '.join(sorted(self.params)) or '(none)'}"
            )
        graph = copy.deepcopy(dict(self.workflow))
        for name, param in self.params.items():
            if name in params:
                value = param.coerce(params[name])
            elif param.required:
                raise InvalidRequest(f"params.{name} is required by template {self.name!r}")
            elif param.default is not None:
                value = param.default
            else:
                continue
            for node_id, input_name in param.targets:
                graph[node_id]["inputs"][input_name] = value
        return graph

    def to_wire(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "params": {n: p.to_wire() for n, p in sorted(self.params.items())},
        }


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRequest("template must be a name of letters, digits, '.', '_' or '-' (at most 100)")
    return name


def parse_template(name: str, raw: bytes | str | Mapping[str, Any]) -> Template:
    """A template from its JSON text (or parsed object); every mistake names the template and field."""
    where = f"template {name!r}"
    if isinstance(raw, (bytes, str)):
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise TemplateError(f"{where} is not valid JSON: {e}") from e
    else:
        data = raw
    if not isinstance(data, Mapping):
        raise TemplateError(f"{where} must be a JSON object with 'workflow' and 'params'")
    workflow = data.get("workflow")
    if not isinstance(workflow, Mapping) or not workflow:
        raise TemplateError(f"{where}: 'workflow' must be an API-format graph (node id → node)")
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, Mapping):
        raise TemplateError(f"{where}: 'params' must be an object")
    params = {pname: _parse_param(where, workflow, pname, spec) for pname, spec in raw_params.items()}
    return Template(name, workflow, params, str(data.get("description") or ""))


def _parse_param(where: str, workflow: Mapping[str, Any], name: str, spec: Any) -> Param:
    at = f"{where}: params.{name}"
    if not isinstance(spec, Mapping):
        raise TemplateError(f"{at} must be an object with 'bind'")
    extra = sorted(set(spec) - _PARAM_FIELDS)
    if extra:
        raise TemplateError(f"{at}: unknown field(s) {', '.join(extra)}")
    binds = spec.get("bind")
    binds = [binds] if isinstance(binds, str) else binds
    if not isinstance(binds, Sequence) or not binds:
        raise TemplateError(f"{at}.bind must be '<node id>.<input>' or a list of them")
    targets = []
    for bind in binds:
        node_id, _, input_name = str(bind).partition(".")
        node = workflow.get(node_id)
        if not input_name or not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            raise TemplateError(f"{at}.bind {bind!r}: the workflow has no node {node_id!r} with inputs")
        targets.append((node_id, input_name))
    kind = spec.get("type", "any")
    if kind not in TYPES:
        raise TemplateError(f"{at}.type must be one of {', '.join(TYPES)}")
    choices = spec.get("choices") or ()
    if not isinstance(choices, Sequence) or isinstance(choices, str):
        raise TemplateError(f"{at}.choices must be a list")
    return Param(
        name=name,
        targets=tuple(targets),
        type=kind,
        default=spec.get("default"),
        required=bool(spec.get("required", False)),
        min=spec.get("min"),
        max=spec.get("max"),
        choices=tuple(choices),
        description=str(spec.get("description") or ""),
    )
