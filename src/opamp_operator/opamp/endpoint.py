"""Where an agent reached the server, as the transport saw its request: the OpAMP URL
it connected to, and whether an offer of OpAMP connection settings would repeat
everything that connection relied on.

An OpAMPConnectionSettings offer must name a destination_endpoint (the spec: "MUST be
non-empty"), and the agents that take one replace their whole connection with what it
carries: opampsupervisor (v0.149.0) rebuilds its server config from the offer alone —
headers it does not carry are dropped, a missing certificate means TLS with
InsecureSkipVerify and no client certificate — and reconnects without checking that the
new connection works. The server offers only what it can repeat: a plaintext connection
(ws://, http://) that presented no credential, to the very URL the agent used
(docs/opamp-server.md, "Heartbeat offers").

Pure: the transport reads the request, this decides.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
"""A Host header worth repeating: a name or IPv4 address, or a bracketed IPv6 address,
with an optional port. Anything else (userinfo, spaces, a path) gives no URL."""
_PATH = re.compile(r"/[A-Za-z0-9/._~%-]*")
"""A path without a query string: a query may carry a credential, or routing, that an
offer would not repeat."""
_TLS_PROTOS = frozenset({"https", "wss"})


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """How one connection (a WebSocket, or one HTTP request) reached the server."""

    url: str
    """The OpAMP URL the agent connected to (ws://, wss://, http:// or https://, the
    Host header, the path); "" when the request does not tell it reliably."""
    tls: bool = False
    """Over TLS: ours, or a proxy's that says so (X-Forwarded-Proto, Forwarded)."""
    credentials: bool = False
    """It presented an Authorization header (a client certificate needs TLS)."""

    @property
    def repeatable(self) -> bool:
        """An offer carrying only `url` (and a heartbeat interval) describes everything
        this connection used: a URL, no TLS settings, no headers."""
        return bool(self.url) and not self.tls and not self.credentials


def _first(value: str | None) -> str:
    """The first (client-side) element of a comma-separated proxy header, lowercased."""
    return value.split(",", 1)[0].strip().lower() if value else ""


def _forwarded_param(forwarded: str | None, name: str) -> str:
    """A parameter of the first element of an RFC 7239 Forwarded header, lowercased."""
    for pair in _first(forwarded).split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value.strip('"')
    return ""


@functools.lru_cache(maxsize=256)
def agent_endpoint(
    *,
    websocket: bool,
    tls: bool,
    host: str | None,
    target: str,
    authorization: bool,
    forwarded_proto: str | None = None,
    forwarded_host: str | None = None,
    forwarded_prefix: str | None = None,
    forwarded: str | None = None,
) -> AgentEndpoint:
    """The endpoint of a request: `host` its Host header, `target` its raw path (query
    included), `tls` whether it came over our TLS listener, the rest its proxy headers.

    A proxy that says the agent used TLS (X-Forwarded-Proto or Forwarded proto https or
    wss) makes the connection TLS; one that says it rewrote the host or the path
    (X-Forwarded-Host or Forwarded host naming another host, X-Forwarded-Prefix) leaves
    the URL unknown. An agent can only mislead the server about its own connection.
    Cached: an HTTP agent asks on every poll, with the same headers."""
    proto = _first(forwarded_proto) or _forwarded_param(forwarded, "proto")
    tls = tls or proto in _TLS_PROTOS
    outer_host = _first(forwarded_host) or _forwarded_param(forwarded, "host")
    url = ""
    if (
        host
        and _HOST.fullmatch(host)
        and _PATH.fullmatch(target)
        and (not outer_host or outer_host == host.lower())
        and not forwarded_prefix
    ):
        scheme = ("wss" if tls else "ws") if websocket else ("https" if tls else "http")
        url = f"{scheme}://{host}{target}"
    return AgentEndpoint(url, tls, authorization)
