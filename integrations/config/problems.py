"""Every problem of a configuration input at once, named by where it is and how to fix it,
and never with a secret in it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from metalflow.integrations.common import MetalflowError
from metalflow.integrations.common.secrets import scrubber


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (a key or a JSON path) and what, with the fix."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(MetalflowError):
    """Bad configuration. ``field`` names the first offending part; ``problems`` lists them all."""

    def __init__(self, message: str, *, field: str = "", problems: Sequence[Problem] = ()):
        self.field = field
        self.problems = tuple(problems)
        super().__init__(message)

    @classmethod
    def from_problems(cls, what: str, problems: Sequence[Problem]) -> ConfigError:
        if len(problems) == 1:
            message = f"{what}: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"{what} has {len(problems)} problems:\n{lines}"
        return cls(message, field=problems[0].field, problems=problems)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (type(self), self.message, self.field, self.problems))


def _rebuild_config_error(
    cls: type[ConfigError], message: str, field: str, problems: tuple[Problem, ...]
) -> ConfigError:
    return cls(message, field=field, problems=problems)


def scrub(problems: list[Problem], secrets: Iterable[str]) -> list[Problem]:
    """Replace any secret text that slipped into a message (a second line of defence: the
    messages are written never to echo a secret value in the first place). ``secrets`` are
    taught to the process's scrubber, which also knows every other loaded secret."""
    s = scrubber()
    s.learn_all(v for v in secrets if isinstance(v, str))
    return [Problem(s.scrub(p.field), s.scrub(p.message)) for p in problems]
