"""The worst configs an agent can report, and what parsing and comparing one costs the
operator per call: before the bounds (PyYAML's pure-Python loader composing the whole
document before the node and depth checks, the `${...}` regex, the unbounded duration
regex) and after them (fleet.validation.load_yaml_checked: the byte cap, libyaml, node
and depth bounds while composing; fleet.drift.segments_match; bounded durations), with
and without libyaml, and once a DriftCache holds the answer.

Each case is a (desired, effective) pair; one call is `drift.compare(desired, effective)`,
what a status tick, a rollout tick or a read-API call pays per agent. The old path is the
same walk with the old loader and matchers swapped in, each call in a forked child that is
killed after --timeout seconds (shown as `>N s`).

    .venv/bin/python benchmarks/drift_worst.py
    .venv/bin/python benchmarks/drift_worst.py --timeout 60 --repeat 5 --cases subst-200

Prints a Markdown table. The figures go into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from opamp_operator.fleet import drift, validation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from opamp_operator.fleet.drift import DriftCache
from opamp_operator.fleet.validation import MAX_DEPTH, MAX_NODES, MAX_YAML_BYTES
from world.drift_oracle import old_substitution_pattern

MiB = 1024 * 1024
DESIRED_HASH = "ab" * 32


# ---------------------------------------------------------------- the old path


def _old_scan(root: Node) -> None:
    """The node and depth checks as they ran before: after the whole document was composed."""
    sizes: dict[int, int] = {}
    on_stack: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise validation.ConfigSyntaxError("too deeply nested")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_stack:
            raise validation.ConfigSyntaxError("not valid YAML: recursive anchor")
        on_stack.add(key)
        total = 1
        if isinstance(node, MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode):
                    seen.add((key_node.tag, key_node.value))
                total += size(key_node, depth + 1) + size(value_node, depth + 1)
        elif isinstance(node, SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        on_stack.discard(key)
        if total > MAX_NODES:
            raise validation.ConfigSyntaxError("not valid YAML: excessive aliasing")
        sizes[key] = total
        return total

    size(root, 0)


def old_load_yaml(text: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _old_scan(node)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise validation.ConfigSyntaxError("not valid YAML") from error
    except RecursionError as error:
        raise validation.ConfigSyntaxError("too deeply nested for the YAML parser") from error
    except (ValueError, TypeError, AttributeError, OverflowError) as error:
        raise validation.ConfigSyntaxError("not valid YAML: a value cannot be built") from error
    finally:
        loader.dispose()


def old_parse(text: str) -> tuple[Any, validation.ConfigSyntaxError | None]:
    try:
        return old_load_yaml(text), None
    except validation.ConfigSyntaxError as error:
        return None, error


def old_resolved(desired: str, effective: object) -> bool:
    if "$" not in desired:
        return False
    pattern = old_substitution_pattern(desired)
    if pattern is None:
        return True
    text = drift._text(effective)
    return text is not None and pattern.fullmatch(text) is not None


_OLD_DURATION_RE = re.compile(r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_OLD_PART_RE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def old_duration_ns(value: str) -> Fraction | None:
    if value in ("0", "+0", "-0"):
        return Fraction(0)
    if not _OLD_DURATION_RE.fullmatch(value):
        return None
    units = drift._UNITS
    total = sum(
        (Fraction(number) * units[unit] for number, unit in _OLD_PART_RE.findall(value)),
        Fraction(0),
    )
    return -total if value.startswith("-") else total


def use_old_path() -> None:
    """Swap the old loader and matchers into this process (a forked child)."""
    drift._parse = old_parse
    drift._resolved = old_resolved
    drift._duration_ns = old_duration_ns


# ---------------------------------------------------------------- the worst configs


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[], tuple[str, str]]


def _pairs(count: int, width: int) -> Iterator[str]:
    for i in range(count):
        yield f"k{i:06}: {'v' * width}{i:06}\n"


def deep() -> tuple[str, str]:
    """Nesting at the depth bound, wide at every level, within the node bound (flow
    style: block style would spend the byte cap on indentation); the desired config is
    the same text, so the walk goes through all of it."""
    width = MAX_NODES // (2 * MAX_DEPTH) - 2
    level = ", ".join(f"s{j}: {j}" for j in range(width))
    text = "{" + level + ", d: " + ("{" + level + ", d: ") * (MAX_DEPTH - 2)
    text += "x" + "}" * (MAX_DEPTH - 1) + "\n"
    return text, text


def many_keys() -> tuple[str, str]:
    """One mapping just under the node bound; the desired config sets five of its keys."""
    effective = "".join(_pairs(MAX_NODES // 2 - 1, 4))
    return "".join(_pairs(5, 4)), effective


def many_keys_both() -> tuple[str, str]:
    """The same, with a desired config as large: both sides at the node bound."""
    text = "".join(_pairs(MAX_NODES // 2 - 1, 4))
    return text, text


def max_size() -> tuple[str, str]:
    """The byte cap filled: as many keys as the node bound allows, values to fill 4 MiB."""
    count = MAX_NODES // 2 - 1
    width = (MAX_YAML_BYTES - 64) // count - 16
    effective = "".join(_pairs(count, width))
    return "k000001: " + "v" * width + "000001\n", effective


def over_cap() -> tuple[str, str]:
    effective = "a: " + "x" * MAX_YAML_BYTES + "\n"
    return "a: x\n", effective


def laughs() -> tuple[str, str]:
    """Exponential aliasing: 2**60 nodes once expanded."""
    lines = ["l0: &l0 [lol, lol]"] + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 60)]
    return "l0: [lol]\n", "\n".join(lines) + "\n"


def alias_fanout() -> tuple[str, str]:
    """A 1000-node anchor aliased to just under the node bound; the desired config is the
    same text, so the walk goes through every expanded node."""
    anchor = "a: &a [" + ", ".join(f"x{i}" for i in range(999)) + "]\n"
    count = MAX_NODES // 1000 - 3
    text = anchor + "b: [" + ", ".join(["*a"] * count) + "]\n"
    return text, text


def long_scalar() -> tuple[str, str]:
    """One scalar filling the byte cap against a desired value with a substitution."""
    return "a: 'http://${env:HOST}:4317/x'\n", "a: " + "h" * (MAX_YAML_BYTES - 10) + "\n"


def subst(count: int, length: int) -> Callable[[], tuple[str, str]]:
    """`count` substitutions with literals between, against a value that matches all but
    the last literal: the regex backtracks through every split of the value."""

    def build() -> tuple[str, str]:
        desired = "".join(f"${{env:V{i}}}x" for i in range(count)) + "z"
        return f"a: '{desired}'\n", "a: " + "x" * length + "\n"

    return build


def duration_digits() -> tuple[str, str]:
    """A run of digits where a duration is wanted: the old duration regex backtracks
    quadratically."""
    return "a: 5s\n", "a: '" + "1" * 200_000 + "'\n"


def sexagesimal() -> tuple[str, str]:
    """`1:1:1:...`: a YAML 1.1 base-60 int PyYAML builds with ever larger multiplications."""
    return "a: 1\n", "a: 1" + ":1" * 300_000 + "\n"


def extensions() -> tuple[str, str]:
    """service.extensions is matched as a set: each desired extension against each
    reported one."""
    desired = "service: {extensions: [" + ", ".join(f"want{i}" for i in range(5)) + "]}\n"
    reported = ", ".join(f"ext{i}" for i in range(MAX_NODES // 2))
    return desired, "service: {extensions: [" + reported + "]}\n"


CASES = [
    Case("deep", f"{MAX_DEPTH - 1} levels of 998 keys", deep),
    Case("many-keys", f"{MAX_NODES // 2 - 1} keys, 5 desired", many_keys),
    Case("many-keys-both", "the same, all desired", many_keys_both),
    Case("max-size", "4 MiB, node bound", max_size),
    Case("over-cap", "4 MiB + 4 bytes", over_cap),
    Case("laughs", "2**60 by aliases", laughs),
    Case("alias-fanout", "1000 x 197 aliases", alias_fanout),
    Case("long-scalar", "one 4 MiB scalar", long_scalar),
    Case("subst-3", "3 ${} vs 16 KB", subst(3, 16_000)),
    Case("subst-200", "200 ${} vs 1 MB", subst(200, 1_000_000)),
    Case("duration", "200 KB digits", duration_digits),
    Case("sexagesimal", "1:1:... 600 KB", sexagesimal),
    Case("extensions", "5 vs 100000", extensions),
]


# ---------------------------------------------------------------- measuring


def _call(case: Case, old: bool, libyaml: bool, conn: Connection) -> None:
    if old:
        use_old_path()
    validation.LIBYAML = libyaml
    desired, effective = case.build()
    started = time.perf_counter()
    try:
        found = drift.compare(desired, effective)
    except Exception as error:  # noqa: BLE001 - the old path's crashes are a finding
        conn.send((time.perf_counter() - started, f"raised {type(error).__name__}"))
        return
    elapsed = time.perf_counter() - started
    conn.send((elapsed, (found.errors or tuple(map(str, found.differences)) or ("in sync",))[0]))


def timed(case: Case, old: bool, libyaml: bool, timeout: float) -> tuple[float | None, str]:
    """One call in a forked child: its time and outcome; (None, "") past `timeout`."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_call, args=(case, old, libyaml, send))
    child.start()
    if receive.poll(timeout):
        elapsed, outcome = receive.recv()
        child.join()
        return elapsed, outcome
    child.kill()
    child.join()
    return None, ""


def best(case: Case, libyaml: bool, repeat: int, timeout: float) -> tuple[float | None, str]:
    times: list[float] = []
    outcome = ""
    for _ in range(repeat):
        elapsed, outcome = timed(case, False, libyaml, timeout)
        if elapsed is None:
            return None, ""
        times.append(elapsed)
    return min(times), outcome


def cached(case: Case) -> float:
    """A call that finds its answer in a DriftCache: hashing the effective text."""
    desired, effective = case.build()
    cache = DriftCache()
    cache.compare(desired, DESIRED_HASH, effective)
    started = time.perf_counter()
    cache.compare(desired, DESIRED_HASH, effective)
    return time.perf_counter() - started


def show(seconds: float | None, timeout: float) -> str:
    if seconds is None:
        return f">{timeout:g} s"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per old call")
    parser.add_argument("--repeat", type=int, default=3, help="new calls per case (best kept)")
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--no-old", action="store_true", help="skip the old path")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    print(
        f"Python {platform.python_version()}, PyYAML {yaml.__version__} "
        f"(libyaml: {yaml.__with_libyaml__}), {multiprocessing.cpu_count()} CPUs; "
        f"caps: {MAX_YAML_BYTES} bytes, {MAX_NODES} nodes, {MAX_DEPTH} levels\n"
    )
    print(
        "| case | effective config | bytes | before | after | after, no libyaml "
        "| after, cached | outcome (after) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for case in cases:
        _, effective = case.build()
        size = len(effective.encode("utf-8", "surrogatepass"))
        before, old_outcome = (None, "") if args.no_old else timed(case, True, False, args.timeout)
        after, outcome = best(case, True, args.repeat, args.timeout)
        pure, _ = best(case, False, 1, args.timeout)
        hit = cached(case)
        crashed = f" ({old_outcome})" if old_outcome.startswith("raised") else ""
        print(
            f"| {case.name} | {case.what} | {size} "
            f"| {'-' if args.no_old else show(before, args.timeout) + crashed} "
            f"| {show(after, args.timeout)} | {show(pure, args.timeout)} "
            f"| {show(hit, args.timeout)} | {outcome[:70]} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
