"""Bounded YAML loading: text over the byte cap is refused unread, node count and depth
(aliases counted as what they expand to) are refused while composing, numbers PyYAML would
build in quadratic time are refused, no message quotes the document, and within the
bounds the result is what PyYAML itself builds, with libyaml and without."""

from __future__ import annotations

import math
import string
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opamp_operator.fleet import validation as v
from opamp_operator.fleet.drift import drift_reasons
from opamp_operator.fleet.validation import ConfigSyntaxError, load_yaml, load_yaml_checked

PARSERS = ["libyaml", "python"]


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with libyaml (what PyYAML here is built with) and once with the
    pure-Python fallback."""
    assert yaml.__with_libyaml__  # else the libyaml runs would test the fallback twice
    name = str(request.param)
    if name == "python":
        monkeypatch.setattr(v, "LIBYAML", False)
    return name


def refusal(text: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigSyntaxError) as caught:
        load_yaml_checked(text, **kwargs)
    return str(caught.value)


def laughs(levels: int) -> str:
    """Each level two aliases of the one before: 2**levels nodes once expanded."""
    lines = ["l0: &l0 [lol, lol]"]
    lines += [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------- the byte cap


def test_text_over_the_byte_cap_is_refused_before_it_is_parsed(parser: str) -> None:
    # not YAML at all, yet the size is all the message speaks of: nothing was parsed
    assert refusal("a: [" + "x" * 200, max_bytes=100) == "too large: more than 100 bytes"
    # 2-byte characters: few enough characters, too many bytes
    assert refusal("a: " + "é" * 60, max_bytes=100) == "too large: 123 bytes, more than 100"
    assert load_yaml("a: " + "x" * 97, max_bytes=100) == {"a": "x" * 97}


def test_the_default_cap_holds_for_validation_and_drift() -> None:
    assert v.MAX_YAML_BYTES == 4 * 1024 * 1024
    at_cap = "a: " + "x" * (v.MAX_YAML_BYTES - 4) + "\n"
    assert len(at_cap.encode()) == v.MAX_YAML_BYTES
    assert load_yaml(at_cap) == {"a": "x" * (v.MAX_YAML_BYTES - 4)}
    over = at_cap + "b"
    assert refusal(over) == f"too large: more than {v.MAX_YAML_BYTES} bytes"
    assert [p.message for p in v.validate_config(over)] == [
        f"too large: more than {v.MAX_YAML_BYTES} bytes"
    ]
    assert drift_reasons("a: 1\n", over) == [
        f"the effective config is too large: more than {v.MAX_YAML_BYTES} bytes"
    ]


def test_a_lone_surrogate_is_refused_without_quoting_it(parser: str) -> None:
    assert refusal("a: sk_live_\ud800") == (
        "not valid YAML: a lone surrogate (not a Unicode character) at character 12"
    )


# ---------------------------------------------------------------- nodes and depth, while composing


def test_the_node_bound_stops_the_parser_where_it_is_crossed(
    parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(v, "MAX_NODES", 50)
    assert load_yaml("[" + "a, " * 49 + "]") == ["a"] * 49
    # a syntax error after the 51st node is never reached
    assert refusal("[" + "a, " * 50 + "] ]") == (
        "not valid YAML: the document has more than 50 nodes"
    )
    # keys count, as they did when the graph was walked after composing
    assert refusal("{" + ", ".join(f"k{i}: v" for i in range(25)) + "}") == (
        "not valid YAML: the document has more than 50 nodes"
    )


def test_an_alias_counts_every_node_it_stands_for(
    parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(v, "MAX_NODES", 50)
    ten = "a: &a [" + ", ".join("x" * 10) + "]\n"  # a sequence of 10 scalars: 11 nodes
    assert load_yaml(ten + "b: [*a, *a, *a]\n")["b"][2] == ["x"] * 10
    assert refusal(ten + "b: [*a, *a, *a, *a]\n]") == (
        "not valid YAML: the document expands to more than 50 nodes (excessive aliasing)"
    )


@pytest.mark.parametrize("levels", [40, 1000])
def test_exponential_aliasing_is_refused_at_once(parser: str, levels: int) -> None:
    started = time.perf_counter()
    message = refusal(laughs(levels))
    assert time.perf_counter() - started < 1.0  # 2**1000 nodes: refused by arithmetic
    assert message == (
        f"not valid YAML: the document expands to more than {v.MAX_NODES} nodes "
        "(excessive aliasing)"
    )
    expanded = load_yaml(laughs(14))["l13"]  # 2**16 nodes in all: within the bound
    for _ in range(13):
        assert expanded[0] is expanded[1]  # one object: aliases are not copied
        expanded = expanded[0]
    assert expanded == ["lol", "lol"]


def test_the_depth_bound_stops_the_parser_where_it_is_crossed(parser: str) -> None:
    assert load_yaml("a: " + nested(v.MAX_DEPTH) + "\n") is not None
    assert refusal("a: " + nested(v.MAX_DEPTH + 1) + " ]") == (
        f"too deeply nested: more than {v.MAX_DEPTH} levels"
    )
    assert refusal("a: " + "[" * 20_000) == f"too deeply nested: more than {v.MAX_DEPTH} levels"


def test_an_alias_is_as_deep_as_what_it_stands_for(parser: str) -> None:
    """An anchor 60 levels deep used 46 levels down nests 105 levels once expanded, past
    the bound, though no node of the text is deeper than 60: the walks over the parsed
    document recurse through the expansion."""
    anchor = "a: &a " + nested(60) + "\n"
    assert refusal(anchor + "b: " + "[" * 45 + "*a" + "]" * 45 + "\n") == (
        f"too deeply nested: more than {v.MAX_DEPTH} levels"
    )
    shallower = load_yaml(anchor + "b: " + "[" * 40 + "*a" + "]" * 40 + "\n")
    assert shallower["b"][0][0][0] is not None


def test_a_recursive_alias_is_refused_with_its_path(parser: str) -> None:
    message = "refers to a node that contains it (recursive anchor)"
    assert refusal("a: &x [*x]\n") == f"not valid YAML: an alias at a[0] {message}"
    assert refusal("a: {b: &x {c: [1, {d: *x}]}}\n") == (
        f"not valid YAML: an alias at a.b.c[1].d {message}"
    )
    assert refusal("&x [*x]\n") == f"not valid YAML: an alias at [0] {message}"


# ---------------------------------------------------------------- what the constructor builds


def test_numbers_too_long_to_build_cheaply_are_refused(parser: str) -> None:
    started = time.perf_counter()
    sexagesimal = "a: 1" + ":1" * 300_000  # PyYAML: minutes, multiplying ever larger ints
    assert refusal(sexagesimal) == (
        f"not valid YAML: a number longer than {v.MAX_NUMBER_CHARS} characters (line 1, column 4)"
    )
    assert time.perf_counter() - started < 2.0
    assert load_yaml("a: 0x" + "f" * (v.MAX_NUMBER_CHARS - 2)) == {
        "a": 16 ** (v.MAX_NUMBER_CHARS - 2) - 1
    }
    assert "number longer" in refusal("a: 0x" + "f" * (v.MAX_NUMBER_CHARS - 1))
    assert "number longer" in refusal("a: !!float " + "1" * (v.MAX_NUMBER_CHARS + 1))
    assert load_yaml("a: '" + "1" * 5000 + "'") == {"a": "1" * 5000}  # text stays text


@pytest.mark.parametrize(
    "text",
    [
        "a: !!int sk_live_X\n",
        "a: !!float sk_live_X\n",
        "a: !!timestamp sk_live_X\n",
        "a: !!binary sk_live_X!\n",
        "a: !!map sk_live_X\n",
        "a: !sk_live_X x\n",
        "a: *sk_live_X\n",
        "a: &sk_live_X 1\nb: &sk_live_X 2\n",
        "a: 'sk_live_X\n",
        "a: sk_live_X\n\tb: 1\n",
        "a: sk_live_X\n b: c: d\n",
        "{sk_live_X: [\n",
        "a: @sk_live_X\n",
        "a: `sk_live_X\n",
        "a: sk_live_X\x07\n",
        "%TAG !s! tag:sk_live_X,2024:\n---\na: !s!x 1\n",
        "a: !<sk_live_X> x\n",
        'a: "sk_live_X \\q"\n',
    ],
)
def test_no_message_quotes_the_document(parser: str, text: str) -> None:
    assert "sk_live" not in refusal(text)
    assert "sk_live" not in " ".join(str(p) for p in v.validate_config(text))


def test_duplicate_keys_are_found_while_composing(parser: str) -> None:
    _, problems = load_yaml_checked("a: {b: 1, b: 2}\nc: &m {d: 1, d: 2}\ne: *m\n")
    assert [(p.path, p.message) for p in problems] == [
        (
            "a.b",
            'key "b" is defined more than once (lines 1 and 1); '
            "the Collector refuses duplicate keys",
        ),
        (
            "c.d",
            'key "d" is defined more than once (lines 2 and 2); '
            "the Collector refuses duplicate keys",
        ),
    ]
    # the same text under another tag is another key; merge keys are not keys
    assert load_yaml_checked("a: {1: x, '1': y, <<: {z: 1}, <<: {w: 2}}\n")[1] == []


# ---------------------------------------------------------------- within the bounds

_REFERENCE = {"libyaml": "CSafeLoader", "python": "SafeLoader"}

_YAMLISH = st.text(
    alphabet=string.ascii_letters[:4] + "019 \n\t:-[]{},&*!|>'\"#?<.~",
    max_size=80,
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    # not the line breaks PyYAML's dumper writes raw and its reader normalises (NEL, LS)
    | st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=8)
    | st.dates()
)
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_SCALARS, inner, max_size=4),
    max_leaves=25,
)


def _reference(parser: str, text: str) -> tuple[bool, Any]:
    loader = getattr(yaml, _REFERENCE[parser])
    try:
        return True, yaml.load(text, Loader=loader)  # noqa: S506 - the safe loaders only
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return False, None


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN included (repr keeps the types: 1 is not True, nor 1.0)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return repr(a) == repr(b)


@pytest.mark.parametrize("parser_name", PARSERS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_YAMLISH)
def test_any_text_loads_as_pyyaml_loads_it_or_is_refused(parser_name: str, text: str) -> None:
    """Within the bounds, what PyYAML builds (libyaml's parser, or its own); refused only
    when PyYAML refuses it too, or for a bound PyYAML does not have."""
    saved = v.LIBYAML
    v.LIBYAML = parser_name == "libyaml"
    try:
        try:
            ours: tuple[bool, Any] = (True, load_yaml(text))
        except ConfigSyntaxError as error:
            ours = (False, str(error))
    finally:
        v.LIBYAML = saved
    loaded, theirs = _reference(parser_name, text)
    if ours[0]:
        assert loaded
        assert _same(ours[1], theirs)
    elif loaded:
        assert "recursive anchor" in ours[1] or ours[1].startswith("too deeply nested")


@pytest.mark.parametrize("parser_name", PARSERS)
@settings(max_examples=200, deadline=None)
@given(_DATA, st.sampled_from([True, False, None]))
def test_dumped_data_loads_back(parser_name: str, data: Any, flow: bool | None) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    saved = v.LIBYAML
    v.LIBYAML = parser_name == "libyaml"
    try:
        assert load_yaml(text) == data
    finally:
        v.LIBYAML = saved
