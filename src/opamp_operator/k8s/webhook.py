"""The validating admission webhook for CollectorFleets: the reconciler's own checks,
run before the object is stored, so `kubectl apply` of a broken fleet fails with the
reason instead of producing a Stalled fleet.

The reconciler stays authoritative (ConfigMap-sourced configs change without the fleet
changing), so the webhook fails open: if the operator is down, fleets are still accepted
and then validated by the reconciler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector, SelectorError
from opamp_operator.fleet.validation import format_problems, validate_config
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
