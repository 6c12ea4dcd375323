"""JSON written the way CloudStack's ``GsonHelper.getGson().toJson(...)`` writes a payload file.

Gson with its defaults: compact (no spaces), fields and map entries with a null value left out
(a null inside an array stays ``null``), non-ASCII text written as is, and HTML-safe escaping
*inside strings only*: ``< > & = '`` become ``\\u003c \\u003e \\u0026 \\u003d \\u0027``.
Control characters use the short escapes where JSON has them, else ``\\u00XX`` (lower-case
hex); U+2028 and U+2029 are always escaped. Doubles follow ``Double.toString`` (``300.0``,
``1.0E10``). Keys are strings and are escaped like values.

The escaping lives in the string writer, never in a pass over the finished text: a key or
value holding ``=`` or ``:`` is escaped while the ``:`` and ``,`` between them are not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_SHORT = {'"': '\\"', "\\": "\\\\", "\t": "\\t", "\b": "\\b", "\n": "\\n", "\r": "\\r", "\f": "\\f"}
_HTML_SAFE = "<>&='"


def _escape_char(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x20 or ch in _HTML_SAFE or code in (0x2028, 0x2029):
        return f"\\u{code:04x}"
    return ch


def string(text: str) -> str:
    """One JSON string literal, quotes included."""
    return '"' + "".join(_escape_char(ch) for ch in text) + '"'


def java_double(value: float) -> str:
    """``Double.toString``: plain between 10^-3 and 10^7, else ``d.dddE±n``; always a fraction digit."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"Gson refuses {value!r} (JSON has no NaN or Infinity)")
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    numerals = "".join(map(str, digits)).rstrip("0") or "0"
    power = len(digits) + exponent - 1
    return f"{'-' if sign else ''}{numerals[0]}.{numerals[1:] or '0'}E{power}"


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(java_double(value))
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        for key, item in value.items():
            if item is None:  # serializeNulls() is off: the name goes with its value
                continue
            if not first:
                out.append(",")
            first = False
            out.append(string(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"not JSON: {type(value).__name__}")


def dumps(doc: Any) -> str:
    """``doc`` as Gson writes it."""
    out: list[str] = []
    _write(doc, out)
    return "".join(out)
