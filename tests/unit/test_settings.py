"""Each default is owned by one settings dataclass: the CLI, the Helm chart and the docs
that repeat it must agree with that one source (issue 12)."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from opamp_operator.cli import LIMIT_FLAGS, build_parser, run_options, serve_options
from opamp_operator.k8s.run import RunOptions
from opamp_operator.opamp.session import AgentLimits
from opamp_operator.server.api import ApiListen
from opamp_operator.server.app import Limits, Listen
from opamp_operator.server.tls import ClientAuth, TLSFiles
from opamp_operator.standalone.serve import ServeOptions

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "opamp-operator"
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
DEPLOYMENT = (CHART / "templates" / "deployment.yaml").read_text()

# Chart values under `operator:` that are not an operator default: the chart computes the
# agent endpoint from its Service when empty, and extraArgs are the user's.
NOT_OPERATOR_DEFAULTS = {"operator.agentEndpoint", "operator.extraArgs"}


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise AssertionError(f"no subcommand {name}")


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    for action in parser._actions:
        if flag in action.option_strings:
            return action
    raise AssertionError(f"{parser.prog} has no {flag}")


def value_at(path: str) -> Any:
    node: Any = VALUES
    for key in path.split("."):
        node = node[key]
    return node


# ---- the CLI reads its defaults from the dataclasses --------------------------------


def test_run_without_arguments_is_the_dataclass_defaults() -> None:
    assert run_options(build_parser().parse_args(["run"])) == RunOptions()


def test_serve_without_arguments_is_the_dataclass_defaults() -> None:
    args = build_parser().parse_args(["serve", "--config", "fleets.yaml"])
    assert serve_options(args) == ServeOptions(config=Path("fleets.yaml"))


def test_serve_and_run_share_the_server_flags() -> None:
    run, serve = subparser("run"), subparser("serve")
    limits = [(flag, getattr(owner, name)) for flag, owner, name, _ in LIMIT_FLAGS]
    for flag, default in [("--host", Listen().host), ("--port", Listen().port), *limits]:
        assert option(run, flag).default == option(serve, flag).default == default
        assert option(run, flag).help == option(serve, flag).help


def test_every_limit_is_a_flag_and_every_limit_field_has_one() -> None:
    """Limits and AgentLimits fields are all flags (but the tick, which is no limit), and
    a flag given reaches its field under both commands."""
    fields = {(type(owner).__name__, name) for _, owner, name, _ in LIMIT_FLAGS}
    assert {("Limits", f) for f in Limits.__dataclass_fields__} - fields == {
        ("Limits", "tick_seconds")
    }
    assert {("AgentLimits", f) for f in AgentLimits.__dataclass_fields__} <= fields
    for flag, owner, name, _ in LIMIT_FLAGS:
        value = getattr(owner, name) + 1
        args = [f"{flag}={value}"]
        if name == "retry_after_min_seconds":
            args.append(f"--retry-after-max-seconds={value + 1}")
        parser = build_parser()
        serve = serve_options(parser.parse_args(["serve", "--config=f.yaml", *args]))
        run = run_options(parser.parse_args(["run", *args]))
        for options in (serve, run):
            got = options.limits if isinstance(owner, Limits) else options.core.limits
            assert getattr(got, name) == value, flag


@pytest.mark.parametrize(
    "args",
    [
        ["--max-message-bytes=0"],
        ["--header-timeout-seconds=0"],
        ["--retry-after-min-seconds=61"],
        ["--max-agents=0"],
        ["--forget-undescribed-after-seconds=-1"],
    ],
)
def test_limits_out_of_range_are_refused(args: list[str]) -> None:
    parser = build_parser()
    with pytest.raises(ValueError, match="must be"):
        serve_options(parser.parse_args(["serve", "--config=f.yaml", *args]))
    with pytest.raises(ValueError, match="must be"):
        run_options(parser.parse_args(["run", *args]))


@pytest.mark.parametrize("command", ["run", "serve"])
def test_help_shows_every_default(command: str) -> None:
    parser = subparser(command)
    text = parser.format_help()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS) or not action.option_strings:
            continue
        if action.default in (None, [], False, "", 0, argparse.SUPPRESS):
            continue  # off, empty or computed: the help says what that means
        assert "%(default)s" in (action.help or ""), action.option_strings
        assert f"default {action.default}" in re.sub(r"\s+", " ", text), action.option_strings


def test_serve_offers_no_heartbeat_by_default_but_run_does() -> None:
    assert option(subparser("serve"), "--heartbeat-seconds").default is None
    assert RunOptions().core.offer_heartbeat_seconds == RunOptions().core.default_heartbeat_seconds


# ---- the Helm chart -----------------------------------------------------------------


def chart_args() -> list[tuple[str, str]]:
    """(flag, what follows it) for each operator argument the Deployment template passes:
    the template expression or literal of its value, "" for a flag without one."""
    block = DEPLOYMENT.split("args:", 1)[1].split("env:", 1)[0]
    items = [
        m.group(1).strip()
        for line in block.splitlines()
        if (m := re.match(r"\s*- (.*)$", line)) and "{{- " not in line[: line.find("-") + 4]
    ]
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if item.startswith("--"):
            flag, _, inline = item.partition("=")
            following = items[i + 1] if i + 1 < len(items) else ""
            out.append((flag, inline or ("" if following.startswith("--") else following)))
    return out


def test_every_flag_the_chart_passes_is_a_real_flag() -> None:
    top, run = build_parser(), subparser("run")
    flags = chart_args()
    assert len(flags) >= 10, flags
    for flag, _ in flags:
        parser = top if flag == "--log-level" else run
        option(parser, flag)


def test_every_chart_default_of_an_operator_flag_equals_the_one_source() -> None:
    top, run = build_parser(), subparser("run")
    checked: set[str] = set()
    for flag, expr in chart_args():
        m = re.fullmatch(r"\{\{ \.Values\.([\w.]+)( \| int64)?( \| quote)? \}\}", expr)
        if m is None:
            continue  # a literal, a range item or a computed value
        path = m.group(1)
        action = option(top if flag == "--log-level" else run, flag)
        convert = action.type if callable(action.type) else str
        assert convert(str(value_at(path))) == action.default, (path, flag)
        checked.add(path)
    operator_values = {f"operator.{k}" for k in VALUES["operator"]}
    assert operator_values - NOT_OPERATOR_DEFAULTS <= checked, "a chart value no flag reads"
    assert {f"opamp.limits.{k}" for k in VALUES["opamp"]["limits"]} <= checked
    assert {"logLevel", "api.port", "opamp.tls.clientAuth"} <= checked


def _camel(flag: str) -> str:
    first, *rest = flag.removeprefix("--").split("-")
    return first + "".join(word.capitalize() for word in rest)


def test_every_limit_flag_is_a_chart_value_passed_as_that_flag() -> None:
    args = dict(chart_args())
    assert set(VALUES["opamp"]["limits"]) == {_camel(flag) for flag, *_ in LIMIT_FLAGS}
    for flag, owner, name, _ in LIMIT_FLAGS:
        value = f"opamp.limits.{_camel(flag)}"
        convert = "int64 | " if isinstance(getattr(owner, name), int) else ""
        assert args[flag] == f"{{{{ .Values.{value} | {convert}quote }}}}", flag
        assert value_at(value) == getattr(owner, name), value


def test_the_charts_api_and_tls_values_default_to_the_operators() -> None:
    """The values the args test above cannot see through a template expression."""
    assert value_at("api.port") == ApiListen().port
    assert tuple(value_at("api.tokenAudiences")) == RunOptions().access.audiences
    assert ClientAuth(value_at("opamp.tls.clientAuth")) is TLSFiles().client_auth
    # A deliberate difference: the chart has a certificate to serve (Helm's by default);
    # `run` has none unless given one, and cannot hand agents a CA it made up.
    assert value_at("opamp.tls.enabled") is True
    assert RunOptions().listen.tls.enabled is False


RELEASE_NAMESPACE = "{{ .Release.Namespace }}"


def watched_namespaces(values: dict[str, Any]) -> list[str]:
    """What the chart's `opamp-operator.watchedNamespaces` helper yields (the namespaces
    the operator watches; empty: cluster-wide), the release namespace as its template."""
    if values["clusterWide"]:
        assert not values["watchNamespaces"], "the chart refuses both"
        return []
    return list(values["watchNamespaces"]) or [RELEASE_NAMESPACE]


def _expand_watched(block: str) -> str:
    """The args block with its one `range $watched` loop unrolled for the default values
    (each item in place of `{{ . | quote }}`)."""
    loop = re.compile(
        r"^[ \t]*\{\{- range \$watched \}\}\n(.*?)^[ \t]*\{\{- end \}\}\n", re.M | re.S
    )
    found = loop.search(block)
    assert found, "the args block has no `range $watched` (the --namespace args)"
    body = found[1]
    assert "{{ . | quote }}" in body
    unrolled = "".join(body.replace("{{ . | quote }}", ns) for ns in watched_namespaces(VALUES))
    return block[: found.start()] + unrolled + block[found.end() :]


def _condition(expr: str) -> bool:
    """The few template conditions the args block uses, with the default values."""
    if m := re.fullmatch(r"(?:if|range) \.Values\.([\w.]+)", expr):
        return bool(value_at(m[1]))
    if m := re.fullmatch(r"if gt \(int \.Values\.([\w.]+)\) (\d+)", expr):
        return int(value_at(m[1])) > int(m[2])
    if m := re.fullmatch(r'if ne \.Values\.([\w.]+) "(\w*)"', expr):
        return str(value_at(m[1])) != m[2]
    if expr == 'if include "opamp-operator.givesAgentsCA" .':
        tls = value_at("opamp.tls")
        helm_made = not tls["certManager"]["enabled"] and not tls["existingSecret"]
        own_issuer = tls["certManager"]["enabled"] and not tls["certManager"]["issuerRef"]
        return bool(tls["enabled"] and (helm_made or own_issuer))
    raise AssertionError(f"the test does not know the template action {expr!r}")


def default_chart_args() -> list[str]:
    """The operator's args as Helm renders them with the default values: a pure-Python
    stand-in for `helm template` (tests/world_proofs/test_chart.py renders them for real).
    A value computed from the release (a Service name, its namespace) is left as its
    template."""
    block = _expand_watched(DEPLOYMENT.split("args:", 1)[1].split("env:", 1)[0])
    args: list[str] = []
    taken = [True]
    for line in block.splitlines():
        if m := re.fullmatch(r"\s*\{\{- (.*) \}\}", line):
            action = m[1]
            if action == "end":
                taken.pop()
            else:
                taken.append(taken[-1] and _condition(action))
            continue
        if not taken[-1] or not (m := re.fullmatch(r"\s*- (.*)", line)):
            continue
        args.append(
            re.sub(
                r"\{\{ \.Values\.([\w.]+)( \| int64)?( \| quote)? \}\}",
                lambda v: str(value_at(v[1])),
                m[1],
            ).strip('"')
        )
    assert taken == [True], "unbalanced template actions"
    return args


def test_the_charts_default_args_run_the_operator_with_its_defaults() -> None:
    args = default_chart_args()
    # From the release: its Service names, and its namespace (the namespaced default);
    # files of the mounted TLS Secret (test_the_charts_api_and_tls_values_default...).
    tls_files = ("--tls-cert-file", "--tls-key-file", "--api-tls-cert-file", "--api-tls-key-file")
    for flag in (
        "--agent-endpoint",
        "--webhook-host",
        "--namespace",
        *tls_files,
        "--agent-ca-file",
    ):
        i = args.index(flag)
        assert args[i + 1].startswith("{{"), args[i + 1]
        del args[i : i + 2]
    assert "{{" not in " ".join(args), args
    parsed = build_parser().parse_args(args)
    assert parsed.command == "run"
    options = run_options(parsed)
    assert options.webhook is not None  # the chart serves the webhook by default
    # The API listens on every interface in a pod (Prometheus, port-forwards, probes),
    # on loopback by default; everything else is the operator's default.
    assert options.api.host == "0.0.0.0"  # noqa: S104
    assert ApiListen().host == "127.0.0.1"
    api = replace(options.api, host=ApiListen().host)
    assert replace(options, webhook=None, api=api) == RunOptions()


def test_the_chart_is_namespaced_by_default_where_the_operator_is_cluster_wide() -> None:
    """The one deliberate difference from the operator's defaults (issue 13): `run`
    without --namespace watches every namespace, the chart without values watches its
    release namespace; cluster-wide is `clusterWide: true`, asked for explicitly."""
    assert RunOptions().namespaces == ()
    assert VALUES["clusterWide"] is False
    assert VALUES["watchNamespaces"] == []
    args = default_chart_args()
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == [RELEASE_NAMESPACE]
    parsed = build_parser().parse_args([a.replace(RELEASE_NAMESPACE, "obs") for a in args])
    assert run_options(parsed).namespaces == ("obs",)
    wide = {**VALUES, "clusterWide": True}
    assert watched_namespaces(wide) == []
    assert watched_namespaces({**VALUES, "watchNamespaces": ["a", "b"]}) == ["a", "b"]


def test_the_chart_serves_on_the_operator_port() -> None:
    port = str(Listen().port)
    args = dict(chart_args())
    assert args["--port"] == f'"{port}"'
    templates = {p.name: p.read_text() for p in (CHART / "templates").iterdir()}
    urls = [n for t in templates.values() for n in re.findall(r":(\d+)/v1/opamp", t)]
    container = re.findall(r"name: opamp\s+containerPort: (\d+)", templates["deployment.yaml"])
    service = re.findall(r"\bport: (\d+)", templates["service.yaml"])
    policy = re.findall(r"OpAMP.*\n.*\n\s+- port: (\d+)", templates["networkpolicy.yaml"])
    assert urls
    assert container
    assert service
    assert policy
    assert set(urls) | set(container) | set(service) | set(policy) == {port}


def test_the_chart_serves_the_api_on_its_api_port_value() -> None:
    """One value, api.port, is the API's port everywhere: the flag, the container port the
    probes and the Service name, the Service and the NetworkPolicy."""
    args = dict(chart_args())
    expr = "{{ .Values.api.port | quote }}"
    assert args["--api-port"] == expr
    assert args["--api-host"] == '"0.0.0.0"'
    templates = {p.name: p.read_text() for p in (CHART / "templates").iterdir()}
    deployment = templates["deployment.yaml"]
    assert re.search(r"name: api\s+containerPort: \{\{ \.Values\.api\.port \}\}", deployment)
    probes = re.findall(
        r"(\w+)Probe:\s+httpGet:\s+path: (\S+)\s+port: (\w+)\s+scheme: (\w+)", deployment
    )
    assert sorted(probes) == [
        ("liveness", "/healthz", "api", "HTTPS"),
        ("readiness", "/readyz", "api", "HTTPS"),
        ("startup", "/healthz", "api", "HTTPS"),
    ]
    assert "port: {{ .Values.api.port }}" in templates["service.yaml"]
    assert "port: {{ .Values.api.port }}" in templates["networkpolicy.yaml"]


# ---- docs that state a default ------------------------------------------------------


def test_the_chart_docs_list_the_values_defaults() -> None:
    rows = re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", (ROOT / "docs/helm.md").read_text(), re.M)
    operator_rows = {key: text for key, text in rows if key.startswith("operator.")}
    assert operator_rows.keys() == {f"operator.{k}" for k in VALUES["operator"]}
    for key, text in rows:
        try:
            expected = value_at(key)
        except KeyError:
            continue
        assert yaml.safe_load(text) == expected, key


def test_the_limits_table_lists_every_limit_with_its_chart_value_and_default() -> None:
    text = (ROOT / "docs/opamp-server.md").read_text()
    rows = {
        flag: (value, float(default))
        for flag, value, default in re.findall(
            r"^\| `(--[\w-]+)` \| `opamp\.limits\.(\w+)` \| ([\d.]+)", text, re.M
        )
    }
    assert rows.keys() == {flag for flag, *_ in LIMIT_FLAGS}
    for flag, owner, name, _ in LIMIT_FLAGS:
        assert rows[flag] == (_camel(flag), getattr(owner, name)), flag


def _g(value: float) -> str:
    return f"{value:g}"


def test_prose_defaults_in_the_docs_are_the_one_source() -> None:
    run = RunOptions()
    handlers = run.handlers
    mib = Limits().max_message_bytes / 2**20
    expected = {
        "docs/operator.md": [
            f"(`--status-interval`, default {_g(handlers.status_interval)} s)",
            f"(`--remediation-wait-seconds`, default {_g(handlers.remediation.wait_seconds)})",
            f"`--peering-lifetime` seconds (default {run.peering.lifetime})",
            f"one port ({Listen().port} by default)",
            f"(`--gate-startup-grace`, default {_g(handlers.gate_startup_grace)} s;",
        ],
        "docs/rollout.md": [f"`--rollout-startup-grace` ({_g(handlers.rollout_startup_grace)} s)"],
        "docs/opamp-server.md": [
            f"`--max-message-bytes` (default {_g(mib)} MiB",
            f"default port **{Listen().port}**",
            f"silent for {run.core.stale_after_heartbeats} intervals",
            f"forgotten after {_g(run.core.forget_after_seconds / 60)} minutes",
        ],
        "docs/benchmarks.md": [
            f"default `--status-interval {_g(handlers.status_interval)}`",
            f"default `--rollout-interval {_g(handlers.rollout_interval)}`",
        ],
    }
    for doc, phrases in expected.items():
        text = re.sub(r"\s+", " ", (ROOT / doc).read_text())
        for phrase in phrases:
            assert phrase in text, f"{doc}: {phrase!r}"
