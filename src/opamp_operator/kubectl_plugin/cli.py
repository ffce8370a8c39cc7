"""`kubectl opamp` (the `kubectl-opamp` console script): argument parsing and the thin I/O
around `format`. Kubernetes objects are read with the user's kubeconfig, as kubectl does;
per-agent detail comes from the operator's read API (`--operator-url`), which is given the
same credentials (the kubeconfig's bearer token or client certificate) and asks
Kubernetes whether this user may read the fleet. The API server's service proxy cannot
carry them: it drops the user's credentials before proxying."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, NoReturn

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes import watch as kube_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError as Urllib3Error

from opamp_operator.api.models import FLEETS_PLURAL, GROUP, ROLLOUTS_PLURAL, VERSION
from opamp_operator.api.read import AGENT_STATES
from opamp_operator.kubectl_plugin import format as fmt
from opamp_operator.server.api import ApiListen

FLEETS = FLEETS_PLURAL
ROLLOUTS = ROLLOUTS_PLURAL
API_PORT = ApiListen().port
PORT_FORWARD = f"kubectl -n opamp-system port-forward svc/opamp-operator-api {API_PORT}"
ROLLOUT_ACTIONS = ("status", "promote", "abort", "pause", "resume", "retry", "history")


# The kubernetes package's loaders and watch are untyped.
kconfig: Any = kube_config
watch: Any = kube_watch


class PluginError(Exception):
    """A failure the user can act on: printed as `error: ...`, exit code 1, no traceback."""


def _common() -> argparse.ArgumentParser:
    """kubectl's connection flags, accepted before or after the command. Defaults are
    suppressed so a subcommand's copy never overwrites a value given before it."""
    p = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    p.add_argument("--kubeconfig", default=s, help="path to the kubeconfig file")
    p.add_argument("--context", default=s, help="the kubeconfig context to use")
    p.add_argument("-n", "--namespace", default=s, help="namespace (default: the context's)")
    return p


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", choices=("json", "yaml"), help="print the objects instead of a table"
    )


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="kubectl opamp",
        parents=[common],
        description="OpenTelemetry Collector fleets managed over OpAMP: fleets, their agents "
        "and staged config rollouts.",
        epilog="Examples:\n"
        "  kubectl opamp fleets -A\n"
        "  kubectl opamp agents collectors -n observability --state drifted\n"
        "  kubectl opamp rollout status collectors -n observability --watch\n"
        "  kubectl opamp rollout promote collectors -n observability",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fleets = commands.add_parser(
        "fleets",
        parents=[common],
        help="list CollectorFleets with their agent counts",
        description="List CollectorFleets: agents connected, healthy, unhealthy, config "
        "applied/failed, drifted, desired and stable revisions, Ready, age.",
    )
    fleets.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list fleets in every namespace"
    )
    _output(fleets)

    agents = commands.add_parser(
        "agents",
        parents=[common],
        help="list a fleet's agents (from the operator's read API)",
        description="List a fleet's agents as the operator sees them. Per-agent detail is "
        "not stored in Kubernetes: it is read from the operator's API at --operator-url, "
        "with your kubeconfig's credentials; you see a fleet's agents if you may get that "
        f"CollectorFleet. Reach the API with e.g. `{PORT_FORWARD}`.",
    )
    agents.add_argument("fleet", metavar="FLEET")
    agents.add_argument("--state", choices=AGENT_STATES, help="only agents in this state")
    agents.add_argument(
        "--operator-url",
        default=os.environ.get("OPAMP_OPERATOR_URL") or None,
        help=f"the operator's API, e.g. https://127.0.0.1:{API_PORT} "
        "(default: $OPAMP_OPERATOR_URL)",
    )
    agents.add_argument(
        "--operator-ca-file",
        default=os.environ.get("OPAMP_OPERATOR_CA_FILE") or None,
        help="CA that signed the API's certificate (default: $OPAMP_OPERATOR_CA_FILE, "
        "else the system's)",
    )
    agents.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        help="do not verify the API's certificate (its self-signed default); your "
        "credentials still go only to --operator-url",
    )
    _output(agents)

    rollout = commands.add_parser(
        "rollout",
        parents=[common],
        help="show and steer a ConfigRollout",
        description="Show and steer a ConfigRollout (docs/rollout.md).",
    )
    actions = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "status": "phase, step, revisions, per-step counts, failing agents, conditions",
        "promote": "end the current step's pause (annotation opampoperator.io/promote)",
        "abort": "roll every agent back to the stable revision (opampoperator.io/abort)",
        "pause": "set spec.paused: true (a spec field: Git may own it)",
        "resume": "set spec.paused: false (a spec field: Git may own it)",
        "retry": "restart a Failed, RolledBack or Aborted rollout (opampoperator.io/retry)",
        "history": "the fleet's config revisions, marking the desired and stable ones",
    }
    for action in ROLLOUT_ACTIONS:
        sub = actions.add_parser(action, parents=[common], help=helps[action])
        sub.add_argument("rollout", metavar="ROLLOUT")
        if action == "status":
            sub.add_argument(
                "-w",
                "--watch",
                action="store_true",
                help="print a line on every change until the phase is Succeeded, Failed, "
                "RolledBack or Aborted (exit 0 only for Succeeded)",
            )
            _output(sub)
    return parser


class Kube:
    """The user's Kubernetes connection, from the kubeconfig as kubectl picks it."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        try:
            configuration = client.Configuration()
            kconfig.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            contexts, active = kconfig.list_kube_config_contexts(config_file=kubeconfig)
            if context is not None:
                active = next(c for c in contexts if c["name"] == context)
        except (ConfigException, OSError, StopIteration, TypeError) as error:
            raise PluginError(f"cannot load the kubeconfig: {error}") from error
        configuration.retries = 1
        self.default_namespace = str((active.get("context") or {}).get("namespace") or "default")
        self.api = client.ApiClient(configuration)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.apps: Any = client.AppsV1Api(self.api)

    def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        items: list[dict[str, Any]] = result["items"]
        return sorted(
            items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
        return obj

    def patch(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, body)

    def credentials(self) -> tuple[str | None, tuple[str, str] | None]:
        """The kubeconfig user's bearer token (exec plugins included) and client
        certificate files, as the kubernetes client resolved them."""
        configuration = self.api.configuration
        token = configuration.api_key.get("authorization") or configuration.api_key.get(
            "BearerToken"
        )
        cert = (
            (configuration.cert_file, configuration.key_file)
            if configuration.cert_file and configuration.key_file
            else None
        )
        return token, cert


def fail(message: str) -> NoReturn:
    raise PluginError(message)


def _namespace(args: argparse.Namespace, kube: Kube) -> str:
    return str(getattr(args, "namespace", None) or kube.default_namespace)


def _kube(args: argparse.Namespace) -> Kube:
    return Kube(getattr(args, "kubeconfig", None), getattr(args, "context", None))


def cmd_fleets(args: argparse.Namespace) -> int:
    kube = _kube(args)
    namespace = None if args.all_namespaces else _namespace(args, kube)
    fleets = kube.list(FLEETS, namespace)
    if args.output:
        print(fmt.dump(fmt.as_list(fleets), args.output))
    elif not fleets:
        where = f"in {namespace} namespace" if namespace else ""
        print(f"No resources found {where}.".replace(" .", "."), file=sys.stderr)
    else:
        print(fmt.fleets_table(fleets, fmt.utcnow(), all_namespaces=namespace is None))
    return 0


def _tls(args: argparse.Namespace, cert: tuple[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=args.operator_ca_file)
    if args.insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def api_base(args: argparse.Namespace) -> str:
    """--operator-url, checked before any credential is loaded or sent."""
    if not args.operator_url:
        fail(
            "the operator's API address is needed: pass --operator-url (or set "
            f"$OPAMP_OPERATOR_URL), e.g. after `{PORT_FORWARD}`: https://127.0.0.1:{API_PORT}"
        )
    base: str = args.operator_url.rstrip("/")
    if not base.startswith("https://"):
        # The user's own credentials go with the request: never in clear text.
        fail(f"--operator-url must be an https:// URL, not {args.operator_url!r}")
    return base


def fetch_agents(args: argparse.Namespace, kube: Kube, namespace: str) -> dict[str, Any]:
    """The read API's agents of one fleet, read with the user's own credentials."""
    base = api_base(args)
    url = f"{base}/api/v1/fleets/{namespace}/{args.fleet}/agents"
    if args.state:
        url += "?" + urllib.parse.urlencode({"state": args.state})
    token, cert = kube.credentials()
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=10, context=_tls(args, cert)) as response:  # noqa: S310
            data: dict[str, Any] = json.loads(response.read())
            return data
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail)["error"]
        fail(f"the operator at {args.operator_url} answered {error.code}: {detail}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLCertVerificationError):
            fail(
                f"the operator's certificate at {args.operator_url} is not trusted "
                f"({reason.verify_message}): pass --operator-ca-file, or "
                "--insecure-skip-tls-verify for its self-signed default"
            )
        fail(f"cannot reach the operator at {args.operator_url}: {reason}")


def cmd_agents(args: argparse.Namespace) -> int:
    api_base(args)
    kube = _kube(args)
    data = fetch_agents(args, kube, _namespace(args, kube))
    agents = data.get("agents") or []
    if args.output:
        print(fmt.dump(data, args.output))
    elif not agents:
        what = f" in state {args.state}" if args.state else ""
        print(f"No agents{what} in fleet {_namespace(args, kube)}/{args.fleet}.", file=sys.stderr)
    else:
        print(fmt.agents_table(agents))
    return 0


def _rollout(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    try:
        return kube.get(ROLLOUTS, namespace, name)
    except ApiException as error:
        if error.status == 404:
            fail(f'configrollouts.{GROUP} "{name}" not found in namespace "{namespace}"')
        raise


def watch_status(kube: Kube, namespace: str, name: str) -> int:
    """A line per change of the rollout, until its phase is terminal; exit code 0 only
    for Succeeded."""
    rollout = _rollout(kube, namespace, name)
    last = fmt.progress_key(rollout)
    print(fmt.progress_line(rollout, fmt.utcnow()), flush=True)
    version = rollout["metadata"].get("resourceVersion")
    while not fmt.is_terminal(rollout):
        w = watch.Watch()
        try:
            for event in w.stream(
                kube.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                ROLLOUTS,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=60,
            ):
                obj = event["object"]
                if event["type"] == "DELETED":
                    fail(f"configrollout {namespace}/{name} was deleted")
                if event["type"] not in ("ADDED", "MODIFIED"):
                    continue
                version = obj["metadata"].get("resourceVersion", version)
                rollout = obj
                if (key := fmt.progress_key(rollout)) != last:
                    last = key
                    print(fmt.progress_line(rollout, fmt.utcnow()), flush=True)
                if fmt.is_terminal(rollout):
                    break
        except ApiException as error:
            if error.status != 410:
                raise
            version = None  # expired: the next watch starts from the current state
        finally:
            w.stop()
    return 0 if (rollout.get("status") or {}).get("phase") == "Succeeded" else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    kube = _kube(args)
    namespace = _namespace(args, kube)
    name = args.rollout
    if args.action == "status":
        if args.watch:
            return watch_status(kube, namespace, name)
        rollout = _rollout(kube, namespace, name)
        if args.output:
            print(fmt.dump(rollout, args.output))
        else:
            print(fmt.rollout_status_text(rollout, fmt.utcnow()))
        return 0
    rollout = _rollout(kube, namespace, name)
    if args.action == "history":
        fleet = (rollout.get("spec") or {}).get("fleetRef", {}).get("name", "")
        revisions = kube.apps.list_namespaced_controller_revision(
            namespace, label_selector=f"{GROUP}/fleet={fleet}"
        ).items
        api: Any = kube.api
        as_dicts = [api.sanitize_for_serialization(r) for r in revisions]
        if not as_dicts:
            print(f"No revisions of fleet {namespace}/{fleet}.", file=sys.stderr)
        else:
            print(fmt.history_table(as_dicts, rollout.get("status") or {}, fmt.utcnow()))
        return 0
    if args.action in ("pause", "resume"):
        kube.patch(ROLLOUTS, namespace, name, fmt.paused_patch(args.action == "pause"))
        print(f"configrollout.{GROUP}/{name} {args.action}d (spec.paused)")
        return 0
    note = fmt.control_note(args.action, rollout)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    token = str(time.time_ns())
    kube.patch(ROLLOUTS, namespace, name, fmt.control_patch(args.action, token))
    print(f"configrollout.{GROUP}/{name} {args.action} requested ({GROUP}/{args.action}={token})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"fleets": cmd_fleets, "agents": cmd_agents, "rollout": cmd_rollout}[args.command]
    try:
        return run(args)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except (ApiException, Urllib3Error) as error:
        return _api_error(error)


def _api_error(error: ApiException | Urllib3Error) -> int:
    """Errors from the Kubernetes client, said the way kubectl says them."""
    if isinstance(error, ApiException):
        if error.status == 0:
            print(f"error: cannot reach the Kubernetes API server: {error.reason}", file=sys.stderr)
            return 1
        message = error.reason
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            message = json.loads(error.body or "").get("message", message)
        print(f"error: {message} ({error.status})", file=sys.stderr)
        return 1
    if isinstance(error, Urllib3Error):
        print(f"error: cannot reach the Kubernetes API server: {error}", file=sys.stderr)
        return 1
