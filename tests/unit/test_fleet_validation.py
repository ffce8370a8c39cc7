"""Collector config validation: real-world configs pass, each rule the Collector enforces
is reported with its path and message, and no input text makes the validator raise."""

from __future__ import annotations

import string
import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opamp_operator.fleet import validation as v
from opamp_operator.fleet.validation import (
    ConfigSyntaxError,
    Problem,
    child_path,
    format_missing_components,
    format_problems,
    load_yaml,
    missing_components,
    normalise_id,
    validate_config,
    validate_document,
)

# An OTLP gateway: otlp in, memory_limiter + batch, otlp out to a backend, the usual
# extensions, env substitutions in values.
GATEWAY = """\
extensions:
  health_check:
    endpoint: ${env:MY_POD_IP}:13133
  pprof:
    endpoint: localhost:1777
  zpages: {}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: ${env:MY_POD_IP}:4317
        max_recv_msg_size_mib: 16
      http:
        endpoint: ${env:MY_POD_IP}:4318
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 25
  batch:
    send_batch_size: 8192
    timeout: 200ms
exporters:
  otlp:
    endpoint: tempo-distributor.observability.svc:4317
    headers:
      x-scope-orgid: ${env:TENANT}
    tls:
      insecure: true
    retry_on_failure:
      enabled: true
      max_elapsed_time: 5m
service:
  extensions: [health_check, pprof, zpages]
  telemetry:
    logs:
      level: info
    metrics:
      level: normal
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
"""

# Connectors: forward joins two traces pipelines, spanmetrics turns traces into metrics,
# named pipelines (traces/2, metrics/spanmetrics), and a profiles pipeline.
CONNECTED = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 0.0.0.0:4317}
  jaeger:
    protocols:
      thrift_http: {endpoint: 0.0.0.0:14268}
processors:
  batch: {}
  attributes/tenant:
    actions:
      - {key: tenant, value: acme, action: upsert}
  filter/healthz:
    error_mode: ignore
    traces:
      span:
        - 'attributes["http.route"] == "/healthz"'
connectors:
  forward: {}
  spanmetrics:
    histogram:
      explicit:
        buckets: [2ms, 8ms, 50ms, 200ms, 1s]
    dimensions:
      - name: http.method
exporters:
  otlp/tempo:
    endpoint: tempo:4317
  prometheusremotewrite:
    endpoint: http://mimir:9009/api/v1/push
  debug:
    verbosity: basic
  otlp/pyroscope:
    endpoint: pyroscope:4040
service:
  pipelines:
    traces:
      receivers: [otlp, jaeger]
      processors: [filter/healthz, attributes/tenant]
      exporters: [forward, spanmetrics]
    traces/2:
      receivers: [forward]
      processors: [batch]
      exporters: [otlp/tempo, debug]
    metrics/spanmetrics:
      receivers: [spanmetrics]
      exporters: [prometheusremotewrite]
    profiles:
      receivers: [otlp]
      exporters: [otlp/pyroscope]
"""

# A node agent (DaemonSet): files and host metrics, k8s metadata, two exporters.
NODE_AGENT = """\
receivers:
  filelog:
    include: [/var/log/pods/*/*/*.log]
    start_at: end
    include_file_path: true
    operators:
      - type: container
        id: container-parser
  hostmetrics:
    collection_interval: 30s
    root_path: /hostfs
    scrapers:
      cpu: {}
      memory: {}
      filesystem:
        exclude_mount_points:
          mount_points: [/dev/*, /proc/*, /sys/*]
          match_type: regexp
processors:
  k8sattributes:
    auth_type: serviceAccount
    filter:
      node_from_env_var: K8S_NODE_NAME
    extract:
      metadata: [k8s.namespace.name, k8s.pod.name, k8s.pod.uid, k8s.node.name]
  resourcedetection/system:
    detectors: [env, system]
    override: false
  batch: {}
exporters:
  otlphttp:
    endpoint: http://gateway.observability.svc:4318
    compression: zstd
  debug: {}
extensions:
  health_check: {}
  file_storage/checkpoints:
    directory: /var/lib/otelcol/checkpoints
service:
  extensions: [health_check, file_storage/checkpoints]
  pipelines:
    logs:
      receivers: [filelog]
      processors: [k8sattributes, resourcedetection/system, batch]
      exporters: [otlphttp]
    metrics:
      receivers: [hostmetrics]
      processors: [k8sattributes, resourcedetection/system, batch]
      exporters: [otlphttp, debug]
"""

REAL_WORLD = {"gateway": GATEWAY, "connected": CONNECTED, "node-agent": NODE_AGENT}

MINIMAL = """\
receivers: {otlp: {}}
exporters: {debug: {}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [debug]}
"""


def problems_of(text: str) -> list[tuple[str, str, str]]:
    return [(p.path, p.code, p.message) for p in validate_config(textwrap.dedent(text))]


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_real_world_configs_are_valid(name: str) -> None:
    assert validate_config(REAL_WORLD[name]) == []


def test_minimal_config_is_valid_and_unknown_top_level_keys_are_not_errors() -> None:
    assert validate_config(MINIMAL) == []
    assert validate_config(MINIMAL + "x_vendor_settings: {anything: [1, 2]}\n") == []


# ---------------------------------------------------------------- YAML level


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the config is empty"),
        ("# only a comment\n", "the config is empty"),
        (
            "- receivers\n- exporters\n",
            "the config must be a mapping of sections (receivers, processors, exporters, "
            "connectors, extensions, service), got a list",
        ),
        (
            "just text",
            "the config must be a mapping of sections (receivers, processors, exporters, "
            "connectors, extensions, service), got a string",
        ),
        # libyaml's reasons (yaml.v3, the Collector's parser, is a port of libyaml)
        (
            "receivers: [otlp\n",
            "not valid YAML: did not find expected ',' or ']' "
            "(while parsing a flow sequence) (line 2, column 1)",
        ),
        (
            "receivers:\n  otlp: {}\n exporters: {}\n",
            "not valid YAML: did not find expected key "
            "(while parsing a block mapping) (line 3, column 2)",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "not valid YAML: but found another document (expected a single document in "
            "the stream) (line 2, column 1)",
        ),
        (
            "a: &x [*x]\n",
            "not valid YAML: an alias at a[0] refers to a node that contains it (recursive anchor)",
        ),
        (
            "receivers: \x1f\n",
            "not valid YAML: unacceptable character #x001f: control characters are not allowed",
        ),
        # Python's own reasons would quote the value ("invalid literal for int() with
        # base 10: 'twelve'"); the position says where instead.
        (
            "when: 2024-13-45\n",
            "not valid YAML: a value cannot be built (a bad date, number or tag) "
            "(line 1, column 7)",
        ),
        (
            "n: !!int twelve\n",
            "not valid YAML: a value cannot be built (a bad date, number or tag) "
            "(line 1, column 4)",
        ),
        (
            "n: !sk_live_TAG x\n",
            "not valid YAML: a value cannot be built (a bad date, number or tag) "
            "(line 1, column 4)",
        ),
        (
            "a: *sk_live_ALIAS\n",
            "not valid YAML: an alias names no anchor defined before it (line 1, column 4)",
        ),
        ("a: &x 1\nb: &x 2\n", "not valid YAML: an anchor is defined twice (line 2, column 4)"),
        (
            "a: 0x" + "f" * 1001 + "\n",
            "not valid YAML: a number longer than 1000 characters (line 1, column 4)",
        ),
    ],
)
def test_text_that_is_not_a_config_document(text: str, message: str) -> None:
    [problem] = validate_config(text)
    assert problem.path == ""
    assert problem.message == message
    assert str(problem) == message


def test_excessive_aliasing_is_refused_before_anything_walks_it() -> None:
    # each level doubles: 2**40 nodes once expanded
    lines = ["l0: &l0 [x, x]"]
    lines += [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 40)]
    [problem] = validate_config("\n".join(lines) + "\n")
    assert problem.code == v.YAML
    assert problem.message == (
        f"not valid YAML: the document expands to more than {v.MAX_NODES} nodes "
        "(excessive aliasing)"
    )


def test_nesting_is_bounded_before_anything_recurses_over_it() -> None:
    def nested(depth: int) -> str:
        return "a: " + "[" * depth + "]" * depth + "\n"

    assert [p.code for p in validate_config(nested(v.MAX_DEPTH - 1))] == [v.MISSING_SERVICE]
    assert [str(p) for p in validate_config(nested(v.MAX_DEPTH + 1))] == [
        f"too deeply nested: more than {v.MAX_DEPTH} levels"
    ]
    # deeper than libyaml's own bound (1000): refused as well, in the same words
    assert [str(p) for p in validate_config(nested(5000))] == [
        f"too deeply nested: more than {v.MAX_DEPTH} levels"
    ]


def test_duplicate_keys_are_reported_where_they_are() -> None:
    text = """\
    receivers:
      otlp: {}
    processors:
      batch: {}
      batch: {timeout: 1s}
    exporters: {debug: {}}
    service:
      pipelines:
        traces: {receivers: [otlp], processors: [batch], exporters: [debug]}
    """
    assert problems_of(text) == [
        (
            "processors.batch",
            v.DUPLICATE_KEY,
            'key "batch" is defined more than once (lines 4 and 5); the Collector refuses '
            "duplicate keys",
        )
    ]


def test_merge_keys_are_not_duplicates() -> None:
    text = MINIMAL + "x-defaults: &d {a: 1, b: 2}\nx-used: {<<: *d, b: 3}\n"
    assert validate_config(text) == []


def test_load_yaml_raises_config_syntax_error_with_the_problem() -> None:
    with pytest.raises(ConfigSyntaxError) as caught:
        load_yaml("a: [")
    assert caught.value.problems[0].code == v.YAML
    assert str(caught.value).startswith("not valid YAML: ")
    assert load_yaml("a: {b: 1}\na: 2\n") == {"a": 2}  # drift reads as PyYAML does


# ---------------------------------------------------------------- each rule


RULES: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    (
        "no service",
        "receivers: {otlp: {}}\nexporters: {debug: {}}\n",
        [
            (
                "service",
                v.MISSING_SERVICE,
                "is missing: the Collector needs a service section with at least one pipeline",
            )
        ],
    ),
    (
        "service not a mapping",
        "receivers: {otlp: {}}\nservice: [traces]\n",
        [("service", v.INVALID_SECTION, "must be a mapping, got a list")],
    ),
    (
        "no pipelines",
        "receivers: {otlp: {}}\nservice: {extensions: []}\n",
        [
            (
                "service.pipelines",
                v.MISSING_PIPELINES,
                "is missing: the Collector needs at least one pipeline",
            )
        ],
    ),
    (
        "pipelines not a mapping",
        "service: {pipelines: [traces]}\n",
        [
            (
                "service.pipelines",
                v.INVALID_SECTION,
                "must be a mapping of pipeline ids to pipelines, got a list",
            )
        ],
    ),
    (
        "empty pipelines",
        "service: {pipelines: {}}\n",
        [
            (
                "service.pipelines",
                v.NO_PIPELINES,
                "has no pipelines: the Collector needs at least one",
            )
        ],
    ),
    (
        "unknown signal",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            trace: {receivers: [otlp], exporters: [debug]}
            traces: {receivers: [otlp], exporters: [debug]}
        """,
        [
            (
                "service.pipelines.trace",
                v.UNKNOWN_SIGNAL,
                'pipeline "trace": unknown signal "trace" (a pipeline id is traces, metrics, '
                "logs or profiles, optionally followed by /name)",
            )
        ],
    ),
    (
        "pipeline id with an empty name",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            traces/: {receivers: [otlp], exporters: [debug]}
        """,
        [
            (
                "service.pipelines.traces/",
                v.INVALID_ID,
                'invalid pipeline id "traces/": the part after "/" must not be empty',
            )
        ],
    ),
    (
        "pipeline without receivers or exporters",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            logs: {processors: []}
            traces/2:
              receivers: []
              exporters: [debug]
        """,
        [
            (
                "service.pipelines.logs.receivers",
                v.NO_RECEIVERS,
                'pipeline "logs" must have at least one receiver',
            ),
            (
                "service.pipelines.logs.exporters",
                v.NO_EXPORTERS,
                'pipeline "logs" must have at least one exporter',
            ),
            (
                "service.pipelines.traces/2.receivers",
                v.NO_RECEIVERS,
                'pipeline "traces/2" must have at least one receiver',
            ),
        ],
    ),
    (
        "null pipeline",
        "receivers: {otlp: {}}\nservice: {pipelines: {metrics: }}\n",
        [
            (
                "service.pipelines.metrics.receivers",
                v.NO_RECEIVERS,
                'pipeline "metrics" must have at least one receiver',
            ),
            (
                "service.pipelines.metrics.exporters",
                v.NO_EXPORTERS,
                'pipeline "metrics" must have at least one exporter',
            ),
        ],
    ),
    (
        "pipeline not a mapping",
        "service: {pipelines: {traces: [otlp, debug]}}\n",
        [
            (
                "service.pipelines.traces",
                v.INVALID_PIPELINE,
                "must be a mapping with receivers, processors and exporters, got a list",
            )
        ],
    ),
    (
        "pipeline list not a list",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            traces: {receivers: otlp, exporters: [debug]}
        """,
        [
            (
                "service.pipelines.traces.receivers",
                v.INVALID_SECTION,
                "must be a list of component ids, got a string",
            )
        ],
    ),
    (
        "unknown key in a pipeline (a typo the Collector refuses)",
        """\
        receivers: {otlp: {}}
        processors: {batch: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], processor: [batch], exporters: [debug]}
        """,
        [
            (
                "service.pipelines.traces.processor",
                v.UNKNOWN_KEY,
                'unknown key "processor" in pipeline "traces" (a pipeline has receivers, '
                "processors and exporters)",
            )
        ],
    ),
    (
        "undefined receiver, processor and exporter",
        """\
        receivers: {otlp: {}}
        processors: {batch: {}}
        exporters: {otlp: {endpoint: gw:4317}}
        service:
          pipelines:
            traces:
              receivers: [otlp, zipkin]
              processors: [batch, memory_limiter]
              exporters: [otlp, otlp/2]
        """,
        [
            (
                "service.pipelines.traces.receivers[1]",
                v.UNDEFINED,
                'references receiver "zipkin", which is not defined under receivers or connectors',
            ),
            (
                "service.pipelines.traces.processors[1]",
                v.UNDEFINED,
                'references processor "memory_limiter", which is not defined under processors',
            ),
            (
                "service.pipelines.traces.exporters[1]",
                v.UNDEFINED,
                'references exporter "otlp/2", which is not defined under exporters or connectors',
            ),
        ],
    ),
    (
        "component defined under the wrong section",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        processors: {batch: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], processors: [debug], exporters: [batch]}
        """,
        [
            (
                "service.pipelines.traces.processors[0]",
                v.UNDEFINED,
                'references processor "debug", which is not defined under processors '
                "(it is defined under exporters)",
            ),
            (
                "service.pipelines.traces.exporters[0]",
                v.UNDEFINED,
                'references exporter "batch", which is not defined under exporters or '
                "connectors (it is defined under processors)",
            ),
        ],
    ),
    (
        "no sections at all",
        "service: {extensions: [pprof], pipelines: {traces: {receivers: [otlp], "
        "exporters: [debug]}}}\n",
        [
            (
                "service.extensions[0]",
                v.UNDEFINED,
                'references extension "pprof", which is not defined under extensions',
            ),
            (
                "service.pipelines.traces.receivers[0]",
                v.UNDEFINED,
                'references receiver "otlp", which is not defined under receivers or connectors',
            ),
            (
                "service.pipelines.traces.exporters[0]",
                v.UNDEFINED,
                'references exporter "debug", which is not defined under exporters or connectors',
            ),
        ],
    ),
    (
        "undefined extension",
        MINIMAL.replace("service:\n", "extensions: {health_check: {}}\nservice:\n")
        + "  extensions: [health_check, pprof]\n",
        [
            (
                "service.extensions[1]",
                v.UNDEFINED,
                'references extension "pprof", which is not defined under extensions',
            )
        ],
    ),
    (
        "service.extensions not a list",
        MINIMAL.replace("service:\n", "extensions: {pprof: {}}\nservice:\n")
        + "  extensions: pprof\n",
        [
            (
                "service.extensions",
                v.INVALID_SECTION,
                "must be a list of extension ids, got a string",
            )
        ],
    ),
    (
        "processor twice in a pipeline",
        """\
        receivers: {otlp: {}}
        processors: {batch: {}, memory_limiter: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            traces:
              receivers: [otlp, otlp]
              processors: [batch, memory_limiter, batch]
              exporters: [debug, debug]
        """,
        [
            (
                "service.pipelines.traces.processors[2]",
                v.DUPLICATE_PROCESSOR,
                'references processor "batch" more than once in pipeline "traces" '
                "(first at service.pipelines.traces.processors[0])",
            )
        ],
    ),
    (
        "section not a mapping: reported once, references to it are not",
        """\
        receivers: [otlp]
        exporters: {debug: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [debug]}
        """,
        [
            (
                "receivers",
                v.INVALID_SECTION,
                "must be a mapping of component ids to their settings, got a list",
            )
        ],
    ),
    (
        "component settings not a mapping",
        MINIMAL.replace("exporters: {debug: {}}", "exporters: {debug: verbose}"),
        [
            (
                "exporters.debug",
                v.INVALID_SETTINGS,
                'the settings of exporter "debug" must be a mapping (or empty), got a string',
            )
        ],
    ),
    (
        "invalid component ids",
        """\
        receivers: {otlp: {}, "otlp/": {}, "/grpc": {}, "9lives": {}, "otlp/a b": {}, 7: {}}
        exporters: {debug: {}}
        service:
          pipelines:
            traces: {receivers: [otlp, "", 5], exporters: [debug]}
        """,
        [
            (
                "receivers.otlp/",
                v.INVALID_ID,
                'invalid component id "otlp/": the part after "/" must not be empty',
            ),
            (
                "receivers./grpc",
                v.INVALID_ID,
                'invalid component id "/grpc": the part before "/" must not be empty',
            ),
            (
                "receivers.9lives",
                v.INVALID_ID,
                'invalid component id "9lives": invalid type "9lives": a type starts with an '
                "ASCII letter and has only ASCII letters, digits and '_' (at most 63)",
            ),
            (
                'receivers["otlp/a b"]',
                v.INVALID_ID,
                'invalid component id "otlp/a b": the name may not contain whitespace, '
                "control characters or symbols (' ')",
            ),
            ("receivers[7]", v.INVALID_ID, "a component id must be a string, got an integer"),
            (
                "service.pipelines.traces.receivers[1]",
                v.INVALID_ID,
                'invalid component id "": the id must not be empty',
            ),
            (
                "service.pipelines.traces.receivers[2]",
                v.INVALID_ID,
                "must be a component id string, got an integer",
            ),
        ],
    ),
    (
        "connector id also an exporter id",
        """\
        receivers: {otlp: {}}
        exporters: {forward: {}, debug: {}}
        connectors: {forward: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [forward]}
            traces/2: {receivers: [forward], exporters: [debug]}
        """,
        [
            (
                "connectors.forward",
                v.AMBIGUOUS_ID,
                'ambiguous id "forward": it is defined both as exporter (under exporters) and '
                'as connector; rename one of them (e.g. the connector to "forward/connector")',
            )
        ],
    ),
    (
        "connector used only as an exporter, another only as a receiver",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        connectors: {forward: {}, spanmetrics: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [debug, forward]}
            metrics: {receivers: [otlp, spanmetrics], exporters: [debug]}
        """,
        [
            (
                "service.pipelines.traces.exporters[1]",
                v.CONNECTOR_ONE_SIDED,
                'connector "forward" is used as an exporter in pipeline "traces" but not as a '
                "receiver in any pipeline; a connector must be used on both sides",
            ),
            (
                "service.pipelines.metrics.receivers[1]",
                v.CONNECTOR_ONE_SIDED,
                'connector "spanmetrics" is used as a receiver in pipeline "metrics" but not as '
                "an exporter in any pipeline; a connector must be used on both sides",
            ),
        ],
    ),
    (
        "connectors forming a cycle",
        """\
        receivers: {otlp: {}}
        exporters: {debug: {}}
        connectors: {forward/a: {}, forward/b: {}}
        service:
          pipelines:
            traces/in: {receivers: [otlp, forward/b], exporters: [forward/a]}
            traces/mid: {receivers: [forward/a], exporters: [debug, forward/b]}
        """,
        [
            (
                "service.pipelines",
                v.CONNECTOR_CYCLE,
                'pipelines form a cycle through connectors: "traces/in" -> forward/a -> '
                '"traces/mid" -> forward/b -> "traces/in"; the Collector refuses a cycle',
            )
        ],
    ),
    (
        "a connector feeding its own pipeline",
        """\
        receivers: {otlp: {}}
        connectors: {forward: {}}
        service:
          pipelines:
            logs: {receivers: [otlp, forward], exporters: [forward]}
        """,
        [
            (
                "service.pipelines",
                v.CONNECTOR_CYCLE,
                'pipelines form a cycle through connectors: "logs" -> forward -> "logs"; '
                "the Collector refuses a cycle",
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in RULES], ids=[n for n, _, _ in RULES]
)
def test_each_rule_reports_its_path_code_and_message(
    text: str, expected: list[tuple[str, str, str]]
) -> None:
    assert problems_of(text) == expected


def test_a_defined_but_unused_connector_is_accepted_like_any_unused_component() -> None:
    text = MINIMAL.replace("service:\n", "connectors: {forward: {}}\nservice:\n")
    assert validate_config(text) == []


def test_ids_are_compared_as_the_collector_parses_them() -> None:
    text = """\
    receivers: {"otlp / grpc": {}}
    exporters: {" debug": {}}
    service:
      pipelines:
        " traces / 2 ": {receivers: [otlp/grpc], exporters: ["debug "]}
    """
    assert problems_of(text) == []
    assert normalise_id(" otlp / grpc ") == "otlp/grpc"
    with pytest.raises(ValueError, match="must not be empty"):
        normalise_id("  ")


def test_names_may_hold_unicode_letters_and_punctuation_but_not_symbols() -> None:
    assert normalise_id("otlp/été-2.b_c") == "otlp/été-2.b_c"
    assert normalise_id("otlp/a/b") == "otlp/a/b"  # the name is everything after the first /
    for bad in ("otlp/a+b", "otlp/€", "otlp/a\tb", "otlp/" + "x" * 1025, "a" * 64, "ot-lp"):
        with pytest.raises(ValueError):  # noqa: PT011 - each reason is checked elsewhere
            normalise_id(bad)


# ---------------------------------------------------------------- substitutions


def test_substitutions_are_accepted_wherever_the_collector_resolves_them() -> None:
    text = """\
    receivers:
      otlp: {protocols: {grpc: {endpoint: "${env:HOST}:4317"}}}
      prometheus: ${file:/etc/otel/prometheus.yaml}
    processors: ${file:/etc/otel/processors.yaml}
    exporters: {debug: {}}
    extensions: {health_check: {}}
    service:
      extensions: [health_check, "${env:EXTRA_EXTENSION}"]
      pipelines:
        traces:
          receivers: [otlp]
          processors: [batch, "${env:MORE_PROCESSING}"]
          exporters: [debug, "${env:EXPORTER}"]
        metrics: ${file:/etc/otel/metrics-pipeline.yaml}
        logs:
          receivers: [otlp]
          exporters: ${env:LOG_EXPORTERS}
    """
    assert problems_of(text) == []


def test_a_substituted_reference_suspends_the_connector_rules_only() -> None:
    text = """\
    receivers: {otlp: {}}
    exporters: {debug: {}}
    connectors: {forward: {}}
    service:
      pipelines:
        traces: {receivers: [otlp], exporters: [forward, zipkin]}
        traces/2: {receivers: ["${env:SOURCE}"], exporters: [debug]}
    """
    # forward might be what ${env:SOURCE} resolves to; zipkin is undefined whatever it is
    assert [(p, c) for p, c, _ in problems_of(text)] == [
        ("service.pipelines.traces.exporters[1]", v.UNDEFINED)
    ]


# ---------------------------------------------------------------- formatting


def test_format_problems_is_one_bounded_message() -> None:
    problems = [
        Problem(f"service.pipelines.traces.exporters[{i}]", "broken", v.UNDEFINED) for i in range(4)
    ]
    assert format_problems([]) == ""
    assert format_problems(problems[:1]) == (
        "invalid Collector config (1 problem): service.pipelines.traces.exporters[0]: broken"
    )
    assert format_problems(problems, limit=2) == (
        "invalid Collector config (4 problems): service.pipelines.traces.exporters[0]: broken; "
        "service.pipelines.traces.exporters[1]: broken; and 2 more"
    )
    assert format_problems([Problem("", "the config is empty", v.EMPTY)]) == (
        "invalid Collector config (1 problem): the config is empty"
    )


def test_format_problems_of_a_real_mistake_names_id_and_place() -> None:
    text = GATEWAY.replace(
        "exporters: [otlp]\n    metrics", "exporters: [otlp, otlphttp]\n    metrics"
    )
    assert format_problems(validate_config(text)) == (
        "invalid Collector config (1 problem): service.pipelines.traces.exporters[1]: "
        'references exporter "otlphttp", which is not defined under exporters or connectors'
    )


@pytest.mark.parametrize(
    ("parent", "key", "path"),
    [
        ("", "receivers", "receivers"),
        ("service.pipelines", "traces/2", "service.pipelines.traces/2"),
        ("resource", "service.name", 'resource["service.name"]'),
        ("a", "with space", 'a["with space"]'),
        ("a", "", 'a[""]'),
        ("a", 3, "a[3]"),
        ("a", None, "a[null]"),
        ("a", ("t",), "a[\"('t',)\"]"),
    ],
)
def test_paths_stay_unambiguous(parent: str, key: object, path: str) -> None:
    assert child_path(parent, key) == path


# ---------------------------------------------------------------- preflight


def test_missing_components_lists_the_types_the_agent_lacks_per_kind() -> None:
    available = {
        "receivers": {"otlp"},
        "processors": {"batch", "memory_limiter", "attributes"},
        "exporters": {"otlp", "debug"},
        "extensions": {"health_check"},
    }
    missing = missing_components(CONNECTED, available)
    assert missing == {
        "receivers": ("jaeger",),
        "processors": ("filter",),
        "exporters": ("prometheusremotewrite",),
        "connectors": ("forward", "spanmetrics"),  # the agent reports no connectors at all
    }
    assert format_missing_components(missing) == (
        "agent lacks receivers: jaeger; processors: filter; exporters: prometheusremotewrite; "
        "connectors: forward, spanmetrics"
    )


def test_missing_components_counts_defined_but_unused_components_and_types_not_names() -> None:
    text = MINIMAL.replace("exporters: {debug: {}}", "exporters: {debug: {}, kafka/spare: {}}")
    assert missing_components(text, {"receivers": ["otlp"], "exporters": ["debug"]}) == {
        "exporters": ("kafka",)
    }
    everything = {"receivers": ["otlp"], "exporters": ["debug", "kafka"]}
    assert missing_components(text, everything) == {}
    assert format_missing_components({}) == ""


def test_missing_components_of_an_unreadable_config_is_empty() -> None:
    assert missing_components("receivers: [", {}) == {}
    assert missing_components("- a\n- b\n", {}) == {}


# ---------------------------------------------------------------- properties

_YAMLISH = st.text(
    alphabet=string.ascii_letters[:6] + string.digits[:4] + " \n\t:-[]{},&*!|>'\"#%@`?$/.~<=",
    max_size=200,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_YAMLISH | st.text(max_size=200))
def test_the_validator_never_raises_on_any_text(text: str) -> None:
    problems = validate_config(text)
    assert isinstance(problems, list)
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.message
        assert problem.code
        assert str(problem)
    format_problems(problems)
    missing_components(text, {"receivers": ["otlp"]})


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
_KEYS = st.sampled_from(
    [*v.KINDS, "service", "pipelines", "traces", "traces/2", "metrics", "logs", "otlp", "x"]
)
_DOCS = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_KEYS | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_DOCS)
def test_the_validator_never_raises_on_any_document_shape(doc: Any) -> None:
    """Config-shaped garbage (sections of the wrong type, ids of any type, pipelines of
    anything) gives problems, never an exception."""
    assert validate_document(doc) == validate_config(yaml.safe_dump(doc, sort_keys=False))


_TYPE = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
_NAME = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,4}", fullmatch=True)


def _ids(prefix: str) -> st.SearchStrategy[list[str]]:
    one = st.tuples(_TYPE, st.none() | _NAME).map(
        lambda tn: f"{prefix}{tn[0]}" + (f"/{tn[1]}" if tn[1] else "")
    )
    return st.lists(one, min_size=1, max_size=4, unique=True)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Random configs the Collector accepts: components of every kind, pipelines of every
    signal (some named), connectors linking earlier pipelines to later ones (no cycles)."""
    receivers = draw(_ids("r"))
    processors = draw(_ids("p"))
    exporters = draw(_ids("e"))
    extensions = draw(_ids("x"))
    pipeline_ids = draw(
        st.lists(
            st.tuples(st.sampled_from(v.SIGNALS), st.none() | _NAME).map(
                lambda sn: sn[0] + (f"/{sn[1]}" if sn[1] else "")
            ),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    pipelines: dict[str, dict[str, list[str]]] = {
        pid: {
            "receivers": draw(st.lists(st.sampled_from(receivers), min_size=1, max_size=3)),
            "processors": draw(st.lists(st.sampled_from(processors), max_size=3, unique=True)),
            "exporters": draw(st.lists(st.sampled_from(exporters), min_size=1, max_size=3)),
        }
        for pid in pipeline_ids
    }
    connectors: list[str] = []
    if len(pipeline_ids) > 1:
        for n in range(draw(st.integers(0, 3))):
            source = draw(st.integers(0, len(pipeline_ids) - 2))
            target = draw(st.integers(source + 1, len(pipeline_ids) - 1))
            connector = f"c{n}/link"
            connectors.append(connector)
            pipelines[pipeline_ids[source]]["exporters"].append(connector)
            pipelines[pipeline_ids[target]]["receivers"].append(connector)
    return {
        "receivers": {r: {"endpoint": f"{r}:4317"} for r in receivers},
        "processors": {p: None for p in processors},
        "exporters": {e: {} for e in exporters},
        "connectors": {c: {} for c in connectors},
        "extensions": {x: {} for x in extensions},
        "service": {
            "extensions": draw(st.lists(st.sampled_from(extensions), max_size=3, unique=True)),
            "pipelines": pipelines,
        },
    }


@settings(max_examples=200, deadline=None)
@given(valid_configs(), st.sampled_from([True, False, None]))
def test_generated_valid_configs_have_no_problems(
    config: dict[str, Any], flow: bool | None
) -> None:
    assert validate_config(yaml.safe_dump(config, default_flow_style=flow)) == []


@settings(max_examples=200, deadline=None)
@given(valid_configs(), st.data())
def test_removing_a_used_definition_reports_every_reference_to_it(
    config: dict[str, Any], data: st.DataObject
) -> None:
    pipelines = config["service"]["pipelines"]
    used = sorted(
        {
            (kind, ident)
            for p in pipelines.values()
            for kind in ("receivers", "processors", "exporters")
            for ident in p[kind]
        }
        | {("extensions", ident) for ident in config["service"]["extensions"]}
    )
    kind, ident = data.draw(st.sampled_from(used))
    if ident in config["connectors"]:
        kind = "connectors"
    del config[kind][ident]
    expected = {
        (f"{child_path(child_path('service.pipelines', pid), role)}[{i}]", v.UNDEFINED)
        for pid, p in pipelines.items()
        for role in ("receivers", "processors", "exporters")
        for i, ref in enumerate(p[role])
        if ref == ident
    } | {
        (f"service.extensions[{i}]", v.UNDEFINED)
        for i, ref in enumerate(config["service"]["extensions"])
        if kind == "extensions" and ref == ident
    }
    problems = validate_config(yaml.safe_dump(config))
    assert {(p.path, p.code) for p in problems} == expected
    assert all(f'"{ident}"' in p.message for p in problems)
