"""Who may read the operator's API, decided by Kubernetes: the guard of `run`'s API
listener (server/api.py).

Authentication is delegated as an aggregated API server or kube-rbac-proxy delegates
it: a bearer token goes to a TokenReview; a client certificate that verified against
the cluster's client CA (kube-system/extension-apiserver-authentication) names the user
in its subject, as the apiserver reads it (CN the user, O the groups). Authorization is
a SubjectAccessReview for that user: `get collectorfleets` in a fleet's namespace to
read its agents, `list collectorfleets` cluster-wide for the raw agent routes (every
agent of every fleet), a nonResourceURL grant for /metrics. Never a nonResourceURL under
/api or /apis: the default `system:discovery` role grants those paths to every
authenticated user.

Both answers are cached briefly (settings.AccessSettings), bounded in size, so a
dashboard polling every second costs the apiserver one review per TTL, not per request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cachetools import TLRUCache, TTLCache
from kubernetes import client

from opamp_operator.k8s.reads import config_map_value
from opamp_operator.k8s.settings import AccessSettings, AgentTokenSettings
from opamp_operator.server.api import (
    Access,
    PathAccess,
    ResourceAccess,
    Unauthenticated,
    User,
    bearer_token,
)
from opamp_operator.server.tls import client_certificate

log = logging.getLogger(__name__)

AUTHENTICATED = "system:authenticated"
CLIENT_CA_CONFIG_MAP = ("kube-system", "extension-apiserver-authentication", "client-ca-file")


def cluster_client_ca() -> str | None:
    """The CAs the apiserver trusts for client certificates, as it publishes them for
    delegated authentication; None when unreadable (certificates are then not
    accepted, bearer tokens still are)."""
    namespace, name, key = CLIENT_CA_CONFIG_MAP
    try:
        return config_map_value(namespace, name, key)
    except client.ApiException as exc:
        log.warning(
            "cannot read %s/%s (%s %s): API users must use bearer tokens",
            namespace,
            name,
            exc.status,
            exc.reason,
        )
        return None


async def token_review(token: str, audiences: Sequence[str]) -> Any | None:
    """The user (V1UserInfo) a TokenReview says `token` belongs to; None when it does
    not pass. No audiences: the apiserver's own."""
    review = client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=list(audiences) or None)
    )
    result = await asyncio.to_thread(client.AuthenticationV1Api().create_token_review, review)
    status = result.status
    if status is None or not status.authenticated or status.user is None:
        return None
    return status.user


def _user(info: Any) -> User:
    extra = tuple(sorted((k, tuple(v or ())) for k, v in (info.extra or {}).items()))
    return User(info.username, info.uid or "", tuple(info.groups or ()), extra)


def admission_user(userinfo: Mapping[str, Any]) -> User:
    """The user of an admission request (its `userInfo`, as the apiserver authenticated
    them), in the form KubernetesGuard.allowed reviews and caches: the admission webhook
    asks SubjectAccessReviews for the fleet's author through the same guard."""
    extra = tuple(sorted((k, tuple(v or ())) for k, v in (userinfo.get("extra") or {}).items()))
    return User(
        str(userinfo.get("username") or ""),
        str(userinfo.get("uid") or ""),
        tuple(userinfo.get("groups") or ()),
        extra,
    )


def _attributes(access: Access) -> dict[str, Any]:
    if isinstance(access, PathAccess):
        return {
            "non_resource_attributes": client.V1NonResourceAttributes(
                path=access.path, verb=access.verb
            )
        }
    resource: ResourceAccess = access
    return {
        "resource_attributes": client.V1ResourceAttributes(
            verb=resource.verb,
            group=resource.group,
            resource=resource.resource,
            namespace=resource.namespace or None,
            name=resource.name or None,
        )
    }


class KubernetesGuard:
    """TokenReview / cluster client certificates, then SubjectAccessReview."""

    def __init__(self, settings: AccessSettings) -> None:
        self.settings = settings
        size = settings.cache_size
        self._users: TTLCache[bytes, User] = TTLCache(size, settings.authn_ttl_seconds)
        self._refused: TTLCache[bytes, str] = TTLCache(size, settings.denied_ttl_seconds)
        self._allowed: TTLCache[tuple[User, Access], bool] = TTLCache(
            size, settings.allowed_ttl_seconds
        )
        self._denied: TTLCache[tuple[User, Access], bool] = TTLCache(
            size, settings.denied_ttl_seconds
        )

    async def authenticate(self, request: web.Request) -> User | None:
        token = bearer_token(request)
        if token is not None:
            return await self._token_user(token)
        transport = request.transport
        cert = client_certificate(transport.get_extra_info("peercert") if transport else None)
        if cert is None:
            return None
        return User(cert.common_name, groups=(*cert.organizations, AUTHENTICATED))

    async def _token_user(self, token: str) -> User:
        key = hashlib.sha256(token.encode()).digest()
        if (user := self._users.get(key)) is not None:
            return user
        if (why := self._refused.get(key)) is not None:
            raise Unauthenticated(why)
        info = await token_review(token, self.settings.audiences)
        if info is None:
            why = "the bearer token did not pass a TokenReview"
            self._refused[key] = why
            raise Unauthenticated(why)
        user = _user(info)
        self._users[key] = user
        return user

    async def allowed(self, user: User, access: Access) -> bool:
        key = (user, access)
        if key in self._allowed:
            return True
        if key in self._denied:
            return False
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user.name,
                uid=user.uid or None,
                groups=list(user.groups) or None,
                extra={k: list(v) for k, v in user.extra} or None,
                **_attributes(access),
            )
        )
        result = await asyncio.to_thread(
            client.AuthorizationV1Api().create_subject_access_review, review
        )
        allowed = result.status is not None and bool(result.status.allowed)
        (self._allowed if allowed else self._denied)[key] = True
        return allowed


POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: worth a TokenReview. Anything else is refused unasked, so
    guessing fleet tokens costs the apiserver nothing."""
    parts = token.split(".")
    return len(parts) == 3 and all(p and _B64URL.fullmatch(p) for p in parts)


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _expires_in(token: str, now: float) -> float | None:
    """Seconds until the token's `exp` claim (read, not verified: only to bound how long
    a TokenReview's answer is kept); None when it has none."""
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - now
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class ReviewedAccount:
    """What a TokenReview proved about an agent's ServiceAccount token."""

    service_account: str  # namespace/name
    pod: str = ""  # namespace/name of the pod a projected token is bound to
    pod_uid: str = ""


class AgentTokenReviewer:
    """ServiceAccount tokens of agents (projected, audience `opamp-operator`) checked by
    TokenReview. An answer is kept until the token expires (at most `max_ttl`), so an
    agent costs one review per token, never one per heartbeat or HTTP poll; refusals
    are kept briefly; at most `concurrency` reviews run at once."""

    def __init__(
        self, settings: AgentTokenSettings, counted: Callable[[str], None] = lambda _: None
    ) -> None:
        """`counted` is told of each review: "authenticated" or "refused"."""
        self.settings = settings
        self._counted = counted
        self._accounts: TLRUCache[bytes, tuple[ReviewedAccount, float]] = TLRUCache(
            settings.cache_size, ttu=lambda _k, v, _now: v[1]
        )
        self._refused: TTLCache[bytes, str] = TTLCache(settings.cache_size, 10.0)
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def review(self, token: str) -> ReviewedAccount:
        """Raises Unauthenticated when the token does not pass."""
        key = hashlib.sha256(token.encode()).digest()
        if (found := self._accounts.get(key)) is not None:
            return found[0]
        if (why := self._refused.get(key)) is not None:
            raise Unauthenticated(why)
        async with self._slots:
            account = await self._ask(token, key)
        return account

    async def _ask(self, token: str, key: bytes) -> ReviewedAccount:
        user = await token_review(token, self.settings.audiences)
        self._counted("authenticated" if user is not None else "refused")
        if user is None:
            why = f"the token did not pass a TokenReview for audience {self.settings.audiences}"
            self._refused[key] = why
            raise Unauthenticated(why)
        username = user.username or ""
        if not username.startswith(SERVICE_ACCOUNT_PREFIX):
            why = f"{username} is not a ServiceAccount"
            self._refused[key] = why
            raise Unauthenticated(why)
        namespace, _, name = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        extra = user.extra or {}
        pod_name = (extra.get(POD_NAME_EXTRA) or [""])[0]
        account = ReviewedAccount(
            f"{namespace}/{name}",
            f"{namespace}/{pod_name}" if pod_name else "",
            (extra.get(POD_UID_EXTRA) or [""])[0],
        )
        now = time.monotonic()
        left = _expires_in(token, time.time())
        ttl = (
            self.settings.max_ttl_seconds
            if left is None
            else min(left, self.settings.max_ttl_seconds)
        )
        if ttl > 0:
            self._accounts[key] = (account, now + ttl)
        return account
