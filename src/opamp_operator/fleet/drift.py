"""Drift: does an agent run the config its fleet wants?

A Collector reports its effective config re-serialised from its typed config: keys in
another order, every default filled in, durations and secrets rendered its own way, and
(under the supervisor) the supervisor's own extension added. So neither a raw hash nor a
text comparison says anything; drift is "some value the desired config sets is missing or
different in the effective config". The rule, applied recursively to the parsed YAML:

- a mapping matches when each of its keys is present in the effective mapping and its
  value matches; keys only the effective config has (defaults) do not count;
- a list matches a list of the same length, item by item (items are matched by this same
  rule, so defaults filled into list items do not count); `service.extensions` is the
  exception: the supervisor appends its `opamp` extension, so each desired extension
  need only be present;
- null sets nothing and matches any value, but its key must be there; an empty mapping
  or list also matches null;
- scalars match when equal (booleans only to booleans), or when they are the same YAML
  text, possibly under another type (`"10"` and `10`; NaN and NaN), or the same Go
  duration (`1m` and `1m0s`, or the nanoseconds), or the effective value is the
  Collector's `[REDACTED]` for a secret, or the desired value is a `${...}`
  substitution the Collector resolved (its literal parts must still match), or the
  same level in another case (the Collector reads `none` and reports `None`);
- a key the effective config lacks is not missing when the desired value is one the
  Collector leaves out as its zero value: `basic`, the zero telemetry level, which the
  debug exporter's `verbosity` (omitempty) never reports.

Differences name paths only, never values: configs hold secrets and these reasons go
into status messages and events. The read API's diff and effective config show values, so
they mask secrets first: a value the effective config reports as `[REDACTED]` at the same
path, and any scalar under a key the Collector's components use for secrets
(SECRET_KEYS), read `[REDACTED]` on both sides; a desired `${env:...}` or `${file:...}`
reference stays, as it names where the secret comes from. Text that is not YAML is never
shown, only why.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from itertools import islice
from typing import Any

import yaml

from opamp_operator.fleet.validation import (
    MAX_YAML_BYTES,
    ConfigSyntaxError,
    child_path,
    index_path,
    load_yaml,
)
from opamp_operator.fleet.views import AgentView

MAX_REASONS = 20  # differing paths kept for a status message
SHOWN_REASONS = 5  # of those, named in a verdict's one-line reason
MAX_DIFF_CHARS = 64_000  # a unified diff for the read API stops here
MAX_SHOWN_VALUES = 20_000
"""Values (mappings, lists, scalars; an alias counted each time it is used) of a config
the read API renders as text or diffs. Collector configs have a few hundred to a few
thousand; rendering one at MAX_NODES took 5-25 s of a worker thread holding the GIL,
which the event loop felt (benchmarks/loop_lag.py)."""
REDACTED = "[REDACTED]"  # how the Collector marshals a configopaque.String
EXTENSIONS_PATH = "service.extensions"

_UNITS = {
    "ns": Fraction(1),
    "us": Fraction(1000),
    "µs": Fraction(1000),  # Go accepts both micro signs: U+00B5 and U+03BC
    "μs": Fraction(1000),
    "ms": Fraction(1_000_000),
    "s": Fraction(1_000_000_000),
    "m": Fraction(60_000_000_000),
    "h": Fraction(3_600_000_000_000),
}
# Levels the Collector parses in any case and reports in one: configtelemetry.Level
# (`level`, `verbosity`: None, Basic, Normal, Detailed) and zapcore.Level (log `level`).
_LEVELS = frozenset(
    {"none", "basic", "normal", "detailed"}
    | {"debug", "info", "warn", "error", "dpanic", "panic", "fatal"}
)
# Desired values a reported config leaves out: zero values of omitempty fields, by key.
_OMITTED_ZERO_VALUES = {"verbosity": frozenset({"basic"})}  # configtelemetry.LevelBasic == 0
_MAX_DURATION_CHARS = 64
_DURATION_RE = re.compile(r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART_RE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_REFERENCE_RE = re.compile(r"\$\{[^${}]+\}")
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_POSITION_RE = re.compile(r" \(line [0-9]+, column [0-9]+\)\Z")


@dataclass(frozen=True)
class SecretKeys:
    """Which scalars hold secrets, by the key they sit under (see SECRET_KEYS)."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    in_context: frozenset[tuple[str, str]]
    value_maps: frozenset[str]

    def covers(self, key: object, parent: object) -> bool:
        """Whether a scalar at `key` of a mapping that is itself at `parent` is a secret
        (a list's items count as at the list's key)."""
        name, outer = _key_name(key), _key_name(parent)
        return outer in self.value_maps or (
            bool(name)
            and (
                name in self.names
                or name.endswith(self.suffixes)
                or (outer, name) in self.in_context
            )
        )


SECRET_KEYS = SecretKeys(
    names=frozenset(
        {"password", "passwd", "passphrase", "secret", "token", "tokens", "credentials"}
        | {"api_key", "apikey", "access_key", "secret_key", "private_key", "key_pem"}
        | {"license_key", "ingest_key", "instrumentation_key", "authorization"}
        | {"connection_string", "dsn", "datasource", "community", "communities"}
    ),
    suffixes=(
        "_password",
        "_passphrase",
        "_secret",
        "_token",
        "_api_key",
        "_apikey",
        "_access_key",
        "_secret_key",
        "_private_key",
    ),
    in_context=frozenset(
        {("tls", "key"), ("tls_config", "key"), ("tls_settings", "key"), ("api", "key")}
        | {("htpasswd", "inline")}
    ),
    value_maps=frozenset({"headers", "response_headers"}),
)
"""The keys whose scalar values are masked even where the effective config does not say
`[REDACTED]` (an agent may report a secret unredacted, or the two sides differ in shape).
Names are the Collector's configopaque.String fields (basicauth and kafka `password`,
bearertokenauth `token`/`tokens`, oauth2client `client_secret`, configtls `key_pem`,
signalfx `access_token`, splunk_hec `token`, azuremonitor `connection_string`, SQL
`dsn`/`datasource` with their passwords, SNMP `community` strings, ...),
compared in snake case (`apiKey` and `API-Key` are `api_key`). `key` alone names
attributes (`{key: service.name, ...}`), so it is a secret only under `tls`, `tls_config`
or `tls_settings` (Prometheus's inline key) or `api` (datadog's `api.key`); paths such as
`key_file` are not secrets. Every value of a `headers` mapping is (confighttp and
configgrpc headers are map[string]configopaque.String). Mappings under a secret key are
walked, not blanked."""


class DriftState(StrEnum):
    IN_SYNC = "InSync"
    DRIFTED = "Drifted"
    PENDING = "Pending"  # applying the desired config right now
    UNKNOWN = "Unknown"  # nothing reported to judge by


@dataclass(frozen=True)
class DriftVerdict:
    """What the fleet layer concludes about one agent; `paths` are the first differing
    paths when the effective config differs."""

    state: DriftState
    reason: str
    paths: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        return self.state is DriftState.DRIFTED


@dataclass(frozen=True)
class Difference:
    """A path the effective config does not satisfy: `missing` (absent), `changed`
    (another value) or `added` (an extra list item)."""

    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.path or '(the whole config)'} ({self.kind})"


# ---------------------------------------------------------------- scalar rules


def _text(value: object) -> str | None:
    """A scalar as YAML would write it; None for anything that is not a plain scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def _duration_ns(value: str) -> Fraction | None:
    """A Go duration string (time.ParseDuration's syntax) in nanoseconds, else None.
    Text longer than _MAX_DURATION_CHARS is not a duration here: the Collector renders
    none longer than 25 characters, and a long run of digits would cost the regex a
    quadratic backtrack and Fraction more digits than Python converts."""
    if value in ("0", "+0", "-0"):
        return Fraction(0)
    if len(value) > _MAX_DURATION_CHARS or not _DURATION_RE.fullmatch(value):
        return None
    total = sum(
        (Fraction(number) * _UNITS[unit] for number, unit in _DURATION_PART_RE.findall(value)),
        Fraction(0),
    )
    return -total if value.startswith("-") else total


def _substitution_end(value: str, start: int) -> int:
    """The index of the `}` closing the `${` at `start` (braces nest, as in
    `${env:A:-${env:B}}`; a lone `{` does not), or -1 when it is never closed. Linear: each
    find runs on from where the last one stopped."""
    depth, i = 0, start
    opening = closing = -1
    while True:
        if opening < i:
            opening = value.find("${", i)
            if opening < 0:
                opening = len(value)
        if closing < i:
            closing = value.find("}", i)
            if closing < 0:
                return -1
        if opening < closing:
            depth, i = depth + 1, opening + 2
        else:
            depth, i = depth - 1, closing + 1
            if depth == 0:
                return closing


def substitution_segments(value: str) -> tuple[str, ...] | None:
    """The literal text of `value` around its `${...}` substitutions, which the Collector
    resolves to anything: `a${x}b${y}c` is ("a", "b", "c"); `$$` is a literal `$`; an
    unterminated `${` is literal to the end (the Collector leaves it as text). None when
    the whole value is one substitution: it may resolve to any value, even a mapping."""
    segments: list[str] = []
    literal: list[str] = []
    i = 0
    while i < len(value):
        dollar = value.find("$", i)
        if dollar < 0:
            literal.append(value[i:])
            break
        literal.append(value[i:dollar])
        i = dollar
        if value.startswith("$$", i):
            literal.append("$")
            i += 2
        elif value.startswith("${", i):
            end = _substitution_end(value, i)
            if end < 0:
                literal.append(value[i:])
                break
            if i == 0 and end == len(value) - 1:
                return None
            segments.append("".join(literal))
            literal = []
            i = end + 1
        else:
            literal.append("$")
            i += 1
    segments.append("".join(literal))
    return tuple(segments)


def segments_match(segments: tuple[str, ...], text: str) -> bool:
    """Whether `text` is the segments with anything between each two (a glob of `*`
    only): the first at the start, the last at the end, each other one found leftmost
    after the one before. Leftmost is never wrong for `*`-only globs (a later match of a
    segment leaves less room, never more), so this is exact, and each str.find runs on
    from where the last stopped: linear in len(text) plus the segments, where the regex
    this replaced backtracked polynomially (a power of len(text) per substitution)."""
    if len(segments) == 1:
        return text == segments[0]
    first, last = segments[0], segments[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    at = len(first)
    for segment in segments[1:-1]:
        found = text.find(segment, at, end)
        if found < 0:
            return False
        at = found + len(segment)
    return True


def substitution_matches(desired: str, text: str) -> bool:
    """Whether the Collector can make `text` of `desired` by resolving its `${...}`."""
    segments = substitution_segments(desired)
    return segments is None or segments_match(segments, text)


def _plain_equal(desired: object, effective: object) -> bool:
    if isinstance(desired, bool) or isinstance(effective, bool):
        return isinstance(desired, bool) and isinstance(effective, bool) and desired == effective
    return bool(desired == effective)


def _same_duration(desired: str, effective: object) -> bool:
    wanted = _duration_ns(desired)
    if wanted is None:
        return False
    if isinstance(effective, str):
        return _duration_ns(effective) == wanted
    return isinstance(effective, int) and not isinstance(effective, bool) and effective == wanted


def _resolved(desired: str, effective: object) -> bool:
    """Whether `effective` can be what the Collector made of a `${...}` in `desired`."""
    if "$" not in desired:
        return False
    segments = substitution_segments(desired)
    if segments is None:
        return True
    text = _text(effective)
    return text is not None and segments_match(segments, text)


def _same_level(desired: str, effective: object) -> bool:
    return (
        isinstance(effective, str)
        and desired.lower() == effective.lower()
        and effective.lower() in _LEVELS
    )


def _scalar_matches(desired: object, effective: object) -> bool:
    desired_text = _text(desired)
    return (
        _plain_equal(desired, effective)
        # "10" vs 10: the same YAML text, typed another way
        or (desired_text is not None and desired_text == _text(effective))
        or (
            isinstance(desired, str)
            and (
                effective == REDACTED
                or _resolved(desired, effective)
                or _same_duration(desired, effective)
                or _same_level(desired, effective)
            )
        )
    )


def _omitted_zero(key: object, desired: object) -> bool:
    """Whether a reported config leaves this desired value out (see _OMITTED_ZERO_VALUES)."""
    zeros = _OMITTED_ZERO_VALUES.get(str(key), frozenset())
    return isinstance(desired, str) and desired.lower() in zeros


# ---------------------------------------------------------------- the subset walk


def _lookup(effective: Mapping[Any, Any], key: object) -> tuple[bool, Any]:
    if key in effective:
        return True, effective[key]
    text = _text(key)  # `1:` in one file, `"1":` in the other
    if text is not None and not isinstance(key, str) and text in effective:
        return True, effective[text]
    return False, None


def _walk_mapping(desired: Mapping[Any, Any], effective: object, path: str) -> Iterator[Difference]:
    if effective is None:
        effective = {}
    if not isinstance(effective, Mapping):
        yield Difference(path, "changed")
        return
    for key, value in desired.items():
        found, actual = _lookup(effective, key)
        if found:
            yield from _walk(value, actual, child_path(path, key))
        elif not _omitted_zero(key, value):
            yield Difference(child_path(path, key), "missing")


def _only_equal_text(item: object) -> bool:
    """Whether a desired scalar matches only the same text or REDACTED: a string that is
    no substitution, Go duration or level name (see _scalar_matches)."""
    return (
        isinstance(item, str)
        and "$" not in item
        and item.lower() not in _LEVELS
        and _duration_ns(item) is None
    )


def _walk_extensions(desired: list[Any], effective: list[Any], path: str) -> Iterator[Difference]:
    """Each desired extension must match some reported one, in any order. Extension ids
    are plain text, looked up among the reported texts at once; only other items are
    tried against each reported item, so an agent reporting a huge list costs one pass
    over it, not one per desired extension."""
    texts: set[str] | None = None
    for i, item in enumerate(desired):
        if _only_equal_text(item):
            if texts is None:
                texts = {text for text in map(_text, effective) if text is not None}
            found = item in texts or REDACTED in texts
        else:
            found = any(_matches(item, candidate) for candidate in effective)
        if not found:
            yield Difference(index_path(path, i), "missing")


def _walk_list(desired: list[Any], effective: object, path: str) -> Iterator[Difference]:
    if effective is None:
        effective = []
    if not isinstance(effective, list):
        yield Difference(path, "changed")
    elif path == EXTENSIONS_PATH:
        yield from _walk_extensions(desired, effective, path)
    else:
        for i in range(max(len(desired), len(effective))):
            if i >= len(effective):
                yield Difference(index_path(path, i), "missing")
            elif i >= len(desired):
                yield Difference(index_path(path, i), "added")
            else:
                yield from _walk(desired[i], effective[i], index_path(path, i))


def _walk(desired: object, effective: object, path: str) -> Iterator[Difference]:
    """Each place where `effective` does not satisfy `desired`, in desired order."""
    if desired is None:
        return
    if isinstance(desired, Mapping):
        yield from _walk_mapping(desired, effective, path)
    elif isinstance(desired, list):
        yield from _walk_list(desired, effective, path)
    elif not _scalar_matches(desired, effective):
        yield Difference(path, "changed")


def _matches(desired: object, effective: object) -> bool:
    return next(_walk(desired, effective, ""), None) is None


def differences(desired: object, effective: object, limit: int = MAX_REASONS) -> list[Difference]:
    """The first `limit` places where a parsed effective config does not satisfy a parsed
    desired config (see the module docstring for the rule)."""
    return list(islice(_walk(desired, effective, ""), max(limit, 0)))


def _parse(text: str) -> tuple[Any, ConfigSyntaxError | None]:
    try:
        return load_yaml(text), None
    except ConfigSyntaxError as error:
        return None, error


def _parse_both(desired_yaml: str, effective_yaml: str) -> tuple[Any, Any, list[str]]:
    desired, desired_error = _parse(desired_yaml)
    effective, effective_error = _parse(effective_yaml)
    errors = [
        _unreadable(f"the {side} config", error)
        for side, error in (("desired", desired_error), ("effective", effective_error))
        if error is not None
    ]
    return desired, effective, errors


def drift_reasons(desired_yaml: str, effective_yaml: str, limit: int = MAX_REASONS) -> list[str]:
    """Why the effective config does not satisfy the desired one: the first `limit`
    differing paths (`path (missing|changed|added)`), or why either side could not be
    read; [] when it is not drifted."""
    desired, effective, errors = _parse_both(desired_yaml, effective_yaml)
    if errors:
        return errors[: max(limit, 0)]
    return [str(d) for d in differences(desired, effective, limit)]


def drifted(desired_yaml: str, effective_yaml: str) -> bool:
    """True when some value the desired config sets is missing or different in the
    effective config, or either side is not valid YAML."""
    return bool(drift_reasons(desired_yaml, effective_yaml, limit=1))


# ---------------------------------------------------------------- canonical form and diff


def _sort_key(key: object) -> tuple[bool, str, str]:
    # mixed key types (1: and a:) must still sort, and deterministically
    return (not isinstance(key, str), type(key).__name__, str(key))


def _canonical(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _canonical(value[k]) for k in sorted(value, key=_sort_key)}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        return {k: None for k in sorted(value, key=_sort_key)}
    return value


def _dump(data: object) -> str:
    if data is None:
        return ""
    return yaml.safe_dump(
        _canonical(data), sort_keys=False, default_flow_style=False, allow_unicode=True, width=120
    )


def canonical_yaml(text: str) -> str:
    """The config parsed and re-dumped with sorted keys and block style, so a diff shows
    content, not formatting; text that is not valid YAML is returned as it is. Nothing is
    masked: what is shown to users goes through masked_config_text or unified_diff."""
    data, error = _parse(text)
    return text if error is not None else _dump(data)


def _key_name(key: object) -> str:
    """A key in lower snake case, as SECRET_KEYS lists them; "" for a key that is not text."""
    if not isinstance(key, str):
        return ""
    return _CAMEL_RE.sub("_", key).lower().replace("-", "_")


def _is_reference(value: object) -> bool:
    """A whole value that is one `${...}` without a `:-` default (a default is a literal):
    it names where a secret comes from, not the secret."""
    return isinstance(value, str) and bool(_REFERENCE_RE.fullmatch(value)) and ":-" not in value


def _mask(value: Any, reference: Any, key: object, parent: object, desired: bool) -> Any:
    """`value` with its secrets replaced by REDACTED: any value the effective config
    `reference` (walked in parallel: mappings by key, lists by index) reports as REDACTED,
    and scalars at SECRET_KEYS. On the `desired` side a `${...}` reference is kept."""
    if value is None or (desired and _is_reference(value)):
        return value
    if isinstance(reference, str) and reference == REDACTED:
        return REDACTED
    if isinstance(value, Mapping):
        references = reference if isinstance(reference, Mapping) else {}
        masked = {}
        for child_key, child in value.items():
            found, child_reference = _lookup(references, child_key)
            masked[child_key] = _mask(
                child, child_reference if found else None, child_key, key, desired
            )
        return masked
    if isinstance(value, list):
        items = reference if isinstance(reference, list) else []
        return [
            _mask(item, items[i] if i < len(items) else None, key, parent, desired)
            for i, item in enumerate(value)
        ]
    return REDACTED if SECRET_KEYS.covers(key, parent) else value


def _unreadable(subject: str, error: ConfigSyntaxError) -> str:
    """Why a config cannot be shown, without the parser's message: that can quote the
    document (a tag, an alias name, a value PyYAML could not build)."""
    message = str(error)
    if message.startswith("too large"):
        return f"{subject} is {message}"  # a size and the bound: nothing of the text
    what = "too deeply nested" if message.startswith("too deeply nested") else "not valid YAML"
    position = _POSITION_RE.search(message)
    return f"{subject} is {what}{position.group() if position else ''}"


def masked_config_text(text: str) -> str:
    """A config as the read API may show it: canonical form (see canonical_yaml) with
    every scalar at SECRET_KEYS replaced by REDACTED; for text that is not valid YAML, one
    comment line saying so instead of the text.

    Cost: a bounded parse (see compare), then PyYAML's pure-Python dumper over every
    value of the expansion (an alias is written out where the text repeats it), for at
    most MAX_SHOWN_VALUES of them: a larger config is not rendered."""
    data, error = _parse(text)
    if error is not None:
        return f"# not shown: {_unreadable('the config', error)}\n"
    if _more_values_than(data, MAX_SHOWN_VALUES):
        return f"# not shown: {_too_many('the config')}\n"
    return _dump(_mask(data, None, None, None, desired=False))


def _too_many(what: str) -> str:
    return (
        f"{what} has more than {MAX_SHOWN_VALUES:,} values with its aliases written out, "
        "more than the read API renders (its drift is still judged)"
    )


def _more_values_than(data: object, limit: int) -> bool:
    """Whether `data` has more than `limit` values, an alias counted at each use; stops
    counting there."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def unified_diff(
    desired_yaml: str,
    effective_yaml: str,
    name: str = "config.yaml",
    max_chars: int = MAX_DIFF_CHARS,
) -> str:
    """A unified diff from the desired config to the effective one, both in canonical
    form with secrets masked (see the module docstring), cut at a line boundary near
    `max_chars`; "" when they are the same; one line saying why when either side is not
    valid YAML.

    Cost: two bounded parses, two masked dumps of at most MAX_SHOWN_VALUES values each
    (a larger side is not diffed) and difflib over their lines (quadratic in the lines
    that differ, at worst). The read API alone calls this, per request, off the loop."""
    desired, desired_error = _parse(desired_yaml)
    effective, effective_error = _parse(effective_yaml)
    errors = [
        _unreadable(f"the {side} config", error)
        for side, error in (("desired", desired_error), ("effective", effective_error))
        if error is not None
    ]
    errors += [
        _too_many(f"the {side} config")
        for side, data in (("desired", desired), ("effective", effective))
        if _more_values_than(data, MAX_SHOWN_VALUES)
    ]
    if errors:
        return f"no diff: {'; '.join(errors)}\n"
    shown_desired = _mask(desired, effective, None, None, desired=True)
    shown_effective = _mask(effective, None, None, None, desired=False)
    before = [line + "\n" for line in _dump(shown_desired).splitlines()]
    after = [line + "\n" for line in _dump(shown_effective).splitlines()]
    lines = list(difflib.unified_diff(before, after, f"desired/{name}", f"effective/{name}"))
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        if size + len(line) > max_chars:
            out.append(f"... diff truncated: {len(lines) - i} more lines\n")
            break
        out.append(line)
        size += len(line)
    return "".join(out)


# ---------------------------------------------------------------- comparisons, cached


@dataclass(frozen=True)
class Comparison:
    """What comparing an effective config with a desired one found: why either side
    could not be read (`errors`), else the first MAX_REASONS `differences`. Everything a
    verdict or a list of reasons needs, so it can be computed once and cached."""

    errors: tuple[str, ...] = ()
    differences: tuple[Difference, ...] = ()

    @property
    def drifted(self) -> bool:
        return bool(self.errors or self.differences)

    def reasons(self, limit: int = MAX_REASONS) -> list[str]:
        """As drift_reasons says them, for `limit` up to MAX_REASONS."""
        found = self.errors or tuple(str(d) for d in self.differences)
        return list(found[: max(limit, 0)])

    def verdict(self, applied: bool) -> DriftVerdict:
        """The verdict on an agent whose effective config this is (`applied`: it reports
        APPLIED for the desired hash)."""
        if self.errors:
            return DriftVerdict(DriftState.DRIFTED, "; ".join(self.errors))
        if not self.differences:
            prefix = "applied the desired config and " if applied else ""
            return DriftVerdict(DriftState.IN_SYNC, f"{prefix}its effective config matches it")
        named = ", ".join(str(d) for d in self.differences[:SHOWN_REASONS])
        more = " and more" if len(self.differences) > SHOWN_REASONS else ""
        return DriftVerdict(
            DriftState.DRIFTED,
            f"its effective config differs from the desired config at {named}{more}",
            tuple(d.path for d in self.differences),
        )


def compare(desired_yaml: str, effective_yaml: str) -> Comparison:
    """Compare two config texts (see the module docstring for the rule).

    Cost, for any text an agent can send: parsing each side is bounded by
    validation.load_yaml_checked (MAX_YAML_BYTES unread beyond, MAX_NODES nodes built at
    most); the walk visits each node the desired config has once, and compares a desired
    scalar with the effective scalar at its path in time linear in both (durations
    bounded, `${...}` matched by segments_match, service.extensions looked up). So the
    worst case is two bounded parses: ~2-3 s with an effective config at MAX_NODES, ~6 s
    with both sides there (benchmarks/drift_worst.py, a 2-core machine; ~50 ms for one
    4 MiB scalar). DriftCache keeps it to once per pair of texts."""
    desired, effective, errors = _parse_both(desired_yaml, effective_yaml)
    if errors:
        return Comparison(errors=tuple(errors))
    return Comparison(differences=tuple(differences(desired, effective, MAX_REASONS)))


DRIFT_CACHE_ENTRIES = 10_000
"""Comparisons a DriftCache keeps: one per agent config in a large operator, each a few
paths at most (reasons name paths, never values)."""


CacheKey = tuple[bytes, str]
"""(sha256 of an effective config text, the desired config's hash in lowercase hex)."""


class DriftCache:
    """A bounded LRU of comparisons, keyed by the sha256 of the effective config text and
    the desired config's hash: status ticks, rollout ticks and read-API calls on the same
    agent config share one parse and walk.

    `desired_hash` must name `desired_yaml` (it is the hash agents echo, of the config
    built from that text); an empty one is never cached. Hashing the effective text costs
    ~2 ms per MiB; text over MAX_YAML_BYTES is refused unread and not cached. Callable
    from several threads: the lock guards the table only, so two threads missing on the
    same key both compute it (the same result). The operator computes on worker
    processes (key, get, then put what a worker returns); `compare` does all three here.
    """

    def __init__(self, capacity: int = DRIFT_CACHE_ENTRIES) -> None:
        if capacity < 1:
            raise ValueError("a DriftCache holds at least one entry")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[CacheKey, Comparison] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def key(
        self, desired_hash: str, effective_yaml: str, effective_hash: str = ""
    ) -> CacheKey | None:
        """Where the comparison of `effective_yaml` with the desired config is kept; None
        when it is never kept (no desired hash, or text refused unread).
        `effective_hash`: a digest the server computed of the files the text is made of
        (AgentView.effective_config_hash), which spares hashing the text again."""
        if not desired_hash or len(effective_yaml) > MAX_YAML_BYTES:
            return None
        digest = (
            bytes.fromhex(effective_hash)
            if effective_hash
            else hashlib.sha256(effective_yaml.encode("utf-8", "surrogatepass")).digest()
        )
        return (digest, desired_hash.lower())

    def get(self, key: CacheKey | None) -> Comparison | None:
        if key is None:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: CacheKey | None, comparison: Comparison) -> None:
        if key is None:
            return
        with self._lock:
            self._entries[key] = comparison
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def compare(
        self, desired_yaml: str, desired_hash: str, effective_yaml: str, effective_hash: str = ""
    ) -> Comparison:
        """compare(desired_yaml, effective_yaml), from the cache when it has it."""
        key = self.key(desired_hash, effective_yaml, effective_hash)
        found = self.get(key)
        if found is None:
            found = compare(desired_yaml, effective_yaml)
            self.put(key, found)
        return found

    def agent_drift(self, agent: AgentView, desired_yaml: str, desired_hash: str) -> DriftVerdict:
        """agent_drift(agent, desired_yaml, desired_hash), its comparison cached."""
        return _agent_drift(
            agent,
            desired_hash,
            lambda: self.compare(
                desired_yaml, desired_hash, agent.effective_config, agent.effective_config_hash
            ),
        )


# ---------------------------------------------------------------- one agent


def _short(config_hash: str) -> str:
    return config_hash[:12] if config_hash else "(none)"


_NO_ERROR = "(the agent gave no error message)"


def _status_verdict(agent: AgentView, reported: str, wanted: str) -> DriftVerdict:
    """The verdict from the remote config status alone, for an agent that does not
    report APPLIED for the desired hash."""
    status = agent.remote_config_status
    same = bool(reported) and reported == wanted
    if same and status == "APPLYING":
        return DriftVerdict(DriftState.PENDING, "applying the desired config")
    if status == "FAILED":
        subject = "the desired config" if same else f"config {_short(reported)}"
        tail = "" if same else f"; the desired config is {_short(wanted)}"
        return DriftVerdict(
            DriftState.DRIFTED,
            f"failed to apply {subject}: {agent.remote_config_error or _NO_ERROR}{tail}",
        )
    if status == "UNSET" or not reported:
        return DriftVerdict(
            DriftState.DRIFTED,
            f"the agent has no remote config (status {status}); "
            f"the desired config is {_short(wanted)}",
        )
    doing = {"APPLIED": "runs", "APPLYING": "is applying"}.get(str(status), f"reports {status} for")
    return DriftVerdict(
        DriftState.DRIFTED,
        f"the agent {doing} config {_short(reported)}, not the desired {_short(wanted)}",
    )


def agent_drift(agent: AgentView, desired_yaml: str, desired_hash: str) -> DriftVerdict:
    """The drift verdict for one agent against its fleet's desired config (`desired_hash`
    in hex, as agents echo it).

    In sync: APPLIED for the desired hash, and no effective config reported or one that
    satisfies the desired config. Pending: APPLYING the desired hash. Unknown: no remote
    config status and no effective config (e.g. an agent that does not accept remote
    config and reports nothing); with an effective config but no status (or UNSET, what
    opamp-go reports before any remote config), that config alone decides. Drifted
    otherwise, with the reason. Costs a `compare` when the effective config decides;
    DriftCache.agent_drift caches that.
    """
    return _agent_drift(agent, desired_hash, lambda: compare(desired_yaml, agent.effective_config))


def needs_comparison(agent: AgentView, desired_hash: str) -> bool:
    """Whether the agent's effective config decides its verdict (see agent_drift): it
    reports one, and either runs the desired config or says nothing of what it runs."""
    status = agent.remote_config_status
    reported = agent.remote_config_hash.lower()
    if not agent.effective_config.strip():
        return False
    if status is None or (status == "UNSET" and not reported):
        return True
    return status == "APPLIED" and bool(reported) and reported == desired_hash.lower()


def verdict_of(agent: AgentView, desired_hash: str, comparison: Comparison | None) -> DriftVerdict:
    """agent_drift, given the comparison of its effective config when needs_comparison
    says it decides (None otherwise)."""
    if needs_comparison(agent, desired_hash):
        if comparison is None:
            raise ValueError("the agent's effective config decides: compare it first")
        return comparison.verdict(applied=agent.remote_config_status == "APPLIED")
    if agent.remote_config_status is None:
        return DriftVerdict(
            DriftState.UNKNOWN,
            "the agent has reported neither a remote config status nor an effective config",
        )
    reported = agent.remote_config_hash.lower()
    wanted = desired_hash.lower()
    if agent.remote_config_status == "APPLIED" and reported and reported == wanted:
        return DriftVerdict(DriftState.IN_SYNC, "applied the desired config")
    return _status_verdict(agent, reported, wanted)


def _agent_drift(
    agent: AgentView, desired_hash: str, comparison: Callable[[], Comparison]
) -> DriftVerdict:
    """agent_drift, calling `comparison` only when the effective config decides."""
    decides = needs_comparison(agent, desired_hash)
    return verdict_of(agent, desired_hash, comparison() if decides else None)
