"""gateway/cohort.py against docs/rollouts.md section 3: the doc's own example
blocks (``json cohort-fleet``, ``text cohort``, ``text cohort-error``), every
error with its exact message, and properties: a tree written as text parses
back equal, a parsed cohort selects what a reference evaluation of the tree
selects, `not` selects the complement, and no text raises anything but
CohortError (deep nesting and huge inputs included)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from firmware.pb.peer.protocol import MAX_INT
from gateway.cohort import (
    CHANNELS,
    MAX_DEPTH,
    MAX_TERMS,
    MAX_TEXT,
    All,
    And,
    Cohort,
    DeviceFacts,
    Key,
    Node,
    Not,
    Op,
    Or,
    ReleaseRef,
    Term,
    Version,
    parse,
    walk,
)
from gateway.errors import CohortError, GatewayError

from ..docs.markdown import DOCS, Example, parse_examples, section

DOC = (DOCS / "rollouts.md").read_text(encoding="utf-8")
EXAMPLES = parse_examples("\n".join(section(DOC, "3. Cohorts", "rollouts.md")), "rollouts.md")
_FIELD = re.compile(r"^(selects|canonical|error):\s?(.*)$")

_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the doc's examples -------------------------------------------------------


def _examples(tag: str) -> list[Example]:
    return [e for e in EXAMPLES if e.tag == tag]


def _split(example: Example) -> tuple[str, dict[str, str]]:
    """The expression of an example block, and its `field: value` lines."""
    lines = example.body.split("\n")
    first = next(i for i, line in enumerate(lines) if _FIELD.match(line))
    fields = {}
    for line in lines[first:]:
        m = _FIELD.match(line)
        assert m, f"{example}: {line!r} is not a selects:, canonical: or error: line"
        fields[m[1]] = m[2]
    return "\n".join(lines[:first]), fields


def _fleet() -> dict[str, DeviceFacts]:
    [block] = _examples("cohort-fleet")
    return {
        d["id"]: DeviceFacts(**{**d, "tags": frozenset(d["tags"]), "caps": frozenset(d["caps"])})
        for d in block.value()
    }


def test_the_doc_has_its_examples() -> None:
    assert {e.tag for e in EXAMPLES} == {"cohort", "cohort-fleet", "cohort-error"}
    assert len(_examples("cohort")) >= 15
    assert len(_examples("cohort-error")) >= 10


def test_the_doc_states_the_limits() -> None:
    limits = " ".join(" ".join(section(DOC, "3.6", "rollouts.md")).split())
    for stated in (
        f"longer than {MAX_TEXT} characters",
        f"than {MAX_DEPTH} levels",
        f"than {MAX_TERMS} terms",
    ):
        assert stated in limits


@pytest.mark.parametrize("example", _examples("cohort"), ids=str)
def test_doc_example_selects_as_documented(example: Example) -> None:
    text, fields = _split(example)
    cohort = parse(text)
    fleet = _fleet()
    assert {d for d, facts in fleet.items() if cohort.matches(facts)} == set(fields["selects"].split())
    assert cohort.text == fields.get("canonical", text)
    assert parse(cohort.text) == cohort


@pytest.mark.parametrize("example", _examples("cohort-error"), ids=str)
def test_doc_error_reads_as_documented(example: Example) -> None:
    text, fields = _split(example)
    with pytest.raises(CohortError) as caught:
        parse(text)
    assert str(caught.value) == fields["error"]


# ---- every error, by name -----------------------------------------------------

# The messages' recurring tails, each written once
_EMPTY = "cohort is empty: write all to select every device"
_UNCLOSED = "string never closed (no closing '\"')"
_DEEP = "nested more than 64 levels deep (each '(' and 'not' is a level)"
_ALONE = "'all' stands alone: it selects every device, so it takes no 'and', 'or' or 'not'"
_KEY = "expected a key, 'not' or '('"
_KEYS = "the keys are model, board, channel, tag, cap, id, release, counter, runtime"
_ID = "is not a device id: 1-32 of a-z, 0-9, - and _, starting with a letter or digit"
_REF = "write MODEL@COUNTER, as thermostat@2, or factory"
_WITHIN_1 = "the counter is not an integer within 1 and 9007199254740991"
_WITHIN_0 = "is not an integer within 0 and 9007199254740991"
_VERSION = "is not a version: MAJOR.MINOR.PATCH, as 0.2.0 or 1.0.0-rc.1"
_CHANNELS = "the channels are stable, beta and canary"
_END = "the end of the text"
_OP = "expected an operator"
_VALUE = "expected a value after tag=, found"
_FACTORY = "counter 0 is the factory set: write release=factory"

# name: (text, message); the column, where there is one, is the message's own
ERRORS: dict[str, tuple[Any, str]] = {
    "not_text": (b"all", "a cohort is text, not bytes"),
    "too_long": ("tag=" + "a" * (MAX_TEXT - 3), "cohort is 4097 characters long; at most 4096"),
    "empty": ("", _EMPTY),
    "blank": (" \t\r\n", _EMPTY),
    "unexpected_character": ("tag=lab;", "column 8: unexpected character ';'"),
    "non_ascii_word": ("tag=café", "column 8: unexpected character 'é'"),
    "bang_without_equals": ("tag!lab", "column 4: '!' without '=': write '!=', or 'not' before a term"),
    "unknown_escape": (r'tag="a\nb"', r"column 7: unknown escape \n in a string: the escapes are \" and \\"),
    "control_character": ('tag="a\x1bb"', r"column 7: control character '\x1b' in a string"),
    "lone_surrogate": ('tag="a\ud800"', r"column 7: lone surrogate '\ud800' in a string"),
    "string_never_closed": ('tag="lab', f"column 5: {_UNCLOSED}"),
    "backslash_at_the_end": ('tag="lab\\', f"column 5: {_UNCLOSED}"),
    "close_without_open": ("tag=a)", "column 6: ')' without a matching '('"),
    "open_never_closed": ("(tag=a", f"column 7: expected ')' to close the '(' of column 1, found {_END}"),
    "no_and_or": ("tag=a tag=b", "column 7: expected 'and', 'or' or the end of the text, found 'tag'"),
    "too_deep_parentheses": ("(" * 65 + "tag=a" + ")" * 65, f"column 65: {_DEEP}"),
    "too_deep_nots": ("not " * 65 + "tag=a", f"column 257: {_DEEP}"),
    "too_many_terms": ("id in (" + ",".join(["a"] * 1001) + ")", "column 2008: more than 1000 terms"),
    "all_with_and": ("all and tag=a", f"column 1: {_ALONE}"),
    "not_all": ("not all", f"column 5: {_ALONE}"),
    "key_missing": ("tag=a and", f"column 10: {_KEY}, found {_END}"),
    "key_quoted": ('"tag"=a', f"column 1: {_KEY}, found the string 'tag'"),
    "key_is_a_keyword": ("or tag=a", f"column 1: {_KEY}, found 'or'"),
    "unknown_key": ("colour=red", f"column 1: unknown key 'colour': {_KEYS}"),
    "in_on_another_key": ("tag in (a, b)", "column 5: only id takes 'in' and a list: write tag=A or tag=B"),
    "operator_missing": ("model x", f"column 7: {_OP} after model ('=' or '!='), found 'x'"),
    "id_operator_missing": ("id", f"column 3: {_OP} after id ('=', '!=' or 'in'), found {_END}"),
    "operator_not_taken": ("model<thermostat", "column 6: model takes '=' or '!=', not '<'"),
    "value_missing": ("tag=)", f"column 5: {_VALUE} ')'"),
    "value_keyword": ("tag=Not", f"column 5: {_VALUE} the keyword 'Not': write \"Not\" for the word"),
    "value_empty": ('tag=""', 'column 5: empty value ""'),
    "unknown_channel": ("channel=Beta", f"column 9: unknown channel 'Beta': {_CHANNELS}"),
    "long_value": ("channel=" + "x" * 100, f"column 9: unknown channel '{'x' * 40}...': {_CHANNELS}"),
    "not_a_device_id": ("id=TH-01", f"column 4: 'TH-01' {_ID}"),
    "not_a_device_id_in_a_list": ("id in (th-01, _x)", f"column 15: '_x' {_ID}"),
    "list_without_parenthesis": ("id in th-01", "column 7: expected '(' after id in, found 'th-01'"),
    "list_empty": ("id in ()", "column 8: expected a device id, found ')'"),
    "list_no_comma": ("id in (a b)", "column 10: expected ',' or ')' in the list of column 7, found 'b'"),
    "list_trailing_comma": ("id in (a,)", "column 10: expected a device id, found ')'"),
    "release_without_counter": ("release=thermostat", f"column 9: release 'thermostat': {_REF}"),
    "release_without_model": ("release=@2", f"column 9: release '@2': {_REF}"),
    "release_counter_zero": ("release=t@00", f"column 9: release 't@00': {_FACTORY}"),
    "release_counter_not_integer": ("release=t@2a", f"column 9: release 't@2a': {_WITHIN_1}"),
    "release_too_large": (f"release=t@{MAX_INT + 1}", f"column 9: release 't@{MAX_INT + 1}': {_WITHIN_1}"),
    "counter_negative": ("counter=-1", f"column 9: counter '-1' {_WITHIN_0}"),
    "counter_too_large": ("counter>9007199254740992", f"column 9: counter '9007199254740992' {_WITHIN_0}"),
    "counter_not_integer": ("counter>=1.5", f"column 10: counter '1.5' {_WITHIN_0}"),
    "runtime_not_a_version": ("runtime>0.2", f"column 9: runtime '0.2' {_VERSION}"),
    "runtime_leading_zero": ("runtime=0.02.0", f"column 9: runtime '0.02.0' {_VERSION}"),
}


@pytest.mark.parametrize(("text", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_error(text: Any, message: str) -> None:
    with pytest.raises(CohortError) as caught:
        parse(text)
    error = caught.value
    assert str(error) == message
    assert isinstance(error, GatewayError)
    assert error.code == "bad_cohort"
    m = re.match(r"column (\d+): ", message)
    assert error.column == (int(m[1]) if m else None)


def test_the_limits_themselves_parse() -> None:
    assert len(parse("tag=" + "a" * (MAX_TEXT - 4)).text) == MAX_TEXT
    deep = parse("(" * MAX_DEPTH + "tag=a" + ")" * MAX_DEPTH)
    assert deep == parse("tag=a")
    nots = parse("not " * MAX_DEPTH + "tag=a")
    assert parse(nots.text) == nots
    many = parse("id in (" + ",".join(["a"] * MAX_TERMS) + ")")
    assert many == parse("id in (a)")


# ---- keys, pinning, versions ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys", "pinned"),
    [
        ("all", set(), False),
        ("release=thermostat@3", {"release"}, True),
        ("release=factory", {"release"}, True),
        ("counter=3 and channel=beta", {"counter", "channel"}, True),
        ("channel=beta and (tag=a and release=thermostat@3)", {"channel", "tag", "release"}, True),
        ("release!=thermostat@3", {"release"}, False),
        ("counter>=3 and model=thermostat", {"counter", "model"}, False),
        ("release=thermostat@3 or release=thermostat@3", {"release"}, False),
        ("not release=thermostat@3", {"release"}, False),
        (
            "id in (a, b) and runtime<1.0.0 and cap=relay and board=b",
            {"id", "runtime", "cap", "board"},
            False,
        ),
    ],
)
def test_keys_and_release_pinned(text: str, keys: set[str], pinned: bool) -> None:
    cohort = parse(text)
    assert cohort.keys() == keys
    assert cohort.release_pinned() is pinned


def test_runtime_orders_by_semver_precedence() -> None:
    # semver.org 11's own sequence, with numbers of more digits than an int64 holds
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.2.0",
        "1.10.0",
        "2.0.0",
        "99999999999999999999.0.0",
    ]
    for i, v in enumerate(ordered):
        below = parse(f"runtime<{v}")
        same = parse(f"runtime={v}+build.5")
        for j, w in enumerate(ordered):
            facts = _facts(runtime=w)
            assert below.matches(facts) is (j < i), (w, "<", v)
            assert same.matches(facts) is (j == i), (w, "=", v)


def test_list_ids_are_sorted_once() -> None:
    assert parse("id in (b, a, b)") == parse("id in (a, b)")
    assert parse("id in (b, a, b)").text == "id in (a, b)"


def _facts(**given: Any) -> DeviceFacts:
    base: dict[str, Any] = {
        "id": "th-01",
        "model": "thermostat",
        "board": "thermostat-v1",
        "runtime": "0.2.0",
        "channel": "beta",
        "tags": frozenset(),
        "caps": frozenset(),
        "counter": 0,
    }
    return DeviceFacts(**(base | given))


# ---- properties ----------------------------------------------------------------

# Small pools, shared by the trees and the facts, so that terms often hold;
# and any text, so that writing and reading back meet every character.
_POOL = ("thermostat", "shirt", "north wing", "and", "ALL", 'say "hi"', "back\\slash", "x.y@z:1+2-3")
_texts = st.one_of(
    st.sampled_from(_POOL),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=6),
)
_ids = st.one_of(
    st.sampled_from(("th-01", "sh-01", "all", "in", "0")),
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True),
)
_counters = st.one_of(st.integers(0, 3), st.integers(0, MAX_INT))
_numbers = st.one_of(st.sampled_from(("0", "1")), st.sampled_from(("2", "10", str(10**25))))
_pre = st.lists(st.sampled_from(("rc", "1", "2", "11", "x-y", "0a")), min_size=1, max_size=2)
_versions = st.one_of(
    # one core, so that pre-releases and builds meet
    st.sampled_from(("1.0.0", "1.0.0-rc.1", "1.0.0-rc.2", "1.0.0-rc.11", "1.0.0-rc", "1.0.0-1", "1.0.0+b7")),
    st.builds(
        lambda core, pre, build: ".".join(core) + ("-" + ".".join(pre) if pre else "") + (build or ""),
        st.lists(_numbers, min_size=3, max_size=3),
        st.none() | _pre,
        st.sampled_from((None, "+b7", "+x.1")),
    ),
)
_releases = st.one_of(
    st.just(ReleaseRef(None, 0)),
    st.builds(ReleaseRef, _texts, st.one_of(st.integers(1, 3), st.integers(1, MAX_INT))),
)
_EQUALITY = st.sampled_from((Op.EQ, Op.NE))
_ORDERED = st.sampled_from((Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE))

_terms = st.one_of(
    *(st.builds(Term, st.just(k), _EQUALITY, _texts) for k in (Key.MODEL, Key.BOARD, Key.TAG, Key.CAP)),
    st.builds(Term, st.just(Key.CHANNEL), _EQUALITY, st.sampled_from(CHANNELS)),
    st.builds(Term, st.just(Key.ID), _EQUALITY, _ids),
    st.builds(Term, st.just(Key.ID), st.just(Op.IN), st.frozensets(_ids, min_size=1, max_size=4)),
    st.builds(Term, st.just(Key.RELEASE), _EQUALITY, _releases),
    st.builds(Term, st.just(Key.COUNTER), _ORDERED, _counters),
    st.builds(Term, st.just(Key.RUNTIME), _ORDERED, _versions.map(Version)),
)


@st.composite
def _trees(draw: st.DrawFn) -> Node:
    """A tree of up to 8 terms and 4 nots, joined in any shape: a run of
    neighbours becomes an and or an or, a part a not, until one is left."""
    parts: list[Node] = draw(st.lists(_terms, min_size=1, max_size=8))
    nots = draw(st.integers(0, 4))
    while len(parts) > 1 or nots:
        if nots and (len(parts) == 1 or draw(st.booleans())):
            i = draw(st.integers(0, len(parts) - 1))
            parts[i] = Not(parts[i])
            nots -= 1
        else:
            i = draw(st.integers(0, len(parts) - 2))
            j = draw(st.integers(i + 2, min(len(parts), i + 3)))
            joined = tuple(parts[i:j])
            parts[i:j] = [And(joined) if draw(st.booleans()) else Or(joined)]
    return parts[0]


_cohorts = st.integers(0, 19).flatmap(lambda n: _trees() if n else st.just(All())).map(Cohort)
_facts_st = st.builds(
    DeviceFacts,
    id=_ids,
    model=st.none() | _texts,
    board=st.none() | _texts,
    runtime=st.none() | _versions | st.sampled_from(("0.2", "01.0.0", "junk", "")),
    channel=st.sampled_from((*CHANNELS, "other")),
    tags=st.frozensets(_texts, max_size=3),
    caps=st.frozensets(_texts, max_size=3),
    counter=_counters,
)


def _depth(node: Node) -> int:
    if isinstance(node, Not):
        return 1 + _depth(node.node)
    if isinstance(node, And | Or):
        return 1 + max(_depth(n) for n in node.nodes)
    return 0


def _written(cohort: Cohort) -> str:
    """The cohort's text, for a tree within the limits (with room for one more `not (...)`)."""
    text = cohort.text
    assume(_depth(cohort.tree) <= MAX_DEPTH - 2 and len(text) <= MAX_TEXT - 10)
    return text


# The reference: semver precedence as semver.org 11 words it, and each key
# read straight from the doc's table, apart from the module's code.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?",
    re.ASCII,
)


def _semver_cmp(a: str, b: str) -> int | None:
    ma, mb = _SEMVER.fullmatch(a), _SEMVER.fullmatch(b)
    if ma is None or mb is None:
        return None
    for x, y in zip(ma.groups()[:3], mb.groups()[:3], strict=True):
        if int(x) != int(y):
            return -1 if int(x) < int(y) else 1
    pa, pb = ma[4], mb[4]
    if pa is None or pb is None:
        return (pa is None) - (pb is None)
    for x, y in zip(pa.split("."), pb.split("."), strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() or y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(pa.split(".")) > len(pb.split("."))) - (len(pa.split(".")) < len(pb.split(".")))


def _reference(node: Node, f: DeviceFacts) -> bool:
    if isinstance(node, All):
        return True
    if isinstance(node, Not):
        return not _reference(node.node, f)
    if isinstance(node, And):
        return all(_reference(n, f) for n in node.nodes)
    if isinstance(node, Or):
        return any(_reference(n, f) for n in node.nodes)
    key, op, v = node.key, node.op, node.value
    cmp: int | None
    if op is Op.IN:
        assert isinstance(v, frozenset)
        return f.id in v
    if key is Key.RUNTIME:
        assert isinstance(v, Version)
        cmp = _semver_cmp(f.runtime, v.text) if f.runtime is not None else None
    elif key is Key.COUNTER:
        assert isinstance(v, int)
        cmp = (f.counter > v) - (f.counter < v)
    elif key is Key.RELEASE:
        assert isinstance(v, ReleaseRef)
        cmp = 0 if f.counter == v.counter and v.model in (None, f.model) else 1
    elif key in (Key.TAG, Key.CAP):
        cmp = 0 if v in (f.tags if key is Key.TAG else f.caps) else 1
    else:
        have = {Key.MODEL: f.model, Key.BOARD: f.board, Key.CHANNEL: f.channel, Key.ID: f.id}[key]
        cmp = 0 if have is not None and have == v else 1
    if op is Op.NE:
        return cmp != 0
    if cmp is None:
        return False
    return {Op.EQ: cmp == 0, Op.LT: cmp < 0, Op.LE: cmp <= 0, Op.GT: cmp > 0, Op.GE: cmp >= 0}[op]


@_settings
@given(_cohorts)
def test_written_cohort_reads_back_equal(cohort: Cohort) -> None:
    text = _written(cohort)
    again = parse(text)
    assert again == cohort
    assert again.text == text == str(again)


@_settings
@given(_cohorts, st.lists(_facts_st, min_size=1, max_size=6))
def test_parsed_cohort_selects_what_the_reference_does(cohort: Cohort, fleet: list[DeviceFacts]) -> None:
    _written(cohort)
    for part in walk(cohort.tree):  # each part on its own too: a wrong term can hide in a whole
        parsed = parse(Cohort(part).text)
        for facts in fleet:
            assert parsed.matches(facts) is _reference(part, facts), (Cohort(part).text, facts)


@_settings
@given(_trees().map(Cohort), st.lists(_facts_st, min_size=1, max_size=4))
def test_not_selects_the_complement(cohort: Cohort, fleet: list[DeviceFacts]) -> None:
    negated = parse(f"not ({_written(cohort)})")
    for facts in fleet:
        assert negated.matches(facts) is not cohort.matches(facts)


# Pieces of text to put together anyhow: tokens, broken ones, and terms whole.
# fmt: off
_SOUP = (
    "(", ")", ",", "not", "NOT", "and", "or", "all", "in", "=", "!=", "!", "<", "<=", ">", ">=", "model",
    "id", "tag", "cap", "channel", "counter", "runtime", "release", "beta", "th-01", "0.2.0", "1.0.0-rc.1",
    "3", "-1", "thermostat@2", "factory", '"x y"', '"', '\\"', "\\", "é", "\x00", "\ud800", " ", "\n",
)
_PHRASES = (
    "(", ")", "not", "and", "or", "model=thermostat", "tag=lab", 'tag="north wing"', "counter>=3",
    "runtime<0.3.0-rc.1", "id in (th-01, sh-01)", "release=factory", "channel=beta", "cap!=relay",
)
# fmt: on


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=120),
        st.lists(st.sampled_from(_SOUP), max_size=40).map(" ".join),
        st.lists(st.sampled_from(_SOUP), max_size=40).map("".join),
        st.lists(st.sampled_from(_PHRASES), max_size=30).map(" ".join),
        st.tuples(st.integers(0, 3000), st.sampled_from(("(", "not ", "((not ")), st.text(max_size=20)).map(
            lambda t: t[1] * t[0] + t[2]
        ),
    )
)
def test_any_text_parses_or_raises_cohort_error(text: str) -> None:
    try:
        cohort = parse(text)
    except CohortError as error:
        assert error.column is None or 1 <= error.column <= len(text) + 1
    else:
        assert parse(cohort.text) == cohort


@pytest.mark.parametrize(
    "text",
    [
        "(" * MAX_TEXT,
        "(" * 2000 + "tag=a" + ")" * 2000,
        "not " * (MAX_TEXT // 4),
        "not (" * 800 + "tag=a",
        "x" * 10**6,
        "tag=a and " * 10**5,
        '"' * MAX_TEXT,
        "\\" * MAX_TEXT,
        "id in (" + ",a" * 2000,
    ],
    ids=["parens", "balanced", "nots", "not-parens", "word", "terms", "quotes", "backslashes", "list"],
)
def test_huge_and_deep_texts_raise_cohort_error(text: str) -> None:
    with pytest.raises(CohortError):
        parse(text)
