"""The vocabulary of :mod:`values` as pydantic types, for flow parameters and settings.

Prefect builds the UI's parameter form and the API's validation from these models, so the form,
the API and the CLI refuse the same values with the same words. A field of these types runs
the one parser (``PlainValidator``: no coercion of pydantic's own first; ``True`` is not VLAN 1)
and publishes a JSON schema that says the same rule to the form.

Models holding a secret reference or a crypt hash set ``hide_input_in_errors``: a password
pasted into the wrong field must not come back in the validation error Prefect logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from metalflow.integrations.common import values as v

#: The end of a JSON-schema ``pattern``. Not ``$``: the API validates patterns with Python's
#: ``re.search``, where ``$`` also matches before a final newline ("host-001\n" would pass the
#: API and fail the run). "No character follows" means the same in ECMA-262 (the UI) and Python.
_END = r"(?![\s\S])"


def _whole(pattern: str) -> str:
    """A JSON-schema ``pattern`` matching the whole string (see ``_END``)."""
    return "^" + pattern + _END


def _field(parse: Callable[[Any, str], Any]) -> PlainValidator:
    # field="": pydantic puts the field's location in front of the message itself.
    return PlainValidator(lambda value: parse(value, ""))


VlanId = Annotated[
    int,
    _field(v.parse_vlan),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": v.VLAN_MIN,
            "maximum": v.VLAN_MAX,
            "description": "802.1Q VLAN id, 2-4094 (VLAN 1 is the switches' default and never changed)",
        }
    ),
]
Hostname = Annotated[
    str,
    _field(v.parse_hostname),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _whole(v.HOSTNAME_PATTERN),
            "description": "Hostname in MAAS: lower-case letters, digits and dashes, 1-63",
        }
    ),
]
ImageName = Annotated[
    str,
    _field(v.parse_image),
    WithJsonSchema(
        {"type": "string", "pattern": _whole(v.IMAGE_PATTERN), "description": "MAAS image name, e.g. ubuntu/jammy"}
    ),
]
Architecture = Annotated[
    str,
    _field(v.parse_architecture),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _whole(v.ARCHITECTURE_PATTERN),
            "description": "MAAS architecture, e.g. amd64 or amd64/generic",
        }
    ),
]
Ident = Annotated[
    str,
    _field(lambda value, field: v.parse_ident(value, field, "an id")),
    WithJsonSchema({"type": "string", "pattern": _whole(v.IDENT_PATTERN)}),
]
SecretRefText = Annotated[
    str,
    _field(lambda value, field: str(v.parse_secret_ref(value, field))),
    WithJsonSchema(
        {
            "type": "string",
            # The same rule in the form and the API: a password pasted here is refused there
            # (the answer goes back to whoever sent it) instead of being stored as a run's
            # parameter and refused only when the run starts.
            "pattern": _whole(v.SECRET_REF_PATTERN),
            "description": "Where a secret lives: env:NAME, block:NAME or block:NAME#KEY (never the secret)",
        }
    ),
]
SshKey = Annotated[
    str,
    _field(v.parse_ssh_key),
    WithJsonSchema({"type": "string", "description": "One authorized_keys line: type base64 [comment]"}),
]
EraseModeField = Annotated[
    v.EraseMode,
    _field(v.parse_erase_mode),
    PlainSerializer(lambda mode: mode.value, return_type=str),
    WithJsonSchema({"type": "string", "enum": [m.value for m in v.EraseMode]}),
]
