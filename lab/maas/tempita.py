"""A small, safe renderer for the subset of Tempita that MAAS preseed templates use.

MAAS renders ``/etc/maas/preseeds/curtin_userdata*`` with Tempita. Real Tempita evaluates
arbitrary Python; the simulator must not (a preseed comes from whoever can write the preseed
directory), and the project adds no dependency for it. Supported:

- ``{{expr}}`` and ``{{expr|filter|...}}`` (a filter is a callable applied to the value);
  ``None`` renders as the empty string, as in Tempita;
- ``{{if expr}}`` / ``{{elif expr}}`` / ``{{else}}`` / ``{{endif}}``;
- ``{{for a[, b] in expr}}`` / ``{{endfor}}``;
- ``{{default name = expr}}`` and ``{{# comment}}``;
- ``{{py: ...}}`` is parsed but refuses to run (it is only ever inside a branch MAAS's own
  templates do not take in the lab).

Tempita's whitespace rule is kept: a statement tag alone on its line (only blanks around it)
takes its whole line with it, so ``{{for}}``/``{{endfor}}`` lines leave no blank lines in YAML.

Expressions are parsed with :mod:`ast` and evaluated by a whitelist: literals, names from the
context, attribute and item access (no ``_`` names), comparisons, ``and``/``or``/``not``,
``+``, ``%`` and calls of whitelisted functions and string/dict methods. Anything else is a
``TemplateError`` naming the line and column.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
_STATEMENT = re.compile(r"^(?:if\s|elif\s|for\s|default\s|py:)")
_SINGLE = {"else", "endif", "endfor"}


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message names line and column."""


class Escape:
    """MAAS's ``escape`` namespace: ``escape.shell`` (shlex.quote) and ``escape.json``."""

    shell = staticmethod(shlex.quote)
    json = staticmethod(json.dumps)


ESCAPE = Escape()

_SAFE_FUNCS: tuple[Callable[..., Any], ...] = (
    str,
    int,
    len,
    bool,
    repr,
    sorted,
    list,
    dict,
    tuple,
    min,
    max,
    abs,
    shlex.quote,
    json.dumps,
)
_SAFE_METHODS = {
    str: {
        "splitlines",
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "join",
        "lower",
        "upper",
        "replace",
        "startswith",
        "endswith",
        "title",
        "capitalize",
    },
    dict: {"get", "items", "keys", "values"},
    list: {"index", "count"},
}
_BINOPS = {ast.Add: operator.add, ast.Mod: operator.mod, ast.Sub: operator.sub}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class SafeObject:
    """Base for context objects whose public methods listed in ``SAFE_METHODS`` may be called."""

    SAFE_METHODS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Pos:
    line: int
    col: int

    def __str__(self) -> str:
        return f"line {self.line} column {self.col}"


def _pos(src: str, offset: int) -> _Pos:
    line = src.count("\n", 0, offset) + 1
    col = offset - (src.rfind("\n", 0, offset) + 1) + 1
    return _Pos(line, col)


# --- expressions ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Expr:
    source: str
    tree: ast.expr
    pos: _Pos

    @classmethod
    def parse(cls, source: str, pos: _Pos) -> _Expr:
        try:
            tree = ast.parse(source.strip(), mode="eval").body
        except SyntaxError as exc:
            raise TemplateError(f"invalid expression {source.strip()!r} at {pos}: {exc.msg}") from None
        return cls(source.strip(), tree, pos)

    def eval(self, ns: dict[str, Any]) -> Any:
        try:
            return _eval(self.tree, ns)
        except TemplateError as exc:
            raise TemplateError(f"{exc} in {self.source!r} at {self.pos}") from None
        except Exception as exc:  # noqa: BLE001 - a type error etc. inside an allowed operation
            raise TemplateError(f"{type(exc).__name__}: {exc} in {self.source!r} at {self.pos}") from None


def _callable_ok(fn: Any) -> bool:
    if any(fn is f for f in _SAFE_FUNCS):
        return True
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    if owner is None:
        return False
    if isinstance(owner, SafeObject):
        return name in owner.SAFE_METHODS
    for typ, names in _SAFE_METHODS.items():
        if type(owner) is typ:
            return name in names
    return False


def _eval(node: ast.expr, ns: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ns:
            return ns[node.id]
        raise TemplateError(f"name {node.id!r} is not defined")
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise TemplateError(f"attribute {node.attr!r} is not allowed")
        value = _eval(node.value, ns)
        if isinstance(value, dict) and not hasattr(dict, node.attr):
            raise TemplateError(f"attribute {node.attr!r} is not allowed")
        return getattr(value, node.attr)
    if isinstance(node, ast.Subscript):
        value = _eval(node.value, ns)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else _eval(p, ns) for p in (node.slice.lower, node.slice.upper, node.slice.step)]
            return value[slice(*parts)]
        return value[_eval(node.slice, ns)]
    if isinstance(node, ast.Call):
        fn = _eval(node.func, ns)
        if not _callable_ok(fn):
            raise TemplateError(f"calling {ast.unparse(node.func)!r} is not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise TemplateError("star arguments are not allowed")
        args = [_eval(a, ns) for a in node.args]
        kwargs = {k.arg: _eval(k.value, ns) for k in node.keywords if k.arg is not None}  # ** refused above
        return fn(*args, **kwargs)
    if isinstance(node, ast.BoolOp):
        result: Any = None
        for v in node.values:
            result = _eval(v, ns)
            if isinstance(node.op, ast.And) and not result:
                return result
            if isinstance(node.op, ast.Or) and result:
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, ns)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(node.op, ast.USub):
            return -value
        raise TemplateError(f"operator {type(node.op).__name__} is not allowed")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise TemplateError(f"operator {type(node.op).__name__} is not allowed")
        return op(_eval(node.left, ns), _eval(node.right, ns))
    if isinstance(node, ast.Compare):
        left = _eval(node.left, ns)
        for op_node, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, ns)
            if not _CMPOPS[type(op_node)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, ns) if _eval(node.test, ns) else _eval(node.orelse, ns)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval(e, ns) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_eval(k, ns): _eval(v, ns) for k, v in zip(node.keys, node.values) if k is not None}
    raise TemplateError(f"{type(node).__name__} is not allowed")


def _split_filters(source: str) -> list[str]:
    """Split ``expr|f1|f2`` on top-level ``|`` (not inside quotes or brackets)."""
    parts, buf, depth, quote = [], [], 0, ""
    for ch in source:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


# --- template tree ----------------------------------------------------------------------


@dataclass
class _Text:
    text: str


@dataclass
class _Output:
    expr: _Expr
    filters: list[_Expr]


@dataclass
class _If:
    branches: list[tuple[_Expr | None, list[Any]]] = field(default_factory=list)


@dataclass
class _For:
    names: list[str]
    iterable: _Expr
    body: list[Any] = field(default_factory=list)


@dataclass
class _Default:
    name: str
    expr: _Expr


@dataclass
class _Py:
    pos: _Pos


def _lex(src: str) -> list[tuple[str, str, int]]:
    """Tokens ``("text", s, offset)`` and ``("tag", content, offset)`` with Tempita's trimming."""
    tokens: list[tuple[str, str, int]] = []
    last = 0
    kill: list[tuple[int, int]] = []  # source ranges removed by the whole-line rule
    for m in _TAG.finditer(src):
        if m.start() > last:
            tokens.append(("text", src[last : m.start()], last))
        content = m.group(1).strip()
        tokens.append(("tag", content, m.start()))
        last = m.end()
        if _STATEMENT.match(content) or content in _SINGLE:
            line_start = src.rfind("\n", 0, m.start()) + 1
            nl = src.find("\n", m.end())
            line_end = len(src) if nl == -1 else nl + 1
            before = src[line_start : m.start()]
            after = src[m.end() : line_end]
            if not before.strip() and not after.strip():
                kill.append((line_start, line_end))
    if last < len(src):
        tokens.append(("text", src[last:], last))
    if not kill:
        return tokens
    out: list[tuple[str, str, int]] = []
    for kind, text, off in tokens:
        if kind == "text":
            segments = [(off, off + len(text))]
            for a, b in kill:
                cut: list[tuple[int, int]] = []
                for s, e in segments:
                    if b <= s or a >= e:
                        cut.append((s, e))
                        continue
                    if s < a:
                        cut.append((s, a))
                    if b < e:
                        cut.append((b, e))
                segments = cut
            text = "".join(src[s:e] for s, e in segments)
            if not text:
                continue
        out.append((kind, text, off))
    return out


def _parse(src: str) -> list[Any]:
    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = []  # (block node, body being filled)
    body = root
    for kind, content, off in _lex(src):
        pos = _pos(src, off)
        if kind == "text":
            body.append(_Text(content))
            continue
        if content.startswith("#"):
            continue
        if content.startswith("py:"):
            body.append(_Py(pos))
            continue
        word = content.split(None, 1)[0] if content else ""
        rest = content[len(word) :].strip()
        if word == "if":
            node = _If()
            node.branches.append((_Expr.parse(rest, pos), []))
            body.append(node)
            stack.append((node, body))
            body = node.branches[-1][1]
        elif word in ("elif", "else"):
            if not stack or not isinstance(stack[-1][0], _If) or stack[-1][0].branches[-1][0] is None:
                raise TemplateError(f"{{{{{word}}}}} without a matching {{{{if}}}} at {pos}")
            node = stack[-1][0]
            node.branches.append((_Expr.parse(rest, pos) if word == "elif" else None, []))
            body = node.branches[-1][1]
        elif word == "endif":
            if not stack or not isinstance(stack[-1][0], _If):
                raise TemplateError(f"{{{{endif}}}} without a matching {{{{if}}}} at {pos}")
            _, body = stack.pop()
        elif word == "for":
            m = re.match(r"^([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s+in\s+(.+)$", rest, re.S)
            if not m:
                raise TemplateError(f"bad {{{{for}}}} at {pos}: expected 'for NAME in EXPR'")
            loop = _For([n.strip() for n in m.group(1).split(",")], _Expr.parse(m.group(2), pos))
            body.append(loop)
            stack.append((loop, body))
            body = loop.body
        elif word == "endfor":
            if not stack or not isinstance(stack[-1][0], _For):
                raise TemplateError(f"{{{{endfor}}}} without a matching {{{{for}}}} at {pos}")
            _, body = stack.pop()
        elif word == "default":
            m = re.match(r"^([A-Za-z_]\w*)\s*=\s*(.+)$", rest, re.S)
            if not m:
                raise TemplateError(f"bad {{{{default}}}} at {pos}: expected 'default NAME = EXPR'")
            body.append(_Default(m.group(1), _Expr.parse(m.group(2), pos)))
        elif word in ("def", "enddef", "inherit", "break", "continue"):
            raise TemplateError(f"{{{{{word}}}}} is not supported by the lab's Tempita subset at {pos}")
        else:
            parts = _split_filters(content)
            body.append(_Output(_Expr.parse(parts[0], pos), [_Expr.parse(p, pos) for p in parts[1:]]))
    if stack:
        what = "if" if isinstance(stack[-1][0], _If) else "for"
        raise TemplateError(f"unclosed {{{{{what}}}}} at end of template")
    return root


def _render(nodes: list[Any], ns: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Output):
            value = node.expr.eval(ns)
            for f in node.filters:
                fn = f.eval(ns)
                if not _callable_ok(fn):
                    raise TemplateError(f"filter {f.source!r} is not allowed at {f.pos}")
                value = fn(value)
            if value is None:
                continue
            out.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        elif isinstance(node, _If):
            for cond, body in node.branches:
                if cond is None or cond.eval(ns):
                    _render(body, ns, out)
                    break
        elif isinstance(node, _For):
            for item in node.iterable.eval(ns):
                if len(node.names) == 1:
                    ns[node.names[0]] = item
                else:
                    values = tuple(item)
                    if len(values) != len(node.names):
                        raise TemplateError(
                            f"cannot unpack {len(values)} values into {len(node.names)} names at {node.iterable.pos}"
                        )
                    ns.update(zip(node.names, values))
                _render(node.body, ns, out)
        elif isinstance(node, _Default):
            if node.name not in ns:
                ns[node.name] = node.expr.eval(ns)
        elif isinstance(node, _Py):
            raise TemplateError(f"{{{{py:}}}} blocks are not supported by the lab's Tempita subset at {node.pos}")


class Template:
    """A parsed template; ``substitute(**context)`` renders it (context plus ``escape``)."""

    def __init__(self, source: str, name: str = "<template>"):
        self.name = name
        try:
            self._nodes = _parse(source)
        except TemplateError as exc:
            raise TemplateError(f"{name}: {exc}") from None

    def substitute(self, **context: Any) -> str:
        ns: dict[str, Any] = {
            f.__name__: f for f in _SAFE_FUNCS if isinstance(f, type) or f in (len, repr, sorted, min, max, abs)
        }
        ns.update({"escape": ESCAPE, "None": None, "True": True, "False": False})
        ns.update(context)
        out: list[str] = []
        try:
            _render(self._nodes, ns, out)
        except TemplateError as exc:
            raise TemplateError(f"{self.name}: {exc}") from None
        return "".join(out)
