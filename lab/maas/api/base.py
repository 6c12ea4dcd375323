"""What every resource shares: the request and response, the error answers (MAAS's shapes:
text for one message, JSON ``{"field": [msg]}`` for form errors), form parsing, and ``Resource``,
the base of the handler classes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.lifecycle import Lifecycle
from metalflow.lab.maas.model import Machine, State

# --- request / response ------------------------------------------------------------------


class Params:
    """A multi-valued form (Django's QueryDict): ``get`` gives the last value, ``getlist`` all."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()):
        self.pairs = list(pairs)

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.getlist(key)
        return values[-1] if values else default

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self.pairs if k == key]

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self.pairs))

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.pairs)


@dataclass
class Request:
    method: str
    path: str  # relative to /MAAS/api/2.0/, with its trailing slash
    query: Params
    body: Params

    @property
    def data(self) -> Params:
        """What MAAS handlers read: the query string for GET/DELETE, the body otherwise."""
        return self.query if self.method in ("GET", "DELETE") else self.body


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode(), "application/json; charset=utf-8")

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8", dict(headers))


class ApiError(Exception):
    """An error answer: text (a single message) or JSON (form errors, ``{"field": [msg]}``)."""

    def __init__(self, status: int, message: str | dict[str, list[str]]):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message

    def response(self) -> Response:
        if isinstance(self.message, dict):
            return Response.json(self.message, self.status)
        return Response.text(self.status, self.message)


def bad_request(message: str | dict[str, list[str]]) -> ApiError:
    return ApiError(400, message)


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"No {what} matches the given query.")


_TRUE = {"true", "1", "yes", "on"}


_FALSE = {"false", "0", "no", "off", ""}


def parse_bool(value: str | None, name: str, default: bool = False) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise bad_request({name: [f"'{value}' is not a valid boolean value."]})


def parse_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request({name: ["Enter a whole number."]}) from None


def choice_error(value: str) -> list[str]:
    return [f"Select a valid choice. {value} is not one of the available choices."]


def multi(values: list[str]) -> set[str]:
    """Repeated keys and comma-separated values alike (``tags=a&tags=b`` or ``tags=a,b``)."""
    return {v.strip() for value in values for v in value.split(",") if v.strip()}


# --- the handlers' base ------------------------------------------------------------------


class Resource:
    """One MAAS resource's handlers (``MachineHandler``, ``TagsHandler``, ...). All resources of
    a simulator share its ``state``, guarded by ``lock``: the router holds the lock around each
    handler, so handlers read and change ``state`` freely and never take it themselves (except
    ``query_power_state``, which the router runs unlocked)."""

    def __init__(self, state: State, lock: threading.RLock, lifecycle: Lifecycle, base_url: Callable[[], str]):
        self.state = state
        self.lock = lock
        self.life = lifecycle
        self.base_url = base_url

    def _machine(self, system_id: str, what: str = "Machine") -> Machine:
        m = self.state.machines.get(system_id)
        if m is None:
            raise not_found(what)
        return m

    def _mj(self, m: Machine) -> dict[str, Any]:
        return model.machine_json(self.state, m)
