"""Reading the normative docs: tagged fenced blocks, sections, tables, and the
string constants a source file passes to a call (for tables that list codes)."""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Example:
    """One tagged fenced block of a document: ```lang tag params..."""

    lang: str
    tag: str
    params: tuple[str, ...]
    body: str
    line: int
    doc: str = "protocol.md"

    @property
    def payload(self) -> bytes:
        return self.body.encode("utf-8")

    def value(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ```{' '.join((self.lang, self.tag, *self.params))}"


_FENCE = re.compile(r"^```(\S+)\s+(\S+)(.*)$")


def parse_examples(text: str, name: str = "protocol.md") -> list[Example]:
    """Every tagged fenced block of a markdown text (untagged ones are prose)."""
    out: list[Example] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            i += 1
            continue
        m = _FENCE.match(line)
        end = i + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        assert end < len(lines), f"{name}:{i + 1}: fence never closed"
        if m:
            body = "\n".join(lines[i + 1 : end])
            out.append(Example(m[1], m[2], tuple(m[3].split()), body, i + 1, name))
        i = end + 1
    return out


def section(text: str, heading: str, name: str = "protocol.md") -> list[str]:
    """The lines under the heading that starts with `heading`, up to the next
    heading of the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and line.lstrip("#").strip().startswith(heading):
            level = len(line) - len(line.lstrip("#"))
            out = []
            for follow in lines[i + 1 :]:
                if follow.startswith("#") and len(follow) - len(follow.lstrip("#")) <= level:
                    break
                out.append(follow)
            return out
    raise AssertionError(f"{name} has no section {heading!r}")


def table(lines: list[str], header: str | None = None) -> list[list[str]]:
    """Body rows of the first markdown table in lines (or of the first whose
    header row starts with `header`), cells stripped."""
    if header is not None:
        starts = [i for i, line in enumerate(lines) if line.startswith(header)]
        assert starts, f"no table with header {header!r}"
        lines = lines[starts[0] :]
    rows: list[str] = []
    for line in lines:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows[2:]]


def code_names(cell: str) -> list[str]:
    """The `backquoted` names in a table cell or a sentence."""
    return re.findall(r"`([^`]+)`", cell)


def _calls(source: ModuleType | Path) -> Iterator[ast.Call]:
    path = source if isinstance(source, Path) else Path(inspect.getfile(source))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def string_args(source: ModuleType | Path, call: str, position: int) -> set[str]:
    """String constants passed at `position` to calls of `call` in a source file."""
    out = set()
    for node in _calls(source):
        if _call_name(node) == call and len(node.args) > position:
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
    return out


def keyword_values(source: ModuleType | Path, call: str, keyword: str) -> list[Any]:
    """Constant values given as keyword= to calls of `call` in a source file."""
    out = []
    for node in _calls(source):
        if _call_name(node) == call:
            for kw in node.keywords:
                if kw.arg == keyword and isinstance(kw.value, ast.Constant):
                    out.append(kw.value.value)
    return out


def module_strings(source: ModuleType | Path) -> dict[str, Any]:
    """Module-level NAME = <string or tuple of strings> assignments."""
    path = source if isinstance(source, Path) else Path(inspect.getfile(source))
    out: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, str) or (
                isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            ):
                out[node.targets[0].id] = value
    return out


def all_strings(source: ModuleType | Path) -> set[str]:
    """Every string constant in a source file."""
    path = source if isinstance(source, Path) else Path(inspect.getfile(source))
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
