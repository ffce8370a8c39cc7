"""How drift.py matched `${...}` substitutions before segments_match: a regex of `(?s:.*)`
chains, exact but exponential on hostile text. Kept as the oracle the new matcher is
checked against (tests/unit/test_fleet_drift.py) and the old path of
benchmarks/drift_worst.py."""

from __future__ import annotations

import re


def old_substitution_pattern(value: str) -> re.Pattern[str] | None:
    """The regex drift.py matched `${...}` with before segments_match, kept as the oracle:
    the same rules, in exponential time on hostile text."""
    parts: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            parts.append(re.escape("$"))
            i += 2
        elif value.startswith("${", i):
            depth, j = 0, i
            while j < len(value):
                if value.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                if value[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= len(value):
                parts.append(re.escape(value[i:]))
                break
            if i == 0 and j == len(value) - 1:
                return None
            parts.append("(?s:.*)")
            i = j + 1
        else:
            parts.append(re.escape(value[i]))
            i += 1
    return re.compile("".join(parts))


def oracle(desired: str, text: str) -> bool:
    pattern = old_substitution_pattern(desired)
    return pattern is None or pattern.fullmatch(text) is not None
