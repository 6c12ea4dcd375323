"""``metalflow trigger --param k=v``: parsed and checked against the flow before any API call.

A value is JSON when it looks like JSON (it starts with ``{``, ``[``, ``"``, a digit or ``-``,
or is ``true``, ``false`` or ``null``), and JSON that does not parse is refused, naming the
parameter: ``vm={bad json`` is a typo, not the string ``"{bad json"``. A parameter the flow
takes as text (a host name, an image) takes the value as written, so ``host=1004`` (a
CloudStack id) stays the string ``"1004"``; quote it (``host='"x"'``) to give JSON text.

The whole set is then validated against the flow's own signature, one pydantic check per
parameter with the types the UI's form and the API use (not Prefect's
``Flow.validate_parameters``, which resolves block references and logs every input; see
:func:`validate_params`), so a bad value is refused here, with its field named, and no flow
run is created.

Errors are :class:`~metalflow.integrations.common.values.BadValue`: the CLI prints them as one
line and exits 2. No message quotes a parameter's value beyond what ``values.show`` allows,
and a pydantic error never includes the input (``input_value``): a secret typed into the
wrong parameter must not be echoed.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from metalflow.integrations.common.values import BadValue, show

#: A flow parameter's name: a Python identifier in ASCII.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)
_JSON_WORDS = ("true", "false", "null")
_EXAMPLE = 'write it as key=value (value may be JSON, e.g. vm=\'{"name": "web-01", ...}\')'


def looks_like_json(text: str) -> bool:
    return text[:1] in ("{", "[", '"', "-", *"0123456789") or text.startswith(_JSON_WORDS)


def _no_constants(name: str) -> Any:
    # json.loads takes NaN and Infinity by default; no flow parameter means them.
    raise ValueError(f"{name} is not JSON")


def split_pair(pair: str, position: int = 1) -> tuple[str, str]:
    """``key=value``. A malformed pair is named by its position, never quoted: without its
    ``=`` it may be a value, and a value may be a secret."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise BadValue(f"--param #{position}", f"no key=value: {_EXAMPLE}")
    if not _KEY.fullmatch(key):
        raise BadValue("--param", f"{show(key, 40)} is not a parameter name: use letters, digits and '_'")
    return key, value


def parse_value(key: str, text: str, *, as_text: bool = False) -> Any:
    """One parameter's value: JSON when it looks like JSON, else the text as written.
    ``as_text``: the flow takes this parameter as a string, so only a value starting with
    ``"`` is read as JSON."""
    field = f"--param {key}"
    if text != text.strip():
        raise BadValue(field, "the value has leading or trailing whitespace (a newline?): remove it")
    if as_text and not text.startswith('"'):
        return text
    if not looks_like_json(text):
        return text
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        where = f" at character {exc.pos + 1}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadValue(
            field,
            f"the value looks like JSON but does not parse{where}: fix the JSON, or quote it "
            "as a JSON string (e.g. key='\"text\"')",
        ) from None


def _types(schema: Mapping[str, Any]) -> set[str]:
    out = {schema["type"]} if isinstance(schema.get("type"), str) else set()
    for alt in schema.get("anyOf", []) or []:
        if isinstance(alt, Mapping):
            out |= _types(alt)
    return out


def text_parameters(flow: Any) -> set[str]:
    """The flow's parameters whose schema is a string (or a string or null)."""
    props = flow.parameters.properties or {}
    return {k for k, s in props.items() if isinstance(s, Mapping) and _types(s) and _types(s) <= {"string", "null"}}


def _block_refs(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "$ref" in value or any(_block_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(_block_refs(v) for v in value)
    return False


def parse_params(pairs: Iterable[str], flow: Any | None = None) -> dict[str, Any]:
    """``key=value`` pairs as a parameter dict; each key once."""
    as_text = text_parameters(flow) if flow is not None else set()
    params: dict[str, Any] = {}
    for position, pair in enumerate(pairs, 1):
        key, text = split_pair(pair, position)
        if key in params:
            raise BadValue(f"--param {key}", "given twice: give each parameter once")
        params[key] = parse_value(key, text, as_text=key in as_text)
        if _block_refs(params[key]):
            raise BadValue(f"--param {key}", "block references ($ref) are not taken from the command line")
    return params


def validate_params(flow: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The whole set checked against the flow's signature with pydantic, as the run itself
    will check it: unknown and missing parameters and every bad value, as one
    :class:`BadValue` naming each field. Returns ``params`` unchanged: the API gets what was
    written, and the run validates it again with the same types.

    Not Prefect's ``Flow.validate_parameters``: that one resolves ``$ref`` block references
    (API calls) and logs the parameters and pydantic's errors, inputs included, at ERROR."""
    import pydantic

    signature = inspect.signature(flow.fn)
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    unknown = sorted(set(params) - set(signature.parameters))
    if unknown:
        raise BadValue(
            "--param",
            f"{flow.name} takes no parameter {', '.join(unknown)}: "
            f"it takes {', '.join(signature.parameters) or 'none'}",
        )
    problems = []
    for name, parameter in signature.parameters.items():
        if name not in params:
            if parameter.default is inspect.Parameter.empty:
                problems.append(f"{name}: missing (give --param {name}=...)")
            continue
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(hints.get(name, Any))
        try:
            adapter.validate_python(params[name])
        except pydantic.ValidationError as exc:
            problems.append(describe(exc, name))
    if problems:
        raise BadValue("--param", "; ".join(problems))
    return params


def describe(error: Any, name: str) -> str:
    """A pydantic ValidationError as ``name.field: message; ...``, without the input values
    (a secret typed into the wrong parameter stays unechoed)."""
    parts = []
    for err in error.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(p) for p in (name, *err["loc"]))
        parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)
