"""Drift: a Collector's re-serialised effective config is not drift, a local edit is,
and the verdict for an agent follows its remote config status and effective config."""

from __future__ import annotations

import copy
import random
import re
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.drift import (
    MAX_REASONS,
    MAX_SHOWN_VALUES,
    REDACTED,
    SECRET_KEYS,
    Difference,
    DriftCache,
    DriftState,
    DriftVerdict,
    canonical_yaml,
    compare,
    differences,
    drift_reasons,
    drifted,
    masked_config_text,
    substitution_matches,
    substitution_segments,
    unified_diff,
)
from opamp_operator.fleet.drift import agent_drift as judge
from opamp_operator.fleet.validation import MAX_YAML_BYTES, child_path, index_path
from opamp_operator.fleet.views import AgentView
from world.drift_oracle import old_substitution_pattern, oracle

# What the fleet asks for: a gateway with env substitutions, a secret header, a null
# component, list items that are mappings (transform statements) and the extensions list.
DESIRED = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: ${env:MY_POD_IP}:4317
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
  batch:
    timeout: 200ms
  transform:
    trace_statements:
      - context: span
        statements:
          - set(attributes["tier"], "gateway")
  resource:
    attributes:
      - {key: deployment.revision, value: 10, action: upsert}
exporters:
  otlp:
    endpoint: tempo:4317
    headers:
      authorization: Bearer ${env:TEMPO_TOKEN}
    retry_on_failure:
      max_elapsed_time: 5m
    tls:
      insecure: true
  debug:
extensions:
  health_check: {}
  pprof:
    endpoint: localhost:1777
service:
  extensions: [health_check, pprof]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, transform, resource, batch]
      exporters: [otlp, debug]
"""

# The same config as a supervised Collector reports it: keys re-ordered, flow style gone,
# defaults filled in (also inside list items), substitutions resolved, the secret
# redacted, durations re-rendered (one as nanoseconds), an int field rendered as text,
# and the supervisor's opamp extension added to extensions and service.extensions.
EFFECTIVE = """\
exporters:
  debug:
    sampling_initial: 2
    sampling_thereafter: 1
    use_internal_logger: true
  otlp:
    balancer_name: round_robin
    compression: gzip
    endpoint: tempo:4317
    headers:
      authorization: '[REDACTED]'
    retry_on_failure:
      enabled: true
      initial_interval: 5s
      max_elapsed_time: 5m0s
      max_interval: 30s
      multiplier: 1.5
    sending_queue:
      enabled: true
      num_consumers: 10
      queue_size: 1000
    timeout: 5s
    tls:
      include_system_ca_certs_pool: false
      insecure: true
extensions:
  health_check:
    endpoint: 0.0.0.0:13133
    path: /
  opamp:
    capabilities:
      reports_effective_config: true
    instance_uid: 01912e38-7d6a-7b4e-8a1b-2f8c4c9d0e11
    server:
      ws:
        endpoint: ws://127.0.0.1:44123/v1/opamp
  pprof:
    block_profile_fraction: 0
    endpoint: localhost:1777
processors:
  batch:
    metadata_cardinality_limit: 1000
    send_batch_max_size: 0
    send_batch_size: 8192
    timeout: 200000000
  memory_limiter:
    check_interval: 1s
    limit_mib: 0
    limit_percentage: 80
    spike_limit_percentage: 0
  resource:
    attributes:
      - action: upsert
        key: deployment.revision
        value: "10"
  transform:
    error_mode: propagate
    trace_statements:
      - conditions: []
        context: span
        error_mode: ""
        statements:
          - set(attributes["tier"], "gateway")
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 10.244.1.17:4317
        max_recv_msg_size_mib: 0
        read_buffer_size: 524288
service:
  extensions:
    - health_check
    - pprof
    - opamp
  pipelines:
    traces:
      exporters: [otlp, debug]
      processors: [memory_limiter, transform, resource, batch]
      receivers: [otlp]
  telemetry:
    logs:
      encoding: json
      level: info
    resource:
      service.instance.id: 01912e38-7d6a-7b4e-8a1b-2f8c4c9d0e11
"""


def test_a_real_collector_report_of_the_desired_config_is_not_drift() -> None:
    assert drift_reasons(DESIRED, EFFECTIVE) == []
    assert not drifted(DESIRED, EFFECTIVE)
    assert EFFECTIVE != DESIRED  # and the raw texts do differ


@pytest.mark.parametrize(
    ("old", "new", "reasons"),
    [
        (
            "    endpoint: tempo:4317\n",
            "    endpoint: tempo-canary:4317\n",
            ["exporters.otlp.endpoint (changed)"],
        ),
        (
            "      insecure: true\n",
            "      insecure: false\n",
            ["exporters.otlp.tls.insecure (changed)"],
        ),
        (
            "      max_elapsed_time: 5m0s\n",
            "      max_elapsed_time: 10m0s\n",
            ["exporters.otlp.retry_on_failure.max_elapsed_time (changed)"],
        ),
        (
            "        endpoint: 10.244.1.17:4317\n",
            "        endpoint: 10.244.1.17:4318\n",
            ["receivers.otlp.protocols.grpc.endpoint (changed)"],
        ),
        (
            "      processors: [memory_limiter, transform, resource, batch]\n",
            "      processors: [memory_limiter, transform, resource]\n",
            ["service.pipelines.traces.processors[3] (missing)"],
        ),
        (
            "      processors: [memory_limiter, transform, resource, batch]\n",
            "      processors: [memory_limiter, transform, resource, batch, filter]\n",
            ["service.pipelines.traces.processors[4] (added)"],
        ),
        (
            "      processors: [memory_limiter, transform, resource, batch]\n",
            "      processors: [transform, memory_limiter, resource, batch]\n",
            [
                "service.pipelines.traces.processors[0] (changed)",
                "service.pipelines.traces.processors[1] (changed)",
            ],
        ),
        (
            "    - pprof\n",
            "",
            ["service.extensions[1] (missing)"],
        ),
        (
            '          - set(attributes["tier"], "gateway")\n',
            '          - set(attributes["tier"], "edge")\n',
            ["processors.transform.trace_statements[0].statements[0] (changed)"],
        ),
        (
            "  pprof:\n    block_profile_fraction: 0\n    endpoint: localhost:1777\n",
            "",
            ["extensions.pprof (missing)"],
        ),
        (
            '        value: "10"\n',
            '        value: "11"\n',
            ["processors.resource.attributes[0].value (changed)"],
        ),
        (
            "    headers:\n      authorization: '[REDACTED]'\n",
            "    headers: none\n",
            ["exporters.otlp.headers (changed)"],
        ),
    ],
)
def test_a_local_edit_is_drift_named_by_path(old: str, new: str, reasons: list[str]) -> None:
    assert old in EFFECTIVE
    edited = EFFECTIVE.replace(old, new)
    assert drift_reasons(DESIRED, edited) == reasons
    assert drifted(DESIRED, edited)


@pytest.mark.parametrize(
    ("desired", "effective", "is_drift"),
    [
        # booleans are not numbers; numbers compare by value; NaN is NaN
        ("a: true", "a: 1", True),
        ("a: 1", "a: 1.0", False),
        ("a: .nan", "a: .nan", False),
        ("a: 0", "a: false", True),
        # the same YAML text typed another way
        ("a: '10'", "a: 10", False),
        ("a: 10", "a: '10'", False),
        ("a: true", "a: 'true'", False),
        ("a: 10", "a: '10.0'", True),
        # Go durations
        ("a: 1m", "a: 1m0s", False),
        ("a: 1m", "a: 60000000000", False),
        ("a: 1.5h", "a: 1h30m0s", False),
        ("a: 1m", "a: 61s", True),
        ("a: 1m", "a: 60000000001", True),
        ("a: 1m", "a: true", True),
        ("a: abc", "a: 1m", True),
        # secrets the Collector redacts
        ("a: s3cret", "a: '[REDACTED]'", False),
        ("a: '[REDACTED]'", "a: s3cret", True),
        # substitutions the Collector resolved
        ("a: ${env:X}", "a: {b: 1}", False),
        ("a: ${env:X}", "b: 1", True),  # resolved to anything, but still there
        ("a: 'http://${env:HOST}:4317'", "a: http://10.0.0.1:4317", False),
        ("a: 'http://${env:HOST}:4317'", "a: http://10.0.0.1:4318", True),
        ("a: '${env:A:-${env:B}}/x'", "a: anything/x", False),
        ("a: '${env:A:-${env:B}}/x'", "a: anything/y", True),
        ("a: 'cost $$5'", "a: cost $5", False),
        ("a: '$${env:X}'", "a: '${env:X}'", False),
        ("a: '${unterminated'", "a: '${unterminated'", False),
        ("a: '${unterminated'", "a: something", True),
        ("a: 'x${env:N}'", "a: 1", True),
        # null sets nothing, but its key is there; empty containers match null
        ("a: null", "a: {b: 1}", False),
        ("a: null", "b: 1", True),
        ("a: {}", "a: null", False),
        ("a: []", "a: null", False),
        ("a: {b: 1}", "a: null", True),
        ("a: []", "a: [1]", True),
        ("a: {}", "a: []", True),
        ("a: [1]", "a: {0: 1}", True),
        # lists are positional, their items matched by the same rule
        ("a: [1, 2]", "a: [2, 1]", True),
        ("a: [{k: 1}]", "a: [{k: 1, default: 2}]", False),
        # only service.extensions is a set (the supervisor appends opamp)
        ("service: {extensions: [a, b]}", "service: {extensions: [b, opamp, a]}", False),
        ("service: {extensions: [a, b]}", "service: {extensions: [a]}", True),
        ("x: {extensions: [a]}", "x: {extensions: [a, opamp]}", True),
        # a key written as a number on one side and a string on the other
        ("1: a", "'1': a", False),
        ("a: 2024-01-01", "a: 2024-01-01", False),
        # levels the Collector reads in any case and reports capitalised
        ("a: none", "a: None", False),
        ("a: INFO", "a: info", False),
        ("a: detailed", "a: Normal", True),
        ("a: nonelike", "a: NoneLike", True),
        # basic is the zero level: the debug exporter's verbosity (omitempty) omits it
        ("d: {verbosity: basic}", "d: {sampling_initial: 2}", False),
        ("d: {verbosity: detailed}", "d: {sampling_initial: 2}", True),
        ("d: {auth: basic}", "d: {sampling_initial: 2}", True),
    ],
)
def test_value_rules(desired: str, effective: str, is_drift: bool) -> None:
    assert drifted(desired, effective) is is_drift
    assert bool(drift_reasons(desired, effective)) is is_drift


def test_invalid_yaml_on_either_side_is_drift_with_a_reason() -> None:
    assert drifted("a: [", "a: 1")
    assert drifted("a: 1", "a: [")
    assert drift_reasons("a: 1", "a: [") == [
        "the effective config is not valid YAML (line 2, column 1)"
    ]
    assert [r.split(" (")[0] for r in drift_reasons("{", "]")] == [
        "the desired config is not valid YAML",
        "the effective config is not valid YAML",
    ]
    # The parser's own message can quote the document; reasons go into status and
    # Events, so it is left out.
    assert "sk_live_X" not in " ".join(drift_reasons("a: 1", "a: !!int sk_live_X"))


def test_reasons_are_bounded_and_never_show_values() -> None:
    desired = "\n".join(f"k{i}: secret-{i}" for i in range(50))
    effective = "\n".join(f"k{i}: other-{i}" for i in range(50))
    reasons = drift_reasons(desired, effective)
    assert len(reasons) == MAX_REASONS
    assert reasons[0] == "k0 (changed)"
    assert not any("secret" in r or "other" in r for r in reasons)
    assert drift_reasons(desired, effective, limit=3) == [
        "k0 (changed)",
        "k1 (changed)",
        "k2 (changed)",
    ]
    assert drift_reasons(desired, effective, limit=0) == []
    assert drift_reasons(desired, "") == [f"k{i} (missing)" for i in range(MAX_REASONS)]


@pytest.mark.parametrize("depth", [99, 101, 450, 5000])
def test_deep_documents_never_overflow_the_walks(depth: int) -> None:
    deep = "a: " + "[" * depth + "]" * depth + "\n"
    shallower = "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"
    assert drifted(deep, shallower)
    reasons = drift_reasons(deep, deep)
    if depth < 100:
        assert reasons == []
    else:
        assert len(reasons) == 2
        assert reasons[0].startswith("the desired config is too deeply nested")
        assert reasons[1].startswith("the effective config is too deeply nested")
    if depth < 100:
        assert unified_diff(deep, "a: 1\n").startswith("--- desired/config.yaml\n")
    else:
        assert unified_diff(deep, "a: 1\n") == "no diff: the desired config is too deeply nested\n"


def test_a_whole_config_of_another_shape_is_one_reason() -> None:
    assert drift_reasons("a: 1", "- a") == ["(the whole config) (changed)"]
    assert differences({"a": {"b": 1}}, {"a": [1]}) == differences({"a": {"b": 1}}, {"a": 3})
    assert [str(d) for d in differences({"a": {"b": 1}}, {"a": [1]})] == ["a (changed)"]


def test_odd_keys_get_unambiguous_paths() -> None:
    desired = 'resource: {"service.name": a, "with space": b}'
    effective = 'resource: {"service.name": x, "with space": y}'
    assert drift_reasons(desired, effective) == [
        'resource["service.name"] (changed)',
        'resource["with space"] (changed)',
    ]


# ---------------------------------------------------------------- substitutions, hostile values


# Values built of the pieces that matter (references, nested ones, `$$`, lone `$`, `{`
# and `}`, unterminated `${`), and texts of the same letters: short, so that both
# matches and near misses are common.
_PIECES = ["a", "b", "ab", "$$", "$", "{", "}", "${", ":-", "${env:X}", "${y}", "${a:-${b}}"]
_DESIRED_VALUES = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)
_TEXTS = st.text(alphabet="ab${}\n", max_size=10)
_REFERENCE = re.compile(r"\$\{[^${}]*\}")


@settings(max_examples=1000, deadline=None)
@given(_DESIRED_VALUES, _TEXTS)
def test_segments_match_what_the_regex_matched(desired: str, text: str) -> None:
    assert (substitution_segments(desired) is None) == (old_substitution_pattern(desired) is None)
    assert substitution_matches(desired, text) is oracle(desired, text)


@settings(max_examples=1000, deadline=None)
@given(
    _DESIRED_VALUES,
    st.lists(st.text(alphabet="ab${}", max_size=4), min_size=8, max_size=8),
    st.integers(min_value=0, max_value=40),
    st.sampled_from(["", "a", "b", "$", "}"]),
)
def test_segments_match_a_resolved_value_as_the_regex_did(
    desired: str, fills: list[str], at: int, insert: str
) -> None:
    """Texts made from `desired` the way the Collector makes them (each reference
    replaced by some value), and the same with one character dropped or added."""
    values = iter(fills * 4)
    text = _REFERENCE.sub(lambda _: next(values), desired).replace("$$", "$")
    assert substitution_matches(desired, text) is oracle(desired, text)
    at = min(at, len(text))
    edited = text[:at] + insert + text[at + 1 :] if insert else text[:at] + text[at + 1 :]
    assert substitution_matches(desired, edited) is oracle(desired, edited)


@pytest.mark.parametrize(
    ("desired", "segments"),
    [
        ("plain", ("plain",)),
        ("${env:A}", None),
        ("${env:A:-${env:B}}", None),
        ("x${env:A}", ("x", "")),
        ("${env:A}${env:B}", ("", "", "")),
        ("a${env:A:-${env:B}}b${c}c", ("a", "b", "c")),
        ("${a:-{x}}", ("", "}")),  # a lone { does not nest
        ("cost $$5 ${x}", ("cost $5 ", "")),
        ("$x$", ("$x$",)),
        ("a${open", ("a${open",)),
        ("a${open $$ ${x}", ("a${open $$ ${x}",)),  # literal to the end, $$ too
        ("${x}${open", ("", "${open")),
    ],
)
def test_substitution_segments(desired: str, segments: tuple[str, ...] | None) -> None:
    assert substitution_segments(desired) == segments


def test_many_substitutions_against_a_long_value_take_linear_time() -> None:
    """200 substitutions against a megabyte: the regex backtracked over a power of the
    length per substitution (three against 16 KB took minutes); the segments scan it once."""
    desired = "".join(f"${{env:V{i}}}x" for i in range(200)) + "${env:END}z"
    matching = "x" * 1_000_000 + "z"
    failing_late = "x" * 199 + "a" * 1_000_000 + "z"
    failing_end = "x" * 1_000_000 + "a"
    started = time.perf_counter()
    assert substitution_matches(desired, matching)
    assert not substitution_matches(desired, failing_late)
    assert not substitution_matches(desired, failing_end)
    assert drift_reasons(f"a: '{desired}'", f"a: {failing_late}") == ["a (changed)"]
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "effective",
    [
        "'" + "1" * 100_000 + "'",  # the duration regex backtracked quadratically
        "'1." + "0" * 5000 + "s'",  # a duration Fraction could not convert (4300 digits)
        "0x" + "f" * 990,  # an int Python can still print
    ],
)
def test_hostile_values_against_a_duration_are_changes_found_quickly(effective: str) -> None:
    started = time.perf_counter()
    assert drift_reasons("a: 5s\n", f"a: {effective}\n") == ["a (changed)"]
    assert time.perf_counter() - started < 1.0


_EXTENSION_ITEMS = st.sampled_from(
    [
        *("a", "b", "A", "10", 10, 10.0, True, "true", None, "info", "INFO", "basic"),
        *("1m", "1m0s", 60000000000, REDACTED, "${env:X}", "x${env:X}", "xa", "$$", "$"),
        *({"a": 1}, ["a"], "1:2"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_EXTENSION_ITEMS, max_size=5), st.lists(_EXTENSION_ITEMS, max_size=6))
def test_extensions_match_by_the_value_rules_in_any_order(
    desired: list[Any], reported: list[Any]
) -> None:
    """service.extensions looks plain ids up among the reported texts at once; the
    outcome is that of trying each desired item against each reported one."""
    found = differences({"service": {"extensions": desired}}, {"service": {"extensions": reported}})
    missing = [
        i
        for i, item in enumerate(desired)
        if not any(differences(item, candidate, limit=1) == [] for candidate in reported)
    ]
    assert found == [Difference(f"service.extensions[{i}]", "missing") for i in missing]


def test_durations_are_compared_up_to_64_characters() -> None:
    """Go prints none longer than 25; longer text is compared as text only."""
    assert not drifted("a: 1m", "a: " + "0" * 61 + "60s")
    assert drifted("a: 1m", "a: " + "0" * 62 + "60s")
    assert not drifted("a: " + "0" * 62 + "60s", "a: " + "0" * 62 + "60s")


# ---------------------------------------------------------------- canonical form and diff


def test_canonical_yaml_sorts_keys_and_drops_style() -> None:
    assert canonical_yaml("b: {y: 1, x: [2, {d: 1, c: 2}]}\na: 'q'\n") == textwrap.dedent(
        """\
        a: q
        b:
          x:
          - 2
          - c: 2
            d: 1
          y: 1
        """
    )
    assert canonical_yaml("") == ""
    assert canonical_yaml("# nothing\n") == ""
    assert canonical_yaml("a: [") == "a: ["  # unreadable text stays as it is
    assert canonical_yaml("1: x\nb: y\n0: z\n") == "b: y\n0: z\n1: x\n"  # mixed key types


def test_unified_diff_of_a_reordered_restyled_config_is_empty() -> None:
    restyled = "service: {pipelines: {traces: {exporters: [debug], receivers: [otlp]}}}\n"
    original = (
        "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n"
    )
    assert unified_diff(original, restyled) == ""


def test_unified_diff_shows_the_change_in_canonical_form() -> None:
    desired = "exporters: {otlp: {endpoint: 'tempo:4317'}}\nreceivers: {otlp: {}}\n"
    effective = (
        "receivers:\n  otlp: {}\nexporters:\n  otlp:\n    endpoint: tempo:4318\n    timeout: 5s\n"
    )
    assert unified_diff(desired, effective, "collector.yaml") == textwrap.dedent(
        """\
        --- desired/collector.yaml
        +++ effective/collector.yaml
        @@ -1,5 +1,6 @@
         exporters:
           otlp:
        -    endpoint: tempo:4317
        +    endpoint: tempo:4318
        +    timeout: 5s
         receivers:
           otlp: {}
        """
    )


@pytest.mark.parametrize(
    "unreadable",
    [
        "api_key: [sk_live_UNREAD\n",
        "a: !!int sk_live_UNREAD\n",  # PyYAML's message quotes the value
        "a: *sk_live_UNREAD\n",  # and an undefined alias's name
        "a: !sk_live_UNREAD x\n",  # and an unknown tag
        "a: sk_live_UNREAD\na: twice\n\tb: 1\n",
    ],
)
def test_unreadable_text_is_never_shown(unreadable: str) -> None:
    for diff in (unified_diff(unreadable, "a: 1\n"), unified_diff("a: 1\n", unreadable)):
        assert "sk_live" not in diff
        assert diff.startswith("no diff: the ")
        assert diff.count("\n") == 1
    assert "sk_live" not in masked_config_text(unreadable)
    assert masked_config_text(unreadable).startswith("# not shown: the config is not valid YAML")


def test_unreadable_text_is_named_by_side_and_position() -> None:
    assert unified_diff("a: [\n", "a: 1\n") == (
        "no diff: the desired config is not valid YAML (line 2, column 1)\n"
    )
    assert unified_diff("a: 1\n", "exporters: {otlp: [\n") == (
        "no diff: the effective config is not valid YAML (line 2, column 1)\n"
    )
    assert unified_diff("{", "a: !!int x") == (
        "no diff: the desired config is not valid YAML (line 2, column 1); "
        "the effective config is not valid YAML (line 1, column 4)\n"
    )
    assert masked_config_text("a: [\n") == (
        "# not shown: the config is not valid YAML (line 2, column 1)\n"
    )


def test_unified_diff_is_bounded() -> None:
    desired = "\n".join(f"key{i:04}: value-{i}" for i in range(2000))
    effective = "\n".join(f"key{i:04}: changed-{i}" for i in range(2000))
    full = unified_diff(desired, effective, max_chars=10**9)
    assert full.count("\n") > 4000
    cut = unified_diff(desired, effective, max_chars=2000)
    body, marker = cut.rsplit("... diff truncated: ", 1)
    assert len(body) <= 2000
    assert full.startswith(body)
    remaining = int(marker.split()[0])
    assert remaining == full.count("\n") - body.count("\n")
    assert marker == f"{remaining} more lines\n"


# ---------------------------------------------------------------- secrets in the diff

FINDING_DESIRED = """\
exporters:
  otlphttp:
    endpoint: https://ingest.example.com
    headers:
      api-key: sk_live_HEADER
  datadog:
    api:
      key: sk_live_DATADOG
      site: datadoghq.eu
extensions:
  basicauth/client:
    client_auth:
      username: collector
      password: sk_live_PASSWORD
"""
# What the Collector reports: every configopaque value redacted, one endpoint edited.
FINDING_EFFECTIVE = """\
exporters:
  otlphttp:
    endpoint: https://elsewhere.example.com
    headers:
      api-key: '[REDACTED]'
    timeout: 30s
  datadog:
    api:
      key: '[REDACTED]'
      site: datadoghq.eu
extensions:
  basicauth/client:
    client_auth:
      username: collector
      password: '[REDACTED]'
"""


def test_the_finding_a_desired_secret_is_never_echoed_by_the_diff() -> None:
    diff = unified_diff(FINDING_DESIRED, FINDING_EFFECTIVE)
    assert "sk_live" not in diff
    assert diff == textwrap.dedent(
        """\
        --- desired/config.yaml
        +++ effective/config.yaml
        @@ -4,9 +4,10 @@
               key: '[REDACTED]'
               site: datadoghq.eu
           otlphttp:
        -    endpoint: https://ingest.example.com
        +    endpoint: https://elsewhere.example.com
             headers:
               api-key: '[REDACTED]'
        +    timeout: 30s
         extensions:
           basicauth/client:
             client_auth:
        """
    )


def test_a_path_the_effective_config_redacts_is_masked_whatever_its_key() -> None:
    desired = "receivers: {custom: {opaque_field: sk_live_PATH, other: x}}\n"
    effective = "receivers: {custom: {opaque_field: '[REDACTED]', other: y}}\n"
    diff = unified_diff(desired, effective)
    assert "sk_live" not in diff
    assert "-    other: x\n+    other: y\n" in diff
    assert "    opaque_field: '[REDACTED]'\n" in diff
    # a desired mapping where the Collector reports one redacted value is masked whole
    whole = unified_diff("a: {b: {c: sk_live_DEEP}}\n", "a: {b: '[REDACTED]'}\n")
    assert "sk_live" not in whole
    assert whole == ""


@pytest.mark.parametrize(
    ("parent", "key"),
    [
        (None, "password"),
        (None, "client_secret"),
        (None, "api_key"),
        (None, "apiKey"),
        (None, "API-Key"),
        (None, "x_api_key"),
        (None, "token"),
        (None, "access_token"),
        (None, "bearer_token"),
        (None, "private_key"),
        (None, "secret_key"),
        (None, "key_pem"),
        (None, "connection_string"),
        (None, "dsn"),
        (None, "sasl_password"),
        ("tls", "key"),
        ("tls_config", "key"),
        ("api", "key"),
        ("headers", "authorization"),
        ("headers", "X-Scope-OrgID"),
        ("response_headers", "x-api-key"),
        ("htpasswd", "inline"),
    ],
)
def test_a_secret_key_is_masked_on_both_sides(parent: str | None, key: str) -> None:
    """Even when the agent reports the value unredacted (and another one)."""

    def config(value: object) -> str:
        leaf: dict[str, Any] = {key: value}
        return dump({"exporters": {"x": {parent: leaf} if parent else leaf}})

    assert SECRET_KEYS.covers(key, parent)
    desired, effective = config("sk_live_DESIRED"), config("sk_live_EFFECTIVE")
    assert unified_diff(desired, effective) == ""
    assert unified_diff(desired, config(REDACTED)) == ""
    for shown in (masked_config_text(desired), masked_config_text(effective)):
        assert "sk_live" not in shown
        assert f"{key}: '[REDACTED]'" in shown
    # an integer is a secret there too
    assert "8675309" not in masked_config_text(config(8675309))


@pytest.mark.parametrize(
    ("parent", "key"),
    [
        (None, "endpoint"),
        (None, "key"),  # an attribute name in {key: ..., value: ..., action: ...}
        (None, "username"),
        (None, "password_file"),
        (None, "token_file"),
        ("tls", "key_file"),
        ("tls", "cert_file"),
        ("tls", "insecure"),
        ("datadog", "site"),
    ],
)
def test_a_non_secret_key_is_shown(parent: str | None, key: str) -> None:
    def config(value: object) -> str:
        leaf: dict[str, Any] = {key: value}
        return dump({"exporters": {"x": {parent: leaf} if parent else leaf}})

    assert not SECRET_KEYS.covers(key, parent)
    diff = unified_diff(config("plain-desired"), config("plain-effective"))
    assert f"{key}: plain-desired\n" in diff
    assert f"{key}: plain-effective\n" in diff
    assert f"{key}: plain-effective\n" in masked_config_text(config("plain-effective"))


def test_a_mapping_under_a_secret_key_is_walked_not_blanked() -> None:
    desired = "a: {credentials: {file: /etc/creds.json, password: sk_live_INNER}}\n"
    effective = "a: {credentials: {file: /etc/other.json, password: sk_live_INNER}}\n"
    diff = unified_diff(desired, effective)
    assert "sk_live" not in diff
    assert "-    file: /etc/creds.json\n+    file: /etc/other.json\n" in diff
    assert masked_config_text(effective) == textwrap.dedent(
        """\
        a:
          credentials:
            file: /etc/other.json
            password: '[REDACTED]'
        """
    )


def test_list_items_are_walked_by_index() -> None:
    desired = textwrap.dedent(
        """\
        processors:
          custom:
            rules:
              - {name: first, value: sk_live_FIRST}
              - {name: second, value: visible-desired}
        extensions:
          bearertokenauth:
            tokens: [sk_live_T0, sk_live_T1]
        """
    )
    effective = textwrap.dedent(
        """\
        processors:
          custom:
            rules:
              - {name: first, value: '[REDACTED]'}
              - {name: second, value: visible-effective}
        extensions:
          bearertokenauth:
            tokens: [sk_live_T0, sk_live_T2]
        """
    )
    diff = unified_diff(desired, effective)
    assert "sk_live" not in diff
    assert "-      value: visible-desired\n+      value: visible-effective\n" in diff
    assert "sk_live" not in masked_config_text(effective)
    assert "    - '[REDACTED]'\n    - '[REDACTED]'\n" in masked_config_text(desired)


def test_a_desired_reference_is_shown_its_resolved_value_is_not() -> None:
    desired = textwrap.dedent(
        """\
        exporters:
          otlp:
            headers:
              authorization: Bearer ${env:TEMPO_TOKEN}
              x-api-key: ${env:API_KEY}
            tls:
              key_pem: ${file:/var/run/secrets/tls.key}
          kafka:
            auth:
              sasl:
                password: ${env:KAFKA_PASSWORD:-sk_live_DEFAULT}
        """
    )
    effective = (
        desired.replace("Bearer ${env:TEMPO_TOKEN}", "Bearer sk_live_BEARER")
        .replace("${env:API_KEY}", "sk_live_API")
        .replace("${file:/var/run/secrets/tls.key}", "sk_live_PEM")
        .replace("${env:KAFKA_PASSWORD:-sk_live_DEFAULT}", "sk_live_DEFAULT")
    )
    # literal text around a reference (`Bearer `) or in its default may be a secret too
    assert unified_diff(desired, effective) == textwrap.dedent(
        """\
        --- desired/config.yaml
        +++ effective/config.yaml
        @@ -6,6 +6,6 @@
           otlp:
             headers:
               authorization: '[REDACTED]'
        -      x-api-key: ${env:API_KEY}
        +      x-api-key: '[REDACTED]'
             tls:
        -      key_pem: ${file:/var/run/secrets/tls.key}
        +      key_pem: '[REDACTED]'
        """
    )
    assert "sk_live" not in masked_config_text(effective)
    # the effective side never keeps a reference: a resolved config has none
    assert "${env:API_KEY}" not in masked_config_text(desired)


def test_masked_config_text_is_the_canonical_form_with_secrets_masked() -> None:
    masked = masked_config_text(EFFECTIVE.replace("'[REDACTED]'", "Bearer sk_live_REPORTED"))
    assert "sk_live" not in masked
    assert masked == canonical_yaml(EFFECTIVE)
    assert masked_config_text("") == ""
    assert masked_config_text("b: 1\na: {password: 1234, key: name}\n") == (
        "a:\n  key: name\n  password: '[REDACTED]'\nb: 1\n"
    )


# ---------------------------------------------------------------- one agent

HASH = "ab" * 32
OTHER = "cd" * 32


def agent(
    status: str | None = None, config_hash: str = "", error: str = "", effective: str = ""
) -> AgentView:
    return AgentView(
        instance_uid="0191c9b8-0000-7000-8000-000000000001",
        attributes={"service.name": "otelcol"},
        remote_config_status=status,
        remote_config_hash=config_hash,
        remote_config_error=error,
        effective_config=effective,
    )


EDITED = EFFECTIVE.replace("endpoint: tempo:4317", "endpoint: elsewhere:4317")


AGENT_CASES: list[tuple[AgentView, DriftState, str]] = [
    (agent("APPLIED", HASH), DriftState.IN_SYNC, "applied the desired config"),
    (
        agent("APPLIED", HASH.upper(), effective=EFFECTIVE),
        DriftState.IN_SYNC,
        "applied the desired config and its effective config matches it",
    ),
    (
        agent("APPLIED", HASH, effective=EDITED),
        DriftState.DRIFTED,
        "its effective config differs from the desired config at exporters.otlp.endpoint (changed)",
    ),
    (
        agent("APPLIED", HASH, effective="exporters: {otlp: [\n"),
        DriftState.DRIFTED,
        "the effective config is not valid YAML (line 2, column 1)",
    ),
    (agent("APPLYING", HASH), DriftState.PENDING, "applying the desired config"),
    (
        agent("FAILED", HASH, error="'exporters' unknown type: \"kafka\""),
        DriftState.DRIFTED,
        "failed to apply the desired config: 'exporters' unknown type: \"kafka\"",
    ),
    (
        agent("FAILED", HASH),
        DriftState.DRIFTED,
        "failed to apply the desired config: (the agent gave no error message)",
    ),
    (
        agent("APPLIED", OTHER, effective=EFFECTIVE),
        DriftState.DRIFTED,
        "the agent runs config cdcdcdcdcdcd, not the desired abababababab",
    ),
    (
        agent("APPLYING", OTHER),
        DriftState.DRIFTED,
        "the agent is applying config cdcdcdcdcdcd, not the desired abababababab",
    ),
    (
        agent("FAILED", OTHER, error="bad"),
        DriftState.DRIFTED,
        "failed to apply config cdcdcdcdcdcd: bad; the desired config is abababababab",
    ),
    (
        agent("UNSET"),
        DriftState.DRIFTED,
        "the agent has no remote config (status UNSET); the desired config is abababababab",
    ),
    (
        agent("SOMETHING_NEW", OTHER),
        DriftState.DRIFTED,
        "the agent reports SOMETHING_NEW for config cdcdcdcdcdcd, not the desired abababababab",
    ),
    (
        agent(),
        DriftState.UNKNOWN,
        "the agent has reported neither a remote config status nor an effective config",
    ),
    (
        agent(effective="  \n"),
        DriftState.UNKNOWN,
        "the agent has reported neither a remote config status nor an effective config",
    ),
    (agent(effective=EFFECTIVE), DriftState.IN_SYNC, "its effective config matches it"),
    # UNSET is what opamp-go reports before any remote config: the effective config
    # alone decides then.
    (
        agent("UNSET", effective=EFFECTIVE),
        DriftState.IN_SYNC,
        "its effective config matches it",
    ),
    (
        agent("UNSET", effective=EDITED),
        DriftState.DRIFTED,
        "its effective config differs from the desired config at exporters.otlp.endpoint (changed)",
    ),
    (
        agent(effective=EDITED),
        DriftState.DRIFTED,
        "its effective config differs from the desired config at exporters.otlp.endpoint (changed)",
    ),
]


@pytest.mark.parametrize(("view", "state", "reason"), AGENT_CASES)
def test_agent_drift(view: AgentView, state: DriftState, reason: str) -> None:
    verdict = judge(view, DESIRED, HASH)
    assert (verdict.state, verdict.reason) == (state, reason)
    assert verdict.drifted is (state is DriftState.DRIFTED)


def test_agent_drift_keeps_the_differing_paths_and_names_the_first_few() -> None:
    edited = EFFECTIVE
    for old, new in [
        ("endpoint: tempo:4317", "endpoint: x:1"),
        ("insecure: true", "insecure: false"),
        ("check_interval: 1s", "check_interval: 2s"),
        ("limit_percentage: 80", "limit_percentage: 90"),
        ("timeout: 200000000", "timeout: 1"),
        ("endpoint: localhost:1777", "endpoint: 0.0.0.0:1777"),
        ("      receivers: [otlp]", "      receivers: [otlp, jaeger]"),
    ]:
        assert old in edited
        edited = edited.replace(old, new)
    verdict = judge(agent("APPLIED", HASH, effective=edited), DESIRED, HASH)
    assert verdict == DriftVerdict(
        DriftState.DRIFTED,
        "its effective config differs from the desired config at "
        "processors.memory_limiter.check_interval (changed), "
        "processors.memory_limiter.limit_percentage (changed), "
        "processors.batch.timeout (changed), "
        "exporters.otlp.endpoint (changed), "
        "exporters.otlp.tls.insecure (changed) and more",
        (
            "processors.memory_limiter.check_interval",
            "processors.memory_limiter.limit_percentage",
            "processors.batch.timeout",
            "exporters.otlp.endpoint",
            "exporters.otlp.tls.insecure",
            "extensions.pprof.endpoint",
            "service.pipelines.traces.receivers[1]",
        ),
    )


# ---------------------------------------------------------------- the comparison cache


@pytest.mark.parametrize(("view", "state", "reason"), AGENT_CASES)
def test_the_cache_gives_agent_drifts_verdicts(
    view: AgentView, state: DriftState, reason: str
) -> None:
    cache = DriftCache()
    for _ in range(2):
        assert cache.agent_drift(view, DESIRED, HASH) == judge(view, DESIRED, HASH)
    assert cache.hits == cache.misses == len(cache)  # one entry when the config decided


def test_comparison_says_what_drift_reasons_and_agent_drift_say() -> None:
    pairs = [(DESIRED, EFFECTIVE), (DESIRED, EDITED), ("a: [", "b: 1"), ("a: 1", "# none")]
    pairs += [(DESIRED, EFFECTIVE.replace("1s", "2s").replace("80", "90").replace("5m", "7m"))]
    for desired, effective in pairs:
        found = compare(desired, effective)
        assert found.drifted is drifted(desired, effective)
        for limit in range(-1, MAX_REASONS + 1):
            assert found.reasons(limit) == drift_reasons(desired, effective, limit)
        view = agent("APPLIED", HASH, effective=effective)
        assert found.verdict(applied=True) == judge(view, desired, HASH)


def test_the_cache_keys_on_the_effective_text_and_the_desired_hash() -> None:
    cache = DriftCache()
    first = cache.compare(DESIRED, HASH, EFFECTIVE)
    assert first == compare(DESIRED, EFFECTIVE)
    assert cache.compare(DESIRED, HASH.upper(), EFFECTIVE) is first  # hex in either case
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.compare(DESIRED, HASH, EDITED) == compare(DESIRED, EDITED)
    assert cache.compare(DESIRED, OTHER, EFFECTIVE) is not first
    assert (cache.hits, cache.misses, len(cache)) == (1, 3, 3)
    # trusted: the hash names the desired text, so another text under it is not read
    assert cache.compare("anything: else", HASH, EFFECTIVE) is first


def test_the_cache_evicts_the_least_recently_used() -> None:
    cache = DriftCache(capacity=2)
    a, b, c = (f"k: {name}" for name in "abc")
    cache.compare("k: a", HASH, a)
    cache.compare("k: a", HASH, b)
    cache.compare("k: a", HASH, a)  # a is now the more recent
    cache.compare("k: a", HASH, c)  # evicts b
    assert (cache.hits, cache.misses, len(cache)) == (1, 3, 2)
    cache.compare("k: a", HASH, a)
    assert cache.hits == 2
    cache.compare("k: a", HASH, b)  # evicts c
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 2)
    cache.compare("k: a", HASH, c)
    assert cache.misses == 5


def test_the_cache_is_bounded() -> None:
    cache = DriftCache(capacity=3)
    for i in range(50):
        assert cache.compare("k: 1", HASH, f"k: {i}").drifted is (i != 1)
    assert len(cache) == 3
    assert cache.capacity == 3
    with pytest.raises(ValueError, match="at least one"):
        DriftCache(capacity=0)


def test_the_cache_skips_what_it_cannot_key_or_need_not_keep() -> None:
    cache = DriftCache()
    assert cache.compare(DESIRED, "", EFFECTIVE) == compare(DESIRED, EFFECTIVE)
    too_large = "a: " + "x" * MAX_YAML_BYTES
    assert cache.compare("a: 1", HASH, too_large).reasons() == [
        f"the effective config is too large: more than {MAX_YAML_BYTES} bytes"
    ]
    assert len(cache) == 0
    assert cache.compare("a: 1", HASH, "a: \ud800").drifted  # hashed, though not UTF-8
    assert len(cache) == 1


def test_the_cache_serves_a_thread_pool() -> None:
    cache = DriftCache(capacity=10)
    texts = [EFFECTIVE.replace("tempo:4317", f"tempo-{i}:4317") for i in range(20)]
    expected = {text: compare(DESIRED, text) for text in texts}
    calls = [texts[(i * 7) % 20] for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda text: cache.compare(DESIRED, HASH, text), calls))
    assert results == [expected[text] for text in calls]
    assert cache.hits + cache.misses == 400
    assert len(cache) <= 10


# ---------------------------------------------------------------- properties

# No "$" (a substitution matches anything) and no "[" (no "[REDACTED]"); keys cannot spell
# "service" (service.extensions is matched as a set).
_TEXT = st.text(alphabet="abcxyz019 _.:/-'\"#é\n", max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | _TEXT
)
_KEYS = st.text(alphabet="abcxyz_.-/ 1", min_size=1, max_size=6)
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=30,
)
_CONFIGS = st.dictionaries(_KEYS, _DATA, min_size=1, max_size=5)


def dump(data: object, flow: bool | None = False) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, allow_unicode=True)


def reserialise(data: object, rnd: random.Random, defaults: bool) -> object:
    """What a Collector does to a config it reports: mappings in another order and, with
    `defaults`, keys the desired config never set."""
    if isinstance(data, dict):
        items = list(data.items())
        rnd.shuffle(items)
        out = {k: reserialise(v, rnd, defaults) for k, v in items}
        if defaults:
            out["default_" + str(rnd.randrange(1000))] = rnd.choice([0, "x", {"deep": [1]}, None])
        return out
    if isinstance(data, list):
        return [reserialise(item, rnd, defaults) for item in data]
    return data


def places(data: object, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, container, key-or-index) in a parsed document, depth first."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield child_path(path, key), data, key
            yield from places(value, child_path(path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield index_path(path, i), data, i
            yield from places(value, index_path(path, i))


@settings(max_examples=300, deadline=None)
@given(_CONFIGS, st.sampled_from([True, False, None]))
def test_a_config_is_never_drifted_against_itself(
    config: dict[str, Any], flow: bool | None
) -> None:
    text = dump(config, flow)
    assert drift_reasons(text, text) == []
    assert not drifted(text, text)
    assert unified_diff(text, text) == ""


@settings(max_examples=300, deadline=None)
@given(_CONFIGS, st.randoms(use_true_random=False), st.sampled_from([True, False, None]))
def test_reordered_restyled_config_with_defaults_is_not_drifted(
    config: dict[str, Any], rnd: random.Random, flow: bool | None
) -> None:
    desired = dump(config)
    reordered = dump(reserialise(config, rnd, defaults=False), flow)
    assert not drifted(desired, reordered)
    assert unified_diff(desired, reordered) == ""  # the canonical form ignores order and style
    with_defaults = dump(reserialise(config, rnd, defaults=True), flow)
    assert drift_reasons(desired, with_defaults) == []


@settings(max_examples=300, deadline=None)
@given(_CONFIGS, st.data())
def test_removing_any_key_from_the_effective_config_is_drift_at_that_path(
    config: dict[str, Any], data: st.DataObject
) -> None:
    effective = copy.deepcopy(config)
    keyed = [(p, c, k) for p, c, k in places(effective) if isinstance(c, dict)]
    path, container, key = data.draw(st.sampled_from(keyed))
    del container[key]
    assert drift_reasons(dump(config), dump(effective)) == [f"{path} (missing)"]
    assert drifted(dump(config), dump(effective))


@settings(max_examples=300, deadline=None)
@given(_CONFIGS, st.data())
def test_changing_any_value_in_the_effective_config_is_drift_at_that_path(
    config: dict[str, Any], data: st.DataObject
) -> None:
    """Any value (scalar, list or mapping) replaced by one no rule can match; a null sets
    nothing, so where everything is null a key is removed instead."""
    effective = copy.deepcopy(config)
    candidates = [(p, c, k) for p, c, k in places(effective) if c[k] is not None]
    if not candidates:
        key = data.draw(st.sampled_from(sorted(effective)))
        del effective[key]
        assert drift_reasons(dump(config), dump(effective)) == [f"{child_path('', key)} (missing)"]
        return
    path, container, key = data.draw(st.sampled_from(candidates))
    container[key] = "\N{SNOWMAN} changed"
    assert drift_reasons(dump(config), dump(effective)) == [f"{path} (changed)"]


@settings(max_examples=300, deadline=None)
@given(_CONFIGS | _DATA, _CONFIGS | _DATA, st.integers(min_value=0, max_value=5))
def test_reasons_are_bounded_and_agree_with_drifted(a: object, b: object, limit: int) -> None:
    reasons = drift_reasons(dump(a), dump(b), limit=limit)
    assert len(reasons) <= limit
    assert drifted(dump(a), dump(b)) == bool(drift_reasons(dump(a), dump(b)))
    assert compare(dump(a), dump(b)).reasons(limit) == reasons


# Secret literals, unique and in letters no other generated text uses (nor "[REDACTED]").
_TOKENS = st.text(alphabet="FGHJKLMNPQUVWXYZ", min_size=12, max_size=12).map(lambda t: f"SK{t}")
_SECRET_SHAPES: list[tuple[Any, ...]] = (
    [(name,) for name in sorted(SECRET_KEYS.names)]
    + [("client_secret",), ("apiKey",), ("X-Api-Key",), ("proxy_password",)]
    + sorted(SECRET_KEYS.in_context)
    + [(outer, "X-Custom-Header") for outer in sorted(SECRET_KEYS.value_maps)]
    + [("tokens", 0), ("headers", "authorization")]
)


def _nested(shape: tuple[Any, ...], leaf: object) -> object:
    """`leaf` at `shape` (keys, or 0 for a one-item list) in a fresh subtree."""
    if not shape:
        return leaf
    inner = _nested(shape[1:], leaf)
    return [inner] if shape[0] == 0 else {shape[0]: inner}


def _mappings(data: object, route: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every mapping in a parsed document with the keys and indices leading to it."""
    if isinstance(data, dict):
        yield route, data
        for key, value in data.items():
            yield from _mappings(value, (*route, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _mappings(value, (*route, i))


_ABSENT = object()  # the agent does not report the key at all


def _set(data: Any, route: tuple[Any, ...], value: object) -> None:
    for step in route[:-1]:
        data = data[step]
    if value is _ABSENT:
        del data[route[-1]]
    else:
        data[route[-1]] = value


@settings(max_examples=100, deadline=None)
@given(
    _CONFIGS,
    st.lists(_TOKENS, min_size=8, max_size=8, unique=True),
    st.randoms(use_true_random=False),
    st.sampled_from([True, False, None]),
    st.data(),
)
def test_no_secret_literal_is_ever_shown(
    config: dict[str, Any],
    tokens: list[str],
    rnd: random.Random,
    flow: bool | None,
    data: st.DataObject,
) -> None:
    """Secret literals at secret keys (the agent reporting them redacted, unredacted, as
    another secret, resolved from a desired reference, or not at all) and at any key the
    effective config redacts, anywhere in a random config (also in list items)."""
    desired = copy.deepcopy(config)
    holders = list(_mappings(desired))
    placed: list[tuple[tuple[Any, ...], object]] = []
    keyed: list[str] = []
    for i in range(data.draw(st.integers(min_value=1, max_value=4))):
        route, holder = data.draw(st.sampled_from(holders))
        token, other = tokens[2 * i], tokens[2 * i + 1]
        if data.draw(st.booleans()):
            shape = data.draw(st.sampled_from(_SECRET_SHAPES))
            reference = data.draw(st.booleans())
            holder[f"s{i}"] = _nested(shape, f"${{env:S{i}}}" if reference else token)
            reported = data.draw(st.sampled_from([REDACTED, token, other, _ABSENT]))
            placed.append(((*route, f"s{i}", *shape), token if reference else reported))
            keyed.append(token)
        else:
            holder[f"s{i}"] = token
            placed.append(((*route, f"s{i}"), REDACTED))
    effective = copy.deepcopy(desired)
    for route, reported in placed:
        _set(effective, route, reported)
    desired_text = dump(desired)
    effective_text = dump(reserialise(effective, rnd, defaults=True), flow)

    diff = unified_diff(desired_text, effective_text)
    shown = masked_config_text(effective_text)
    assert not diff.startswith("no diff")
    for token in tokens:
        assert token not in diff
        assert token not in shown
    desired_shown = masked_config_text(desired_text)
    assert not any(token in desired_shown for token in keyed)


def test_the_read_api_renders_no_config_past_its_value_cap_aliases_counted() -> None:
    """A config whose aliases expand past MAX_SHOWN_VALUES is not rendered nor diffed (it
    held a worker thread, and through the GIL the loop, for seconds); one under is."""
    per = 50
    rows = "\n".join(f"  k{i}: v{i}" for i in range(per))
    uses = MAX_SHOWN_VALUES // (2 * per) + 1  # each use: `per` keys and `per` values
    text = f"base: &b\n{rows}\n" + "\n".join(f"use{i}: *b" for i in range(uses)) + "\n"
    assert len(text) < 20_000  # small text, large expansion
    shown = masked_config_text(text)
    assert shown.startswith("# not shown:")
    assert "20,000 values" in shown
    diff = unified_diff("receivers: {}\n", text)
    assert diff.startswith("no diff:")
    assert "the effective config has more than" in diff
    fewer = f"base: &b\n{rows}\n" + "\n".join(f"use{i}: *b" for i in range(uses // 2)) + "\n"
    assert "use0:" in masked_config_text(fewer)
    assert unified_diff("receivers: {}\n", fewer).startswith("---")
