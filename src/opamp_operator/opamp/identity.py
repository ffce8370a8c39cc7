"""Who the transport authenticated an agent as: only what a credential proved, never what
the agent reported about itself (its attributes and instance uid are its own word)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentIdentity:
    """Facts a credential proved; empty fields were not proved. Equal identities are the
    same principal: the session core never lets one principal speak for another's uid."""

    fleet: str = ""
    """`namespace/name` of the fleet whose bearer token the agent presented."""
    service_account: str = ""
    """`namespace/name` of the ServiceAccount whose token passed a TokenReview."""
    pod: str = ""
    """`namespace/name` of the pod that token is bound to (a projected token)."""
    pod_uid: str = ""
    """That pod's uid: the agent runs in this pod, whatever attributes it reports."""
    certificate: tuple[str, ...] = ()
    """Names (subject CN, then SANs) of a client certificate that verified."""

    def __bool__(self) -> bool:
        return bool(self.fleet or self.service_account or self.certificate)

    def describe(self) -> str:
        parts = []
        if self.fleet:
            parts.append(f"token of fleet {self.fleet}")
        if self.service_account:
            bound = f" bound to pod {self.pod}" if self.pod else ""
            parts.append(f"ServiceAccount {self.service_account}{bound}")
        if self.certificate:
            parts.append(f"certificate {self.certificate[0]}")
        return ", ".join(parts) or "anonymous"
