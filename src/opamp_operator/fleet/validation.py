"""Collector config validation, before any agent sees the config.

The admission webhook and the reconciler both call `validate_config`, so a fleet whose
config the Collector would refuse is rejected with a message naming each problem and
where it is, instead of surfacing later as a FAILED remote config status on every agent.

The rules are the Collector's own (otelcol.Config.Validate, the pipelines config, the
component id syntax and the pipeline graph's connector checks); what needs a component's
factory (its settings schema, which signals a connector supports) is out of reach here.
Values using `${scheme:...}` substitutions are resolved by the Collector at load time, so
anything whose meaning depends on one is accepted rather than guessed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# Component kinds, in the order the Collector's config lists them.
RECEIVERS = "receivers"
PROCESSORS = "processors"
EXPORTERS = "exporters"
CONNECTORS = "connectors"
EXTENSIONS = "extensions"
KINDS = (RECEIVERS, PROCESSORS, EXPORTERS, CONNECTORS, EXTENSIONS)
_SINGULAR = {
    RECEIVERS: "receiver",
    PROCESSORS: "processor",
    EXPORTERS: "exporter",
    CONNECTORS: "connector",
    EXTENSIONS: "extension",
}
# Pipeline signals; profiles sits behind a Collector feature gate but is a real signal.
SIGNALS = ("traces", "metrics", "logs", "profiles")
PIPELINE_KEYS = (RECEIVERS, PROCESSORS, EXPORTERS)

# An alias-heavy document can expand exponentially; yaml.v3 refuses "excessive aliasing".
MAX_NODES = 200_000
# Collector configs nest about 10 deep; the walks over parsed documents (here, in drift,
# and PyYAML's dumper) recurse, so depth is bounded before any of them runs.
MAX_DEPTH = 100
MAX_YAML_BYTES = 4 * 1024 * 1024
"""The largest config text parsed (UTF-8 bytes); longer text is refused unread. A desired
config lives in a ConfigMap or the fleet object, which the API server keeps under about
1.5 MiB; an agent's effective config is that config re-serialised with every default
filled in, a few times larger. An OpAMP message may carry 64 MiB: this bound, not that
one, is what a hostile agent can make the operator parse per config."""
# The Collector's numbers are 64-bit; PyYAML builds `1:2:3:...` (sexagesimal) in quadratic
# time, and Python refuses to print an int of more than 4300 digits (`0x` + 4000 digits).
MAX_NUMBER_CHARS = 1000
LIBYAML = True
"""Parse with libyaml (C) when PyYAML has it; False forces the pure-Python parser."""

_TYPE_RE = re.compile(r"[a-zA-Z][0-9a-zA-Z_]{0,62}")
_MAX_NAME_BYTES = 1024
_PLAIN_KEY_RE = re.compile(r"[^.\[\]\s\"]+")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_UNBUILDABLE = "not valid YAML: a value cannot be built (a bad date, number or tag)"
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"  # libyaml's own bound: 1000 levels
# bool before int: a YAML boolean is a Python int too
_DESCRIPTIONS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (Mapping, "a mapping"),
    ((list, tuple), "a list"),
)

# Problem codes: stable, for callers that react to a kind of problem rather than its text.
YAML = "yaml"
DUPLICATE_KEY = "duplicate-key"
NOT_A_MAPPING = "not-a-mapping"
EMPTY = "empty"
INVALID_SECTION = "invalid-section"
INVALID_ID = "invalid-id"
INVALID_SETTINGS = "invalid-settings"
AMBIGUOUS_ID = "ambiguous-id"
MISSING_SERVICE = "missing-service"
MISSING_PIPELINES = "missing-pipelines"
NO_PIPELINES = "no-pipelines"
UNKNOWN_SIGNAL = "unknown-signal"
INVALID_PIPELINE = "invalid-pipeline"
UNKNOWN_KEY = "unknown-key"
NO_RECEIVERS = "no-receivers"
NO_EXPORTERS = "no-exporters"
UNDEFINED = "undefined-component"
DUPLICATE_PROCESSOR = "duplicate-processor"
CONNECTOR_ONE_SIDED = "connector-one-sided"
CONNECTOR_CYCLE = "connector-cycle"


@dataclass(frozen=True)
class Problem:
    """One reason the Collector would refuse the config; `path` is "" for the document."""

    path: str
    message: str
    code: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigSyntaxError(ValueError):
    """The text is not a YAML document the Collector could load."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (Problem("", message, YAML),)


# ---------------------------------------------------------------- paths and descriptions


def child_path(parent: str, key: object) -> str:
    """`parent.key`, or `parent["odd.key"]` when the key would make the path ambiguous."""
    if isinstance(key, str) and _PLAIN_KEY_RE.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    if isinstance(key, str | int | float | bool) or key is None:
        segment = json.dumps(key, ensure_ascii=False)
    else:
        segment = json.dumps(str(key), ensure_ascii=False)
    return f"{parent}[{segment}]"


def index_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def describe(value: object) -> str:
    """What a value is, in words a config author recognises."""
    if value is None:
        return "null"
    for kind, words in _DESCRIPTIONS:
        if isinstance(value, kind):
            return words
    return f"a {type(value).__name__}"


def is_substitution(value: object) -> bool:
    """A `${...}` value: the Collector resolves it at load time, so its content is unknown."""
    return isinstance(value, str) and "${" in value


# ---------------------------------------------------------------- YAML loading


class _LoadError(Exception):
    """Why loading stopped, in words that never quote the document."""


def _at(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _mark(error: yaml.YAMLError) -> str:
    return _at(getattr(error, "problem_mark", None) or getattr(error, "context_mark", None))


def _yaml_message(error: yaml.YAMLError, libyaml: bool) -> str:
    """The parser's reason and position. libyaml's reasons are fixed phrases; PyYAML's own
    scanner puts document characters into its `problem`, so from it only the `context`
    (also a fixed phrase) is kept."""
    problem = getattr(error, "problem", None) if libyaml else None
    context = getattr(error, "context", None)
    if problem:
        text = f"{problem} ({context})" if context else str(problem)
    elif context:
        text = str(context)
    else:
        lines = str(error).splitlines()  # a ReaderError: the code of one character
        text = lines[0] if lines else type(error).__name__
    return f"not valid YAML: {text}{_mark(error)}"


def _cannot_build(construct: Any, bounded: bool) -> Any:
    """`construct` (a SafeConstructor method) refusing, with the node's position, what
    Python cannot build (its message would quote the value); with `bounded`, also number
    text longer than MAX_NUMBER_CHARS, which PyYAML builds in quadratic time (sexagesimal
    `1:2:3:...`) or Python cannot print back (a huge hexadecimal)."""

    def build(loader: Any, node: Any) -> Any:
        if bounded and isinstance(node.value, str) and len(node.value) > MAX_NUMBER_CHARS:
            raise _LoadError(
                f"not valid YAML: a number longer than {MAX_NUMBER_CHARS} characters"
                f"{_at(node.start_mark)}"
            )
        try:
            return construct(loader, node)
        except (ValueError, OverflowError) as error:
            raise _LoadError(f"{_UNBUILDABLE}{_at(node.start_mark)}") from error

    return build


class _PyLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, the fallback when PyYAML was built without libyaml."""


_C_LOADER: type[Any] | None = None
if yaml.__with_libyaml__:

    class _CLoader(yaml.CSafeLoader):
        """libyaml's scanner and parser (C) under PyYAML's safe resolver and constructor."""

    _C_LOADER = _CLoader

for _loader in (_PyLoader, _C_LOADER):
    if _loader is None:
        continue
    _loader.add_constructor(_INT_TAG, _cannot_build(SafeConstructor.construct_yaml_int, True))
    _loader.add_constructor(_FLOAT_TAG, _cannot_build(SafeConstructor.construct_yaml_float, True))
    _loader.add_constructor(
        _TIMESTAMP_TAG, _cannot_build(SafeConstructor.construct_yaml_timestamp, False)
    )


class _Frame:
    """A collection being composed: its node, the parent it sits in and at which key or
    index (`segment`: None while it is a mapping's key), the node count when it started,
    and the height of what it holds so far."""

    __slots__ = (
        "anchor",
        "depth",
        "height",
        "key",
        "node",
        "parent",
        "path",
        "seen",
        "segment",
        "start",
    )

    def __init__(
        self,
        node: SequenceNode | MappingNode,
        parent: _Frame | None,
        segment: str | int | None,
        start: int,
        anchor: str | None,
    ) -> None:
        self.node = node
        self.parent = parent
        self.depth: int = parent.depth + 1 if parent is not None else 0
        self.segment = segment
        self.start = start
        self.anchor = anchor
        self.height = 0
        self.key: Node | None = None  # a mapping's key whose value comes next
        self.seen: dict[tuple[str, str], Node] | None = (
            {} if isinstance(node, MappingNode) else None
        )
        self.path: str | None = None

    def child_segment(self) -> str | int | None:
        """Where the next node goes: an index, a key's text, or None for a key itself."""
        if self.seen is None:
            return len(self.node.value)
        if self.key is None:
            return None
        return self.key.value if isinstance(self.key, ScalarNode) else "?"

    def at(self) -> str:
        if self.path is None:
            base = self.parent.at() if self.parent is not None else ""
            self.path = _extend(base, self.segment)
        return self.path


def _extend(path: str, segment: str | int | None) -> str:
    if segment is None:
        return path
    return index_path(path, segment) if isinstance(segment, int) else child_path(path, segment)


class _Composer:
    """PyYAML's Composer with the bounds applied while it composes: every node counts,
    an alias as many nodes as its anchor expands to, and at its anchor's depth below it;
    so a document that expands past `max_nodes` or nests deeper than `max_depth` stops
    the parser where it crosses the bound, having built at most that much. Also notes
    duplicate keys (yaml.v3 refuses them; PyYAML silently keeps the last) and refuses
    recursive aliases, as the walks over parsed documents could not end.

    The SafeLoader has no path resolvers, so descend_resolver/ascend_resolver are left out.
    """

    def __init__(self, loader: Any, max_nodes: int, max_depth: int) -> None:
        self.loader = loader
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.anchors: dict[str, Node] = {}
        self.extents: dict[str, tuple[int, int]] = {}  # complete anchors: (nodes, height)
        self.count = 0
        self.aliased = False
        self.problems: list[Problem] = []

    def single_node(self) -> Node | None:
        get = self.loader.get_event
        get()  # StreamStartEvent
        if isinstance(get(), StreamEndEvent):
            return None
        root = self._root()
        get()  # DocumentEndEvent
        event = get()
        if not isinstance(event, StreamEndEvent):
            raise _LoadError(
                "not valid YAML: but found another document (expected a single document "
                f"in the stream){_at(event.start_mark)}"
            )
        return root

    def _over(self, depth: int) -> None:
        """Raise for the bound just crossed: the node count or `depth`."""
        if self.count > self.max_nodes:
            if self.aliased:
                raise _LoadError(
                    f"not valid YAML: the document expands to more than {self.max_nodes} "
                    "nodes (excessive aliasing)"
                )
            raise _LoadError(f"not valid YAML: the document has more than {self.max_nodes} nodes")
        if depth > self.max_depth:
            raise _LoadError(f"too deeply nested: more than {self.max_depth} levels")

    def _anchor(self, event: Any, node: Node) -> None:
        if event.anchor in self.anchors:
            raise _LoadError(f"not valid YAML: an anchor is defined twice{_at(event.start_mark)}")
        self.anchors[event.anchor] = node

    def _alias(self, event: Any, top: _Frame) -> tuple[Node, int]:
        """The anchored node and its height, counted as every node it expands to."""
        node = self.anchors.get(event.anchor)
        if node is None:
            raise _LoadError(
                f"not valid YAML: an alias names no anchor defined before it{_at(event.start_mark)}"
            )
        extent = self.extents.get(event.anchor)
        if extent is None:
            path = _extend(top.at(), top.child_segment())
            raise _LoadError(
                f"not valid YAML: an alias at {path or 'the top level'} refers to a node "
                "that contains it (recursive anchor)"
            )
        nodes, height = extent
        self.aliased = True
        self.count += nodes
        if self.count > self.max_nodes or top.depth + 1 + height > self.max_depth:
            self._over(top.depth + 1 + height)
        return node, height

    def _root(self) -> Node:
        """The events of one document's root node, composed without recursion: `top` is
        the innermost collection still open."""
        get = self.loader.get_event
        resolve = self.loader.resolve
        top: _Frame | None = None
        while True:
            event = get()
            kind = type(event)
            height = 0
            node: Node
            if kind is ScalarEvent:
                self.count += 1
                depth = top.depth + 1 if top is not None else 0
                if self.count > self.max_nodes or depth > self.max_depth:
                    self._over(depth)
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve(ScalarNode, event.value, event.implicit)
                node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
                if event.anchor is not None:
                    self._anchor(event, node)
                    self.extents[event.anchor] = (1, 0)
            elif kind is AliasEvent and top is not None:  # an anchor comes before its alias
                node, height = self._alias(event, top)
            elif kind is SequenceStartEvent or kind is MappingStartEvent:
                top = self._open(event, top)
                continue
            elif (kind is SequenceEndEvent or kind is MappingEndEvent) and top is not None:
                node, height = self._close(event, top)
                top = top.parent
            else:  # a parser keeps to the grammar; this is a broken one
                raise _LoadError(f"not valid YAML: unexpected {kind.__name__}")
            if top is None:
                return node
            self._attach(top, node, height)

    def _attach(self, top: _Frame, node: Node, height: int) -> None:
        if top.height <= height:
            top.height = height + 1
        seen = top.seen
        if seen is None:
            top.node.value.append(node)
        elif top.key is None:
            top.key = node
            if type(node) is ScalarNode and node.tag != _MERGE_TAG:
                first = seen.setdefault((node.tag, node.value), node)
                if first is not node:
                    self._duplicate(top, first, node)
        else:
            top.node.value.append((top.key, node))
            top.key = None

    def _open(self, event: Any, parent: _Frame | None) -> _Frame:
        self.count += 1
        depth = parent.depth + 1 if parent is not None else 0
        if self.count > self.max_nodes or depth > self.max_depth:
            self._over(depth)
        node_class = SequenceNode if type(event) is SequenceStartEvent else MappingNode
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(node_class, None, event.implicit)
        node = node_class(tag, [], event.start_mark, None, event.flow_style)
        if event.anchor is not None:
            self._anchor(event, node)
        segment = parent.child_segment() if parent is not None else None
        return _Frame(node, parent, segment, self.count - 1, event.anchor)

    def _close(self, event: Any, frame: _Frame) -> tuple[Node, int]:
        frame.node.end_mark = event.end_mark
        if frame.anchor is not None:
            self.extents[frame.anchor] = (self.count - frame.start, frame.height)
        return frame.node, frame.height

    def _duplicate(self, frame: _Frame, first: Node, key: Node) -> None:
        self.problems.append(
            Problem(
                child_path(frame.at(), key.value),
                f'key "{key.value}" is defined more than once (lines '
                f"{first.start_mark.line + 1} and {key.start_mark.line + 1}); the Collector "
                "refuses duplicate keys",
                DUPLICATE_KEY,
            )
        )


def _utf8(text: str, max_bytes: int) -> bytes:
    """The text as the parser reads it, refused when over `max_bytes` (before encoding when
    its length alone says so)."""
    if len(text) > max_bytes:
        raise _LoadError(f"too large: more than {max_bytes} bytes")
    try:
        data = text.encode()
    except UnicodeEncodeError as error:
        raise _LoadError(
            f"not valid YAML: a lone surrogate (not a Unicode character) at character "
            f"{error.start + 1}"
        ) from error
    if len(data) > max_bytes:
        raise _LoadError(f"too large: {len(data)} bytes, more than {max_bytes}")
    return data


def load_yaml_checked(text: str, *, max_bytes: int = MAX_YAML_BYTES) -> tuple[Any, list[Problem]]:
    """Parse one YAML document as the Collector would see it: the data (PyYAML's safe
    constructor) and the duplicate-key problems. Raises ConfigSyntaxError when the text is
    not loadable at all, with a message that names a position but never quotes the text
    (configs hold secrets).

    Bounded before anything is built: text over `max_bytes` is refused unparsed; libyaml
    parses (PyYAML's pure-Python parser when PyYAML lacks it, 4-40x slower); nodes are
    composed under MAX_NODES and MAX_DEPTH (see _Composer) and numbers over
    MAX_NUMBER_CHARS refused. The worst case is MAX_NODES nodes composed and constructed
    in Python, ~1.5-3 s on a 2-core machine (10-25 s without libyaml), where PyYAML's
    pure-Python loader took ~12 s and read text of any size; one 4 MiB scalar takes
    ~50 ms (benchmarks/drift_worst.py).
    """
    loader_class = _C_LOADER if LIBYAML else None
    libyaml = loader_class is not None
    try:
        data = _utf8(text, max_bytes)
        # PyYAML's reader refuses control characters already here, libyaml's when parsing
        loader = loader_class(data) if loader_class is not None else _PyLoader(text)
    except _LoadError as refused:
        raise ConfigSyntaxError(str(refused)) from None
    except yaml.YAMLError as error:
        raise ConfigSyntaxError(_yaml_message(error, libyaml)) from None
    composer = _Composer(loader, MAX_NODES, MAX_DEPTH)
    try:
        node = composer.single_node()
        if node is None:
            return None, []
        return loader.construct_document(node), composer.problems
    except _LoadError as refused:
        raise ConfigSyntaxError(str(refused)) from None
    except ConstructorError as error:
        raise ConfigSyntaxError(f"{_UNBUILDABLE}{_mark(error)}") from None
    except yaml.YAMLError as error:
        if getattr(error, "problem", None) == _LIBYAML_TOO_DEEP:
            raise ConfigSyntaxError(f"too deeply nested: more than {MAX_DEPTH} levels") from None
        raise ConfigSyntaxError(_yaml_message(error, libyaml)) from None
    except RecursionError:
        raise ConfigSyntaxError("too deeply nested for the YAML parser") from None
    except (ValueError, TypeError, AttributeError, OverflowError):
        # a constructor failing otherwise than the ones _cannot_build guards
        raise ConfigSyntaxError(_UNBUILDABLE) from None
    finally:
        loader.dispose()


def load_yaml(text: str, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The parsed document; raises ConfigSyntaxError. Duplicate keys keep the last value."""
    return load_yaml_checked(text, max_bytes=max_bytes)[0]


# ---------------------------------------------------------------- component ids


def _name_error(name: str) -> str | None:
    if len(name.encode()) > _MAX_NAME_BYTES:
        return f"the name is longer than {_MAX_NAME_BYTES} bytes"
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] in "ZS" or (category[0] == "C" and category != "Cn"):
            return f"the name may not contain whitespace, control characters or symbols ({ch!r})"
    return None


def parse_component_id(raw: str) -> tuple[str, str]:
    """`type[/name]` as the Collector parses it (each part trimmed), normalised back to
    text; raises ValueError with the Collector's reason for an invalid id."""
    type_part, sep, name_part = raw.partition("/")
    type_part = type_part.strip()
    name_part = name_part.strip()
    if not type_part:
        if sep:
            raise ValueError('the part before "/" must not be empty')
        raise ValueError("the id must not be empty")
    if sep and not name_part:
        raise ValueError('the part after "/" must not be empty')
    if not _TYPE_RE.fullmatch(type_part):
        raise ValueError(
            f'invalid type "{type_part}": a type starts with an ASCII letter and has only '
            "ASCII letters, digits and '_' (at most 63)"
        )
    if sep:
        error = _name_error(name_part)
        if error:
            raise ValueError(error)
    return type_part, name_part


def normalise_id(raw: str) -> str:
    """The id as the Collector prints it: `type` or `type/name`."""
    type_part, name = parse_component_id(raw)
    return f"{type_part}/{name}" if name else type_part


def component_type(raw: str) -> str:
    """The type of a component id (the part before "/"), as AvailableComponents keys it."""
    return raw.partition("/")[0].strip()


# ---------------------------------------------------------------- validation


def _undefined(role: str, ident: str, defined: Mapping[str, Mapping[str, str]]) -> str:
    where = f"{role} or {CONNECTORS}" if role in (RECEIVERS, EXPORTERS) else role
    message = f'references {_SINGULAR[role]} "{ident}", which is not defined under {where}'
    elsewhere = [kind for kind in KINDS if ident in defined[kind]]
    if elsewhere:
        message += f" (it is defined under {' and '.join(elsewhere)})"
    return message


def _pipeline_id_error(raw: str) -> str | None:
    signal, sep, name = raw.partition("/")
    signal, name = signal.strip(), name.strip()
    if not signal:
        return f'invalid pipeline id "{raw}": the signal before "/" must not be empty'
    if sep and not name:
        return f'invalid pipeline id "{raw}": the part after "/" must not be empty'
    if sep and (error := _name_error(name)):
        return f'invalid pipeline id "{raw}": {error}'
    if signal not in SIGNALS:
        return (
            f'pipeline "{raw}": unknown signal "{signal}" (a pipeline id is traces, metrics, '
            "logs or profiles, optionally followed by /name)"
        )
    return None


def _find_cycle(edges: Mapping[str, Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    """One cycle in the graph of pipelines linked by connectors, as (pipeline, connector)
    hops in order, or []."""
    state: dict[str, int] = {}  # 1 while on the current path, 2 when finished
    trail: list[tuple[str, str]] = []

    def visit(pid: str) -> list[tuple[str, str]]:
        state[pid] = 1
        for target, via in edges.get(pid, ()):
            trail.append((pid, via))
            if state.get(target) == 1:
                start = next(i for i, (p, _) in enumerate(trail) if p == target)
                return trail[start:]
            if target not in state and (found := visit(target)):
                return found
            trail.pop()
        state[pid] = 2
        return []

    for pid in edges:
        if pid not in state and (found := visit(pid)):
            return found
    return []


class _Validator:
    """One pass over a parsed config, collecting problems in document order.

    `defined` holds the components of each kind (normalised id -> key as written);
    `unknown` the kinds whose content cannot be known (a substitution, or a section that
    is not a mapping: reported once, not again for every reference to it). Connector
    uses are kept as (pipeline, path) in document order; `complete` turns False when a
    substitution hides some references, so the connector rules are not guessed.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.defined: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self.unknown: set[str] = set()
        self.as_exporter: dict[str, list[tuple[str, str]]] = {}
        self.as_receiver: dict[str, list[tuple[str, str]]] = {}
        self.complete = True

    def report(self, path: str, message: str, code: str) -> None:
        self.problems.append(Problem(path, message, code))

    # -- top-level component sections

    def sections(self, config: Mapping[Any, Any]) -> None:
        for kind in KINDS:
            value = config.get(kind)
            if value is None:
                continue
            if is_substitution(value):
                self.unknown.add(kind)
            elif not isinstance(value, Mapping):
                self.report(
                    kind,
                    f"must be a mapping of component ids to their settings, got {describe(value)}",
                    INVALID_SECTION,
                )
                self.unknown.add(kind)
            else:
                for key, settings in value.items():
                    self.definition(kind, key, settings)
        for ident, key in self.defined[CONNECTORS].items():
            for other in (EXPORTERS, RECEIVERS):
                if ident in self.defined[other]:
                    self.report(
                        child_path(CONNECTORS, key),
                        f'ambiguous id "{ident}": it is defined both as {_SINGULAR[other]} '
                        f"(under {other}) and as connector; rename one of them "
                        f'(e.g. the connector to "{ident}/connector")',
                        AMBIGUOUS_ID,
                    )

    def definition(self, kind: str, key: object, settings: object) -> None:
        path = child_path(kind, key)
        if not isinstance(key, str):
            self.report(path, f"a component id must be a string, got {describe(key)}", INVALID_ID)
            return
        try:
            ident = normalise_id(key)
        except ValueError as error:
            self.report(path, f'invalid component id "{key}": {error}', INVALID_ID)
            return
        self.defined[kind][ident] = key
        if not (settings is None or isinstance(settings, Mapping) or is_substitution(settings)):
            self.report(
                path,
                f'the settings of {_SINGULAR[kind]} "{ident}" must be a mapping (or empty), '
                f"got {describe(settings)}",
                INVALID_SETTINGS,
            )

    # -- references from the service section

    def reference(self, raw: object, path: str, role: str) -> str | None:
        """The normalised id a list entry references; None when it is unusable (reported)
        or unknowable (a substitution)."""
        if is_substitution(raw):
            return None
        if not isinstance(raw, str):
            self.report(path, f"must be a component id string, got {describe(raw)}", INVALID_ID)
            return None
        try:
            ident = normalise_id(raw)
        except ValueError as error:
            self.report(path, f'invalid component id "{raw}": {error}', INVALID_ID)
            return None
        kinds = (role, CONNECTORS) if role in (RECEIVERS, EXPORTERS) else (role,)
        if not any(kind in self.unknown or ident in self.defined[kind] for kind in kinds):
            self.report(path, _undefined(role, ident, self.defined), UNDEFINED)
            return None
        return ident

    def id_list(self, value: object, path: str, what: str) -> list[Any] | None:
        """The entries of a list of ids; None when unknowable or not a list (reported)."""
        if is_substitution(value):
            return None
        if value is None:
            return []
        if not isinstance(value, list):
            self.report(
                path, f"must be a list of {what} ids, got {describe(value)}", INVALID_SECTION
            )
            return None
        return value

    def service(self, config: Mapping[Any, Any]) -> None:
        service = config.get("service")
        if is_substitution(service):
            return
        if service is None:
            self.report(
                "service",
                "is missing: the Collector needs a service section with at least one pipeline",
                MISSING_SERVICE,
            )
        elif not isinstance(service, Mapping):
            self.report("service", f"must be a mapping, got {describe(service)}", INVALID_SECTION)
        else:
            refs = self.id_list(service.get(EXTENSIONS), "service.extensions", "extension")
            for i, raw in enumerate(refs or ()):
                self.reference(raw, index_path("service.extensions", i), EXTENSIONS)
            self.pipelines(service.get("pipelines"))

    def pipelines(self, pipelines: object) -> None:
        path = "service.pipelines"
        if is_substitution(pipelines):
            return
        if pipelines is None:
            self.report(
                path, "is missing: the Collector needs at least one pipeline", MISSING_PIPELINES
            )
        elif not isinstance(pipelines, Mapping):
            self.report(
                path,
                f"must be a mapping of pipeline ids to pipelines, got {describe(pipelines)}",
                INVALID_SECTION,
            )
        elif not pipelines:
            self.report(path, "has no pipelines: the Collector needs at least one", NO_PIPELINES)
        else:
            for raw_pid, pipe in pipelines.items():
                self.pipeline(raw_pid, pipe, child_path(path, raw_pid))
            if self.unknown & {RECEIVERS, EXPORTERS, CONNECTORS}:
                self.complete = False  # which references are connectors cannot be told
            if self.complete:
                self.connectors()

    def pipeline(self, raw_pid: object, pipe: object, path: str) -> None:
        if not isinstance(raw_pid, str):
            self.report(
                path, f"a pipeline id must be a string, got {describe(raw_pid)}", INVALID_ID
            )
            self.complete = False
            return
        if error := _pipeline_id_error(raw_pid):
            code = UNKNOWN_SIGNAL if error.startswith("pipeline ") else INVALID_ID
            self.report(path, error, code)
            self.complete = False
            return
        signal, sep, name = raw_pid.partition("/")
        pid = f"{signal.strip()}/{name.strip()}" if sep else signal.strip()
        if is_substitution(pipe):
            self.complete = False
            return
        if pipe is None:
            pipe = {}
        if not isinstance(pipe, Mapping):
            self.report(
                path,
                f"must be a mapping with receivers, processors and exporters, got {describe(pipe)}",
                INVALID_PIPELINE,
            )
            return
        for key in pipe:
            if key not in PIPELINE_KEYS:
                self.report(
                    child_path(path, key),
                    f'unknown key "{key}" in pipeline "{pid}" (a pipeline has receivers, '
                    "processors and exporters)",
                    UNKNOWN_KEY,
                )
        for role in PIPELINE_KEYS:
            self.pipeline_role(pid, role, pipe.get(role), child_path(path, role))

    def pipeline_role(self, pid: str, role: str, value: object, path: str) -> None:
        if is_substitution(value):
            self.complete = False
        refs = self.id_list(value, path, "component")
        if refs is None:
            return
        if not refs and role != PROCESSORS:
            self.report(
                path,
                f'pipeline "{pid}" must have at least one {_SINGULAR[role]}',
                NO_RECEIVERS if role == RECEIVERS else NO_EXPORTERS,
            )
        first_at: dict[str, int] = {}
        for i, raw in enumerate(refs):
            if is_substitution(raw):
                self.complete = False
            ident = self.reference(raw, index_path(path, i), role)
            if ident is None:
                continue
            if role == PROCESSORS and ident in first_at:
                self.report(
                    index_path(path, i),
                    f'references processor "{ident}" more than once in pipeline "{pid}" '
                    f"(first at {index_path(path, first_at[ident])})",
                    DUPLICATE_PROCESSOR,
                )
            first_at.setdefault(ident, i)
            if role != PROCESSORS and ident in self.defined[CONNECTORS]:
                side = self.as_exporter if role == EXPORTERS else self.as_receiver
                side.setdefault(ident, []).append((pid, index_path(path, i)))

    def connectors(self) -> None:
        """The Collector builds a connector only where it links an exporting pipeline to
        a receiving one; a one-sided connector or a cycle of pipelines stops the build."""
        sides = (
            (self.as_exporter, self.as_receiver, "an exporter", "a receiver"),
            (self.as_receiver, self.as_exporter, "a receiver", "an exporter"),
        )
        for used, other, role, missing in sides:
            for ident, uses in used.items():
                if ident in other:
                    continue
                pid, path = uses[0]
                self.report(
                    path,
                    f'connector "{ident}" is used as {role} in pipeline "{pid}" but not '
                    f"as {missing} in any pipeline; a connector must be used on both sides",
                    CONNECTOR_ONE_SIDED,
                )
        edges: dict[str, list[tuple[str, str]]] = {}
        for ident, exporting in self.as_exporter.items():
            for source, _ in exporting:
                for target, _ in self.as_receiver.get(ident, ()):
                    edges.setdefault(source, []).append((target, ident))
        cycle = _find_cycle(edges)
        if cycle:
            hops = " -> ".join(f'"{pid}" -> {via}' for pid, via in cycle)
            self.report(
                "service.pipelines",
                f'pipelines form a cycle through connectors: {hops} -> "{cycle[0][0]}"; '
                "the Collector refuses a cycle",
                CONNECTOR_CYCLE,
            )


def validate_document(config: object) -> list[Problem]:
    """The problems of an already parsed config (see `validate_config`)."""
    if config is None:
        return [Problem("", "the config is empty", EMPTY)]
    if not isinstance(config, Mapping):
        return [
            Problem(
                "",
                "the config must be a mapping of sections (receivers, processors, exporters, "
                f"connectors, extensions, service), got {describe(config)}",
                NOT_A_MAPPING,
            )
        ]
    validator = _Validator()
    validator.sections(config)
    validator.service(config)
    return validator.problems


def validate_config(text: str) -> list[Problem]:
    """Every reason the Collector would refuse this config text; [] when it would load it.

    Never raises for any input text: unparseable YAML is a problem like any other.
    """
    try:
        config, problems = load_yaml_checked(text)
    except ConfigSyntaxError as error:
        return list(error.problems)
    return problems + validate_document(config)


def format_problems(problems: Sequence[Problem], limit: int = 10) -> str:
    """One message for a webhook denial or a status condition; "" when there is none."""
    if not problems:
        return ""
    shown = "; ".join(str(p) for p in problems[:limit])
    more = len(problems) - limit
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"invalid Collector config ({count}): {shown}" + (
        f"; and {more} more" if more > 0 else ""
    )


# ---------------------------------------------------------------- preflight against an agent


def used_component_types(config: object) -> dict[str, set[str]]:
    """The component types a config defines, per kind. Defined, not only referenced: the
    Collector refuses an unknown type even for a component no pipeline uses."""
    used: dict[str, set[str]] = {}
    if not isinstance(config, Mapping):
        return used
    for kind in KINDS:
        section = config.get(kind)
        if not isinstance(section, Mapping):
            continue
        types = {component_type(key) for key in section if isinstance(key, str)}
        types.discard("")
        if types:
            used[kind] = types
    return used


def missing_components(
    text: str, available: Mapping[str, Collection[str]]
) -> dict[str, tuple[str, ...]]:
    """The component types the config uses that the agent's AvailableComponents lack, per
    kind (sorted); a kind the agent does not report at all is one it has none of.
    An unparseable config has nothing to check ({}); `validate_config` reports it."""
    try:
        config = load_yaml(text)
    except ConfigSyntaxError:
        return {}
    missing: dict[str, tuple[str, ...]] = {}
    for kind, types in used_component_types(config).items():
        lacking = types - set(available.get(kind, ()))
        if lacking:
            missing[kind] = tuple(sorted(lacking))
    return missing


def format_missing_components(missing: Mapping[str, Sequence[str]]) -> str:
    """E.g. `agent lacks exporters: kafka, otlphttp; receivers: filelog`; "" when none."""
    parts = [f"{kind}: {', '.join(types)}" for kind, types in missing.items() if types]
    return f"agent lacks {'; '.join(parts)}" if parts else ""
