"""Cohorts: the expression that selects the devices a rollout may touch
(docs/rollouts.md 3), e.g. ``model=thermostat and channel=beta and not tag=lab``.

Pure: `parse` turns the text into a `Cohort`, a tree of frozen values, and
`Cohort.matches` tells whether one device, as the caller describes it in a
`DeviceFacts`, belongs to it. Every input is bounded (characters, nesting,
terms), so no text can make the parser or a match run deep or long, and
anything wrong is a `CohortError` that says what and at which column.
"""

from __future__ import annotations

import enum
import operator
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from firmware.pb.ids import valid_id
from firmware.pb.peer.protocol import MAX_INT

from .errors import CohortError

MAX_TEXT = 4096  # characters of a cohort's text
MAX_DEPTH = 64  # levels of nesting: each "(" and each "not" is one
MAX_TERMS = 1000  # terms; each id of an `id in (...)` list is one
CHANNELS = ("stable", "beta", "canary")
FACTORY = "factory"  # the release value of counter 0


class Key(enum.StrEnum):
    """What a term tests of a device."""

    MODEL = "model"
    BOARD = "board"
    CHANNEL = "channel"
    TAG = "tag"
    CAP = "cap"
    ID = "id"
    RELEASE = "release"
    COUNTER = "counter"
    RUNTIME = "runtime"


class Op(enum.StrEnum):
    """How a term compares the device's fact with its value."""

    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"  # id only: one of a list


_EQUALITY = (Op.EQ, Op.NE)
_ORDERED = (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE)
_OPS: dict[Key, tuple[Op, ...]] = {k: _EQUALITY for k in Key} | {Key.COUNTER: _ORDERED, Key.RUNTIME: _ORDERED}
_COMPARE: dict[Op, Callable[[Any, Any], Any]] = {
    Op.EQ: operator.eq,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
}
_KEYWORDS = frozenset({"and", "or", "not", "in", "all"})
_WORD = re.compile(r"[A-Za-z0-9_.@:+-]+")
_SPACE = " \t\r\n"
_SHOWN = 40  # characters of a token or value quoted in a message


# ---- values --------------------------------------------------------------------

_Num = tuple[int, str]  # (digits, digits): a number without leading zeros, ordered by value
_Ident = tuple[int, int, str]  # a pre-release identifier: numeric ones before the others
_VersionKey = tuple[_Num, _Num, _Num, tuple[int, tuple[_Ident, ...]]]
_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRE_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"({_NUMBER})\.({_NUMBER})\.({_NUMBER})"
    rf"(?:-({_PRE_IDENT}(?:\.{_PRE_IDENT})*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)


@lru_cache(maxsize=1024)
def _version_key(text: str | None) -> _VersionKey | None:
    """Semver precedence of a version, or None when it is not one: numbers as
    numbers (compared as digit strings, so any length is exact), a pre-release
    before its release, the build ignored."""
    m = _SEMVER.fullmatch(text) if text is not None else None
    if m is None:
        return None
    major, minor, patch, pre = m.groups()
    idents = tuple((0, len(i), i) if i.isdigit() else (1, 0, i) for i in pre.split(".")) if pre else ()
    return (len(major), major), (len(minor), minor), (len(patch), patch), (0 if pre else 1, idents)


@dataclass(frozen=True)
class Version:
    """A runtime version as written (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]),
    ordered by semver precedence."""

    text: str

    @property
    def key(self) -> _VersionKey | None:
        return _version_key(self.text)


@dataclass(frozen=True)
class ReleaseRef:
    """The release a device runs: MODEL@COUNTER, or the factory set (model
    None, counter 0) whatever the model."""

    model: str | None
    counter: int

    def __str__(self) -> str:
        return FACTORY if self.model is None else f"{self.model}@{self.counter}"


Value = str | int | Version | ReleaseRef | frozenset[str]


# ---- the tree ------------------------------------------------------------------


@dataclass(frozen=True)
class All:
    """Every device: the text ``all``, alone."""


@dataclass(frozen=True)
class Term:
    """KEY OP VALUE. The value's type follows the key: str (model, board,
    channel, tag, cap, id), frozenset[str] (id in), ReleaseRef (release), int
    (counter), Version (runtime)."""

    key: Key
    op: Op
    value: Value


@dataclass(frozen=True)
class Not:
    node: Node


@dataclass(frozen=True)
class And:
    nodes: tuple[Node, ...]  # two or more


@dataclass(frozen=True)
class Or:
    nodes: tuple[Node, ...]  # two or more


Node = All | Term | Not | And | Or


@dataclass(frozen=True)
class DeviceFacts:
    """One device as a cohort sees it. model, board and runtime are None until
    the device has said them (its hello); counter is its running release's
    counter, 0 for the factory set."""

    id: str
    model: str | None
    board: str | None
    runtime: str | None
    channel: str
    tags: frozenset[str]
    caps: frozenset[str]
    counter: int


@dataclass(frozen=True)
class Cohort:
    """A parsed cohort. Equal cohorts have equal trees; `text` is the
    canonical rendering, which parses back to an equal Cohort."""

    tree: Node

    def matches(self, facts: DeviceFacts) -> bool:
        """True when the device belongs to the cohort. A fact the device has
        not given (model None, a runtime that is not semver) makes a term on
        it false, and so its `not` true: plain boolean logic."""
        return _matches(self.tree, facts)

    @property
    def text(self) -> str:
        return _render(self.tree)

    def __str__(self) -> str:
        return self.text

    def keys(self) -> frozenset[Key]:
        """The keys the expression tests (none for ``all``)."""
        return frozenset(n.key for n in walk(self.tree) if isinstance(n, Term))

    def release_pinned(self) -> bool:
        """True when every device the cohort can match runs one known release:
        the expression is a conjunction (``and``, at any depth of parentheses,
        or a single term) one of whose parts is ``release=...`` or
        ``counter=...``. A rollout ships one model's release, so a counter
        names one release there."""
        return any(
            isinstance(n, Term) and n.op is Op.EQ and n.key in (Key.RELEASE, Key.COUNTER)
            for n in _conjuncts(self.tree)
        )


def _conjuncts(node: Node) -> Iterator[Node]:
    if isinstance(node, And):
        for n in node.nodes:
            yield from _conjuncts(n)
    else:
        yield node


def walk(node: Node) -> Iterator[Node]:
    """The node and every node below it, parents first."""
    yield node
    if isinstance(node, Not):
        yield from walk(node.node)
    elif isinstance(node, And | Or):
        for n in node.nodes:
            yield from walk(n)


# ---- matching ------------------------------------------------------------------


def _matches(node: Node, facts: DeviceFacts) -> bool:
    if isinstance(node, Term):
        return _holds(node, facts)
    if isinstance(node, And):
        return all(_matches(n, facts) for n in node.nodes)
    if isinstance(node, Or):
        return any(_matches(n, facts) for n in node.nodes)
    if isinstance(node, Not):
        return not _matches(node.node, facts)
    return True  # All


def _holds(term: Term, facts: DeviceFacts) -> bool:
    if term.op is Op.NE:  # exactly `not KEY=VALUE`
        return not _test(term.key, Op.EQ, term.value, facts)
    return _test(term.key, term.op, term.value, facts)


def _test(key: Key, op: Op, v: Value, facts: DeviceFacts) -> bool:
    if isinstance(v, frozenset):
        return facts.id in v
    if isinstance(v, ReleaseRef):
        return facts.counter == v.counter and (v.model is None or facts.model == v.model)
    if isinstance(v, Version):
        have, want = _version_key(facts.runtime), v.key
        return have is not None and want is not None and bool(_COMPARE[op](have, want))
    if isinstance(v, int):
        return bool(_COMPARE[op](facts.counter, v))
    if key is Key.TAG:
        return v in facts.tags
    if key is Key.CAP:
        return v in facts.caps
    if key is Key.MODEL:
        return facts.model == v
    if key is Key.BOARD:
        return facts.board == v
    if key is Key.CHANNEL:
        return facts.channel == v
    return facts.id == v


# ---- rendering -----------------------------------------------------------------


def _render(node: Node) -> str:
    if isinstance(node, Term):
        return _render_term(node)
    if isinstance(node, Not):
        return "not " + _group(node.node, (And, Or))
    if isinstance(node, And):
        return " and ".join(_group(n, (And, Or)) for n in node.nodes)
    if isinstance(node, Or):
        return " or ".join(_group(n, (Or,)) for n in node.nodes)
    return "all"


def _group(node: Node, parenthesized: tuple[type, ...]) -> str:
    # `and` binds more tightly than `or` and `not` more than both: a part is
    # parenthesized where its structure would otherwise read differently
    text = _render(node)
    return f"({text})" if isinstance(node, parenthesized) else text


def _render_term(term: Term) -> str:
    v = term.value
    if isinstance(v, frozenset):
        return f"{term.key} in ({', '.join(_quote(i) for i in sorted(v))})"
    text = v.text if isinstance(v, Version) else str(v)
    return f"{term.key}{term.op}{_quote(text)}"


def _quote(value: str) -> str:
    """A value as a bare word where it reads as one, else as a string."""
    if _WORD.fullmatch(value) and value.lower() not in _KEYWORDS:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- parsing -------------------------------------------------------------------


def parse(text: str) -> Cohort:
    """The cohort an expression describes (grammar: docs/rollouts.md 3).
    Raises CohortError, whose message names the column, the token and what
    was expected."""
    if not isinstance(text, str):
        raise CohortError(f"a cohort is text, not {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise CohortError(f"cohort is {len(text)} characters long; at most {MAX_TEXT}")
    return _Parser(text).cohort()


@dataclass(frozen=True)
class _Token:
    kind: str  # word, string, op, "(", ")", ",", end
    text: str  # a string's value, unescaped
    column: int


def _error(column: int, message: str) -> CohortError:
    return CohortError(f"column {column}: {message}", column)


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "the end of the text"
    if tok.kind == "string":
        return "the string " + _show(tok.text)
    return _show(tok.text)


def _listed(items: Sequence[str], last: str = "or") -> str:
    """a, b or c"""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        column = i + 1
        if c in _SPACE:
            i += 1
        elif c in "(),":
            out.append(_Token(c, c, column))
            i += 1
        elif c in "<>=!":
            op = text[i : i + 2] if text[i : i + 2] in ("<=", ">=", "!=") else c
            if op == "!":
                raise _error(column, "'!' without '=': write '!=', or 'not' before a term")
            out.append(_Token("op", op, column))
            i += len(op)
        elif c == '"':
            value, i = _string(text, i)
            out.append(_Token("string", value, column))
        else:
            m = _WORD.match(text, i)
            if m is None:
                raise _error(column, f"unexpected character {c!r}")
            out.append(_Token("word", m[0], column))
            i = m.end()
    out.append(_Token("end", "", len(text) + 1))
    return out


def _string(text: str, start: int) -> tuple[str, int]:
    """The value of the string that opens at text[start], and where it ends."""
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(chars), i + 1
        if c == "\\":
            escaped = text[i + 1 : i + 2]
            if not escaped:
                break
            if escaped not in ('"', "\\"):
                shown = "\\" + escaped if escaped.isprintable() else f"\\ and {escaped!r}"
                raise _error(i + 1, f'unknown escape {shown} in a string: the escapes are \\" and \\\\')
            chars.append(escaped)
            i += 2
            continue
        category = unicodedata.category(c)
        if category in ("Cc", "Cs"):
            what = "control character" if category == "Cc" else "lone surrogate"
            raise _error(i + 1, f"{what} {c!r} in a string")
        chars.append(c)
        i += 1
    raise _error(start + 1, "string never closed (no closing '\"')")


class _Parser:
    """Recursive descent over the tokens; depth and terms are counted as it
    goes, so the recursion stays within MAX_DEPTH levels."""

    def __init__(self, text: str) -> None:
        self._tokens = _tokens(text)
        self._at = 0
        self._terms = 0

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _next(self) -> _Token:
        tok = self._tokens[self._at]
        if tok.kind != "end":
            self._at += 1
        return tok

    @staticmethod
    def _keyword(tok: _Token) -> str | None:
        word = tok.text.lower()
        return word if tok.kind == "word" and word in _KEYWORDS else None

    def cohort(self) -> Cohort:
        first = self._peek()
        if first.kind == "end":
            raise CohortError("cohort is empty: write all to select every device")
        if self._keyword(first) == "all" and self._tokens[1].kind == "end":
            return Cohort(All())
        tree = self._or(0)
        tok = self._peek()
        if tok.kind == ")":
            raise _error(tok.column, "')' without a matching '('")
        if tok.kind != "end":
            raise _error(tok.column, f"expected 'and', 'or' or the end of the text, found {_describe(tok)}")
        return Cohort(tree)

    def _or(self, depth: int) -> Node:
        return self._joined("or", Or, lambda: self._and(depth))

    def _and(self, depth: int) -> Node:
        return self._joined("and", And, lambda: self._unary(depth))

    def _joined(self, word: str, kind: type[And | Or], part: Callable[[], Node]) -> Node:
        """One part, or several joined by `word`."""
        nodes = [part()]
        while self._keyword(self._peek()) == word:
            self._next()
            nodes.append(part())
        return nodes[0] if len(nodes) == 1 else kind(tuple(nodes))

    def _unary(self, depth: int) -> Node:
        tok = self._peek()
        if self._keyword(tok) != "not" and tok.kind != "(":
            return self._term()
        if depth >= MAX_DEPTH:
            raise _error(
                tok.column, f"nested more than {MAX_DEPTH} levels deep (each '(' and 'not' is a level)"
            )
        self._next()
        if tok.kind != "(":
            return Not(self._unary(depth + 1))
        node = self._or(depth + 1)
        close = self._next()
        if close.kind != ")":
            raise _error(
                close.column,
                f"expected ')' to close the '(' of column {tok.column}, found {_describe(close)}",
            )
        return node

    def _count(self, column: int) -> None:
        self._terms += 1
        if self._terms > MAX_TERMS:
            raise _error(column, f"more than {MAX_TERMS} terms")

    def _term(self) -> Term:
        tok = self._next()
        word = self._keyword(tok)
        if word == "all":
            raise _error(
                tok.column, "'all' stands alone: it selects every device, so it takes no 'and', 'or' or 'not'"
            )
        if tok.kind != "word" or word is not None:
            raise _error(tok.column, f"expected a key, 'not' or '(', found {_describe(tok)}")
        try:
            key = Key(tok.text.lower())
        except ValueError:
            keys = ", ".join(Key)
            raise _error(tok.column, f"unknown key {_show(tok.text)}: the keys are {keys}") from None
        op_tok = self._next()
        ops = _listed([repr(str(o)) for o in _OPS[key]] + (["'in'"] if key is Key.ID else []))
        if self._keyword(op_tok) == "in":
            if key is not Key.ID:
                raise _error(op_tok.column, f"only id takes 'in' and a list: write {key}=A or {key}=B")
            return self._id_list()
        if op_tok.kind != "op":
            raise _error(
                op_tok.column, f"expected an operator after {key} ({ops}), found {_describe(op_tok)}"
            )
        op = Op(op_tok.text)
        if op not in _OPS[key]:
            raise _error(op_tok.column, f"{key} takes {ops}, not {str(op)!r}")
        value_tok = self._next()
        raw = self._value(value_tok, f"a value after {key}{op}")
        self._count(tok.column)
        return Term(key, op, _value(key, raw, value_tok.column))

    def _id_list(self) -> Term:
        opening = self._next()
        if opening.kind != "(":
            raise _error(opening.column, f"expected '(' after id in, found {_describe(opening)}")
        ids: set[str] = set()
        while True:
            tok = self._next()
            ids.add(_device_id(self._value(tok, "a device id"), tok.column))
            self._count(tok.column)
            sep = self._next()
            if sep.kind == ")":
                return Term(Key.ID, Op.IN, frozenset(ids))
            if sep.kind != ",":
                raise _error(
                    sep.column,
                    f"expected ',' or ')' in the list of column {opening.column}, found {_describe(sep)}",
                )

    def _value(self, tok: _Token, expected: str) -> str:
        if tok.kind == "string":
            if not tok.text:
                raise _error(tok.column, 'empty value ""')
            return tok.text
        word = self._keyword(tok)
        if tok.kind == "word" and word is not None:
            raise _error(
                tok.column,
                f'expected {expected}, found the keyword {tok.text!r}: write "{tok.text}" for the word',
            )
        if tok.kind != "word":
            raise _error(tok.column, f"expected {expected}, found {_describe(tok)}")
        return tok.text


def _value(key: Key, raw: str, column: int) -> Value:
    """A term's value, checked as its key wants it."""
    if key is Key.CHANNEL and raw not in CHANNELS:
        raise _error(column, f"unknown channel {_show(raw)}: the channels are {_listed(CHANNELS, 'and')}")
    if key is Key.ID:
        return _device_id(raw, column)
    if key is Key.RELEASE:
        return _release(raw, column)
    if key is Key.COUNTER:
        return _counter(raw, column)
    if key is Key.RUNTIME:
        if _version_key(raw) is None:
            raise _error(
                column, f"runtime {_show(raw)} is not a version: MAJOR.MINOR.PATCH, as 0.2.0 or 1.0.0-rc.1"
            )
        return Version(raw)
    return raw


def _device_id(raw: str, column: int) -> str:
    if not valid_id(raw):
        raise _error(
            column,
            f"{_show(raw)} is not a device id: 1-32 of a-z, 0-9, - and _, starting with a letter or digit",
        )
    return raw


def _counter(raw: str, column: int) -> int:
    # (int() of a text within MAX_TEXT characters is always under its 4300-digit limit)
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_INT:
        raise _error(column, f"counter {_show(raw)} is not an integer within 0 and {MAX_INT}")
    return int(raw)


def _release(raw: str, column: int) -> ReleaseRef:
    if raw == FACTORY:
        return ReleaseRef(None, 0)
    model, at, counter = raw.rpartition("@")
    if not (model and at):
        raise _error(column, f"release {_show(raw)}: write MODEL@COUNTER, as thermostat@2, or factory")
    if not (counter.isascii() and counter.isdigit()) or not 0 < int(counter) <= MAX_INT:
        if counter.strip("0") == "" and counter:
            raise _error(column, f"release {_show(raw)}: counter 0 is the factory set: write release=factory")
        raise _error(column, f"release {_show(raw)}: the counter is not an integer within 1 and {MAX_INT}")
    return ReleaseRef(model, int(counter))
