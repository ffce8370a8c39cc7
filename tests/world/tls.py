"""TLS on the agents' port in the test world: a PKI on disk (a CA, a server certificate for
127.0.0.1 and localhost, client certificates that are good, foreign and expired), the
`serve` flags that use it, the TLS settings each real peer takes, and a look at the
certificate a listener presents, taken with Python's ssl rather than through a peer."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from cryptography import x509

from world import collector, processes
from world.collector import CollectorConfig
from world.operator import OpAMPEndpoint
from world.pki import CertificateAuthority, KeyPair

SERVER_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Credential:
    """A certificate and its key, on disk."""

    cert: Path
    key: Path

    @classmethod
    def of(cls, pair: KeyPair, directory: Path, stem: str) -> Credential:
        return cls(*pair.write(directory, stem))

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate now on disk."""
        return x509.load_pem_x509_certificate(self.cert.read_bytes())


@dataclass(frozen=True)
class AgentPKI:
    """Everything TLS on the agents' port needs, written under `directory`."""

    directory: Path
    ca: CertificateAuthority
    ca_file: Path
    """The CA agents trust for the server, and the server for client certificates."""
    server: Credential
    """The server certificate, for 127.0.0.1 and localhost."""
    client: Credential
    """A client certificate from `ca`."""
    foreign_ca_file: Path
    """A CA that issued nothing of ours: trusting only it is trusting the wrong CA."""
    foreign_client: Credential
    """A client certificate from the foreign CA."""
    expired_client: Credential
    """`client`'s subject from `ca`, but its validity ended an hour ago."""

    def server_pair(self, ca: CertificateAuthority | None = None) -> KeyPair:
        """A new server certificate for the same hosts, from `ca` (default: ours)."""
        return (ca or self.ca).issue("opamp-operator", hosts=SERVER_HOSTS, server=True)


def make_pki(directory: Path) -> AgentPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca, foreign = CertificateAuthority("agents' port CA"), CertificateAuthority("foreign CA")
    ca_file, foreign_ca_file = directory / "ca.crt", directory / "foreign-ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    foreign_ca_file.write_bytes(foreign.cert_pem)
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue(
        "agent",
        client=True,
        not_valid_before=now - dt.timedelta(hours=2),
        not_valid_after=now - dt.timedelta(hours=1),
    )
    return AgentPKI(
        directory=directory,
        ca=ca,
        ca_file=ca_file,
        server=Credential.of(
            ca.issue("opamp-operator", hosts=SERVER_HOSTS, server=True), directory, "server"
        ),
        client=Credential.of(ca.issue("agent", client=True), directory, "client"),
        foreign_ca_file=foreign_ca_file,
        foreign_client=Credential.of(
            foreign.issue("foreign-agent", client=True), directory, "foreign-client"
        ),
        expired_client=Credential.of(expired, directory, "expired-client"),
    )


def serve_tls_args(
    server: Credential,
    client_ca_file: Path | None = None,
    client_auth: str = "none",
    reload_seconds: float = 0.5,
) -> list[str]:
    """`opamp-operator serve` flags for TLS on the agents' port."""
    args = [
        f"--tls-cert-file={server.cert}",
        f"--tls-key-file={server.key}",
        f"--client-auth={client_auth}",
        f"--tls-reload-seconds={reload_seconds}",
    ]
    if client_ca_file is not None:
        args.append(f"--client-ca-file={client_ca_file}")
    return args


def wss_url(server: OpAMPEndpoint) -> str:
    return f"wss://127.0.0.1:{server.port}/v1/opamp"


def https_url(server: OpAMPEndpoint) -> str:
    return f"https://127.0.0.1:{server.port}/v1/opamp"


def rotate(server: Credential, pair: KeyPair) -> None:
    """Write a new certificate and key over the server's files, as a rotation does (a
    reload may see the new key with the old certificate in between, and must keep the
    old pair serving: tests/unit/test_server_tls.py)."""
    server.key.write_bytes(pair.key_pem)
    server.cert.write_bytes(pair.cert_pem)


def served_certificate(
    port: int, ca_file: Path, client: Credential | None = None
) -> x509.Certificate:
    """The certificate a new handshake with 127.0.0.1:`port` presents, verified against
    `ca_file` (host name included), presenting `client` if given."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def go_agent_tls_args(ca_file: Path, client: Credential | None = None) -> list[str]:
    """opamp-go-agent flags (test-deps/opamp-go): trust `ca_file`, present `client`."""
    args = [f"--ca-file={ca_file}"]
    if client is not None:
        args += [f"--cert-file={client.cert}", f"--key-file={client.key}"]
    return args


def collector_client_tls(ca_file: Path, client: Credential | None = None) -> dict[str, Any]:
    """A Collector `configtls.ClientConfig` (the opamp extension's and the supervisor's
    `tls`): verify the server against `ca_file`, present `client`."""
    settings: dict[str, Any] = {"insecure": False, "ca_file": str(ca_file)}
    if client is not None:
        settings |= {"cert_file": str(client.cert), "key_file": str(client.key)}
    return settings


def opamp_extension_tls(
    tls: dict[str, Any], attributes: dict[str, str] | None = None
) -> Callable[[CollectorConfig], None]:
    """An `extra` for world.collector.start_collector: its opamp extension's server gets
    `tls` (and its description the non-identifying `attributes`)."""

    def edit(config: CollectorConfig) -> None:
        opamp = config["extensions"]["opamp"]
        for transport in opamp["server"].values():
            transport["tls"] = tls
        if attributes:
            opamp["agent_description"] = {"non_identifying_attributes": attributes}

    return edit


@contextmanager
def supervisor_server_tls(tls: dict[str, Any]) -> Iterator[None]:
    """While open, world.collector.start_supervised_collector gives the supervisor's
    `server.tls` the value `tls` instead of `insecure: true`: its config file is edited
    just before each start. (That launcher has no TLS parameter; a `server_tls` one there
    would make this go away.)"""

    def spawn(name: str, argv: list[str], log_dir: Path, **kwargs: Any) -> Any:
        configs = [a.removeprefix("--config=") for a in map(str, argv) if a.startswith("--config=")]
        if configs and Path(str(argv[0])).name == "opampsupervisor":
            path = Path(configs[0])
            config = yaml.safe_load(path.read_text())
            config["server"]["tls"] = tls
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        return processes.spawn(name, argv, log_dir, **kwargs)

    with mock.patch.object(collector, "spawn", spawn):
        yield
