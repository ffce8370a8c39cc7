"""The validating admission webhook for CollectorFleets. Two checks, with opposite
failure rules:

- Who wrote the fleet (`author_checks`): the operator acts with its own, broad
  ServiceAccount, so a fleet naming a Secret, a ConfigMap or (template mode) a workload
  to run would otherwise lend its author the operator's permissions. A
  SubjectAccessReview for the requesting user asks whether they hold what the fleet makes
  the operator do for them. This check fails closed: only the webhook knows the author
  (the reconciler sees the fleet, never who wrote it), so a review that errs refuses.
- What the fleet says (`fleet_problems`): the reconciler's own checks, run before the
  object is stored, so `kubectl apply` of a broken fleet fails with the reason instead of
  producing a Stalled fleet. The reconciler stays authoritative (ConfigMap-sourced configs
  change without the fleet changing), so this one fails open: a ConfigMap the operator
  cannot read is not a reason to refuse.

The webhook configuration's own failurePolicy (the chart's `webhook.failurePolicy`,
Ignore by default) still decides what the apiserver does when the operator does not
answer at all: with Ignore, fleets written while it is down are not checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector, SelectorError
from opamp_operator.fleet.validation import format_problems, validate_config
from opamp_operator.k8s.settings import AccessSettings
from opamp_operator.server.api import Access, ResourceAccess, User, describe
from opamp_operator.server.tls import self_signed

log = logging.getLogger(__name__)

# A ConfigMap key's text, or None when the ConfigMap or key does not exist (yet).
ConfigMapReader = Callable[[str, str, str], str | None]


@dataclass(frozen=True)
class WebhookOptions:
    port: int
    # Where the apiserver reaches the webhook (a DNS name or IP of the operator).
    host: str
    listen: str = "0.0.0.0"  # noqa: S104 - the apiserver connects from outside the pod
    # A directory with tls.crt and tls.key (and ca.crt), e.g. a mounted cert-manager
    # Secret; None generates a self-signed CA and certificate at start.
    cert_dir: Path | None = None
    # The ValidatingWebhookConfiguration kopf keeps pointed at this server (with the CA
    # bundle); None when it is managed elsewhere (the Helm chart).
    configuration: str | None = None

    def __post_init__(self) -> None:
        # kopf names the webhook "validate.<configuration>", which the apiserver wants
        # to be a domain of at least three segments.
        if self.configuration is not None and self.configuration.count(".") < 1:
            raise ValueError(
                f"webhook configuration name {self.configuration!r} must be a domain name "
                "with a dot, e.g. collectorfleets.opampoperator.io"
            )


# Whether a user holds a permission: KubernetesGuard.allowed (k8s/access.py), the one
# place the operator asks SubjectAccessReviews and caches their answers.
AccessReview = Callable[[User, Access], Awaitable[bool]]

# Admission is rare next to the read API's polling, so answers are kept briefly: a revoked
# grant stops admitting within 10 s, a new one works within 2 s.
AUTHOR_ACCESS = AccessSettings(allowed_ttl_seconds=10.0, denied_ttl_seconds=2.0, cache_size=1_000)
# The reviews of one request must answer well within the webhook's timeoutSeconds (the
# chart's default: 10 s): past it the apiserver applies the failurePolicy, and Ignore would
# admit the fleet unchecked. Not answered by then: refused.
AUTHOR_CHECK_TIMEOUT = 5.0
REFUSED = 403
NOT_CHECKED = 503

WORKLOADS = {
    "Deployment": ("deployments", "a Deployment"),
    "DaemonSet": ("daemonsets", "a DaemonSet"),
}


@dataclass(frozen=True)
class AuthorCheck:
    """One permission a fleet's author must hold, and what in the fleet asks for it."""

    access: ResourceAccess
    reason: str


def _ref(spec: Mapping[str, Any], *path: str) -> Mapping[str, Any] | None:
    """The mapping at `path` in the spec, or None when absent (or not a mapping: the
    CRD's schema has refused that before any webhook is called)."""
    node: Any = spec
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) and node else None


def _plain(value: Any) -> Any:
    """Nested mappings as plain dicts, to compare an old spec with a new one."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _changed(
    new: Mapping[str, Any], old: Mapping[str, Any] | None, *paths: tuple[str, ...]
) -> bool:
    if old is None:
        return True
    return any(_plain(_ref(new, *path)) != _plain(_ref(old, *path)) for path in paths)


def author_checks(
    namespace: str, spec: Mapping[str, Any], old_spec: Mapping[str, Any] | None = None
) -> list[AuthorCheck]:
    """What the requesting user must be allowed to do for the operator to act on this
    fleet for them: on CREATE (`old_spec` None), for everything the spec names; on UPDATE,
    only for what the update changes, so re-applying an unchanged fleet (GitOps) or
    changing its config asks for nothing.

    The verbs, each in the fleet's namespace:

    - `get secrets <authSecretRef.name>`: the operator reads the Secret and admits agents
      that send its value (an oracle for it), and template mode puts it in the pods' env.
      Checked when the reference changes (name or key).
    - `get configmaps <config.configMapRef.name>`: the operator reads it and offers it to
      the fleet's agents (anyone's, for a fleet without agent auth).
    - `create deployments.apps` or `create daemonsets.apps` (per `template.kind`): the
      operator creates that workload on the author's behalf (server-side apply creates
      whatever is missing, so any accepted template may be a create; `create` for every
      change keeps one rule). It is the Kubernetes-equivalent check: whoever may create a
      Deployment may already run its pods as any ServiceAccount of the namespace and mount
      any Secret of it, with any image. Checked when anything the workload is rendered from
      changes: the template, the selector (the pods' labels), authSecretRef (their env).
    - `get serviceaccounts <template.serviceAccountName>`, with the workload check. Tekton
      (PipelineRun), Flux (Kustomization `serviceAccountName`, impersonated by the
      controller), kpack (Image) and Argo CD (a project's destinationServiceAccounts,
      chosen by admins) all keep the namespace as the boundary and never ask whether the
      author may use the account; the account here is likewise always in the fleet's
      namespace, and the `create` above is what guards it. The named `get` adds that the
      author can see the account they run pods as, which a role can narrow with
      resourceNames. Not `impersonate`: `edit` already grants it for every account of the
      namespace, and asking narrow roles for a verb scanners flag as high-risk, to write a
      fleet, would be a worse grant than the one it guards.
    """
    checks: list[AuthorCheck] = []
    if (secret := _ref(spec, "authSecretRef")) is not None and _changed(
        spec, old_spec, ("authSecretRef",)
    ):
        access = ResourceAccess("get", "", "secrets", namespace, str(secret.get("name", "")))
        checks.append(AuthorCheck(access, "spec.authSecretRef names a Secret you may not read"))
    if (config_map := _ref(spec, "config", "configMapRef")) is not None and _changed(
        spec, old_spec, ("config", "configMapRef")
    ):
        access = ResourceAccess("get", "", "configmaps", namespace, str(config_map.get("name", "")))
        checks.append(
            AuthorCheck(access, "spec.config.configMapRef names a ConfigMap you may not read")
        )
    template = _ref(spec, "template")
    if template is not None and _changed(
        spec, old_spec, ("template",), ("selector",), ("authSecretRef",)
    ):
        resource, article = WORKLOADS.get(str(template.get("kind")), WORKLOADS["Deployment"])
        checks.append(
            AuthorCheck(
                ResourceAccess("create", "apps", resource, namespace),
                f"spec.template has the operator create {article} for you",
            )
        )
        if account := template.get("serviceAccountName"):
            checks.append(
                AuthorCheck(
                    ResourceAccess("get", "", "serviceaccounts", namespace, str(account)),
                    "spec.template.serviceAccountName names a ServiceAccount you may not get",
                )
            )
    return checks


def _failure(error: BaseException) -> str:
    """One line on why a review failed: an apiserver answer's status and reason (an
    ApiException's text runs on with headers and body), else the error's first line."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if status is not None:
        return f"the apiserver answered {status} {reason or ''}".strip()
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else 'no detail'}"


def author_refusal(
    user: str, checks: Sequence[AuthorCheck], answers: Sequence[bool | BaseException]
) -> tuple[str, int] | None:
    """The refusal (message, HTTP code) for these answers to `checks`, or None to admit.
    A permission the user lacks: 403, naming each. A review that failed: 503, fail
    closed, since nothing can check the author later."""
    missing = [
        f"{user} cannot {describe(check.access)}: {check.reason}"
        for check, answer in zip(checks, answers, strict=True)
        if answer is False
    ]
    if missing:
        return "; ".join(missing), REFUSED
    failed = [
        f"could not check that {user} may {describe(check.access)} ({_failure(answer)})"
        for check, answer in zip(checks, answers, strict=True)
        if isinstance(answer, BaseException)
    ]
    if failed:
        return "; ".join(failed) + "; refused until it can be checked, try again", NOT_CHECKED
    return None


async def check_author(
    allowed: AccessReview, user: User, checks: Sequence[AuthorCheck]
) -> tuple[str, int] | None:
    """Ask every check at once (SubjectAccessReviews, cached by the guard); a review that
    raises or does not answer within AUTHOR_CHECK_TIMEOUT counts as failed."""
    if not checks:
        return None
    answers: list[bool | BaseException]
    try:
        async with asyncio.timeout(AUTHOR_CHECK_TIMEOUT):
            answers = await asyncio.gather(
                *(allowed(user, check.access) for check in checks), return_exceptions=True
            )
    except TimeoutError as exc:
        answers = [TimeoutError(f"no answer within {AUTHOR_CHECK_TIMEOUT:g} s")] * len(checks)
        log.warning("webhook: SubjectAccessReviews for %s timed out: %s", user.name, exc)
    return author_refusal(user.name, checks, answers)


def fleet_problems(
    spec: Mapping[str, Any], namespace: str, name: str, read_config_map: ConfigMapReader
) -> str | None:
    """Why this fleet spec must be refused, or None. A ConfigMap that does not exist yet
    is not a reason: GitOps tools may apply the fleet first; the reconciler reports it."""
    try:
        parsed = CollectorFleetSpec.model_validate(dict(spec))
        FleetSelector.from_label_selector(
            namespace, name, 0.0, parsed.selector.model_dump(by_alias=True)
        )
    except (ValidationError, SelectorError) as exc:
        return f"invalid spec: {exc}"
    source = parsed.config
    if source.inline is not None:
        text, where = source.inline, "spec.config.inline"
    elif source.config_map_ref is not None:
        ref = source.config_map_ref
        found = read_config_map(namespace, ref.name, ref.key)
        if found is None:
            return None
        text, where = found, f"ConfigMap {namespace}/{ref.name} key {ref.key!r}"
    else:
        return None
    problems = validate_config(text)
    return f"{where}: {format_problems(problems)}" if problems else None


def webhook_server(options: WebhookOptions, scratch: Path) -> kopf.WebhookServer:
    """kopf's webhook server over our certificate: mounted files, else self-signed."""
    cert_dir = options.cert_dir
    if cert_dir is not None and (cert_dir / "tls.crt").exists():
        ca = cert_dir / "ca.crt"
        return kopf.WebhookServer(
            addr=options.listen,
            port=options.port,
            host=options.host,
            certfile=cert_dir / "tls.crt",
            pkeyfile=cert_dir / "tls.key",
            cadata=ca.read_bytes() if ca.exists() else None,
        )
    wildcard = options.listen in {"", "0.0.0.0", "::"}  # noqa: S104
    hosts = [options.host] if wildcard else [options.host, options.listen]
    certfile, keyfile, ca_pem = self_signed(scratch, hosts, "webhook")
    log.info("webhook: self-signed certificate for %s", options.host)
    return kopf.WebhookServer(
        addr=options.listen,
        port=options.port,
        host=options.host,
        certfile=certfile,
        pkeyfile=keyfile,
        cadata=ca_pem,
    )
