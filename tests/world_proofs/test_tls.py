"""TLS and mTLS on the agents' port (`opamp-operator serve --tls-cert-file ...`) against
the real peers: the Collector's opamp extension and opampsupervisor over wss:// with a
client certificate, opamp-go over wss:// and https://, and the PyPI and npm clients over
https:// (their harnesses cannot present a client certificate: world/peers.py).

Refusals are tried for real, each by a peer that would otherwise have connected:
plaintext to the TLS port, a client that trusts another CA, no client certificate where
one is required, an expired one, one from a foreign CA where one is optional. A rotation
of the certificate files leaves connected agents connected while new handshakes get the
new certificate. Two servers (client certificates required; optional) serve most tests;
the rotation has its own, since it rewrites the certificate files."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from world.collector import (
    JsonlProcess,
    collector_config_with_health,
    start_collector,
    start_go_agent,
    start_supervised_collector,
)
from world.fleets import CONFIG_V1, single_file_hash
from world.operator import ServeProcess, start_serve, write_fleets
from world.peers import start_node_agent, start_python_agent
from world.pki import CertificateAuthority
from world.processes import eventually
from world.tls import (
    AgentPKI,
    Credential,
    collector_client_tls,
    go_agent_tls_args,
    https_url,
    make_pki,
    opamp_extension_tls,
    rotate,
    serve_tls_args,
    served_certificate,
    supervisor_server_tls,
    wss_url,
)

pytestmark = pytest.mark.world

ACCEPTS_REMOTE_CONFIG = 0x2  # AgentCapabilities_AcceptsRemoteConfig


@dataclass(frozen=True)
class Fleet:
    """One fleet for every agent: a Collector config whose health check is on `port`."""

    path: Path
    config: str
    health_port: int


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def pki(workdir: Path) -> AgentPKI:
    return make_pki(workdir / "pki")


@pytest.fixture(scope="module")
def fleet(workdir: Path) -> Fleet:
    config, port = collector_config_with_health()
    path = write_fleets(
        workdir / "fleets.yaml", [{"name": "all", "selector": {}, "config": config}]
    )
    return Fleet(path, config, port)


@pytest.fixture(scope="module")
def mtls(pki: AgentPKI, fleet: Fleet, workdir: Path) -> Iterator[ServeProcess]:
    """serve with TLS on the agents' port and client certificates required."""
    args = serve_tls_args(pki.server, pki.ca_file, "require")
    with start_serve(fleet.path, workdir / "mtls", *args) as server:
        yield server


@pytest.fixture(scope="module")
def optional(pki: AgentPKI, fleet: Fleet, workdir: Path) -> Iterator[ServeProcess]:
    """serve with TLS on the agents' port and client certificates optional."""
    args = serve_tls_args(pki.server, pki.ca_file, "optional")
    with start_serve(fleet.path, workdir / "optional", *args) as server:
        yield server


def _named(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda a: a["identifying_attributes"].get("service.name") == name


def _peer(marker: str) -> Callable[[dict[str, Any]], bool]:
    return lambda a: (a["non_identifying_attributes"] or {}).get("test.peer") == marker


def _applied(server: ServeProcess, name: str, timeout: float = 60.0) -> dict[str, Any]:
    return server.wait_agent(
        lambda a: _named(name)(a) and (a["remote_config_status"] or {}).get("status") == "APPLIED",
        f"{name} to report APPLIED",
        timeout,
    )


def _refused(server: ServeProcess, url: str, name: str, *args: str) -> str:
    """Start opamp-go at `url` and return why it could not connect; the server never saw
    it (a refused handshake reaches no OpAMP code)."""
    with start_go_agent(url, "--heartbeat=1s", f"--service-name={name}", *args) as go:
        error = str(go.wait_for("connect_failed", timeout=30)["error"])
        assert not any(e["event"] in {"connected", "message"} for e in go.seen)
    assert not [a for a in server.agents() if _named(name)(a)]
    return error


# How Go words a connection its peer closed: at once (EOF), with our request unread in the
# peer's buffer (reset), or while the HTTP client was still writing on it (the last two).
_CLOSED_BY_PEER = (
    "EOF",
    "connection reset by peer",
    "use of closed network connection",
    "broken pipe",
)


def _refused_by_the_server(error: str) -> None:
    """What a client sees when our listener refuses its certificate: the connection
    closed during or right after the handshake, with no reason. OpenSSL writes the fatal
    alert (certificate required, expired, unknown CA) but asyncio's and uvloop's SSL
    transports close without sending it (CPython gh-98078), so Go reports EOF or a reset,
    not "remote error: tls: ...". Which refusal it was is proved by the control in each
    test: the same request with a good certificate goes through."""
    assert any(closed in error for closed in _CLOSED_BY_PEER), error
    assert "x509" not in error  # the client did not refuse the server's certificate


def _serves_good_clients(server: ServeProcess, pki: AgentPKI) -> None:
    """The control: a handshake with a good client certificate still works."""
    served = served_certificate(server.port, pki.ca_file, pki.client)
    assert served.serial_number == pki.server.certificate.serial_number


def _served_serial(port: int, ca_file: Path, client: Credential) -> int | None:
    """The serial a new handshake presents; None while it does not verify against
    `ca_file` (a certificate from another CA is still being served)."""
    try:
        return int(served_certificate(port, ca_file, client).serial_number)
    except ssl.SSLCertVerificationError:
        return None


# ---- every peer over TLS -------------------------------------------------------------


def test_collector_extension_over_wss_with_a_client_certificate(
    mtls: ServeProcess, pki: AgentPKI, tmp_path: Path
) -> None:
    """The opamp extension verifies our certificate against ca_file and presents its own.
    It never applies a remote config (it has no AcceptsRemoteConfig; the supervisor does
    that, below): what it proves is a working connection — description, effective config
    and health arrive over it."""
    tls = collector_client_tls(pki.ca_file, pki.client)
    with start_collector(
        wss_url(mtls),
        tmp_path / "otelcol",
        extra=opamp_extension_tls(tls, {"test.peer": "extension"}),
    ) as otelcol:
        config = yaml.safe_load((otelcol.workdir / "collector.yaml").read_text())
        assert config["extensions"]["opamp"]["server"] == {
            "ws": {"endpoint": wss_url(mtls), "tls": tls}
        }
        otelcol.wait_healthy()
        seen = mtls.wait_agent(
            lambda a: (
                _peer("extension")(a)
                and a["connected"]
                and a["effective_config_hash"] is not None
                and (a["health"] or {}).get("healthy") is True
            ),
            "the Collector's effective config and health over wss",
        )
        assert seen["transport"] == "websocket"
        assert seen["identifying_attributes"]["service.name"] == "otelcol-opamp"
        assert not seen["capabilities"] & ACCEPTS_REMOTE_CONFIG
        detail = mtls.get(f"/api/v1/agents/{seen['instance_uid']}")
        assert "health_check" in "".join(detail["effective_config"].values())


def test_supervisor_over_wss_with_a_client_certificate_applies_the_fleet_config(
    mtls: ServeProcess, pki: AgentPKI, fleet: Fleet, tmp_path: Path
) -> None:
    tls = collector_client_tls(pki.ca_file, pki.client)
    workdir = tmp_path / "supervisor"
    with supervisor_server_tls(tls):
        supervisor = start_supervised_collector(
            wss_url(mtls), workdir, attributes={"test.peer": "supervisor"}
        )
    with supervisor:
        config = yaml.safe_load((workdir / "supervisor.yaml").read_text())
        assert config["server"] == {"endpoint": wss_url(mtls), "tls": tls}
        applied = mtls.wait_agent(
            lambda a: (
                _peer("supervisor")(a)
                and (a["remote_config_status"] or {}).get("status") == "APPLIED"
            ),
            "the supervisor to apply the fleet's config over wss",
            90,
        )
        assert applied["remote_config_status"]["hash"] == single_file_hash(fleet.config)
        assert applied["transport"] == "websocket"
        assert applied["connected"] is True
        # The Collector runs our config: the health check port it names answers.
        supervisor.health_url = f"http://127.0.0.1:{fleet.health_port}/"
        supervisor.wait_healthy(timeout=60)


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_opamp_go_with_a_client_certificate(
    mtls: ServeProcess, pki: AgentPKI, fleet: Fleet, transport: str
) -> None:
    url = wss_url(mtls) if transport == "websocket" else https_url(mtls)
    name = f"go-mtls-{transport}"
    args = go_agent_tls_args(pki.ca_file, pki.client)
    with start_go_agent(url, "--heartbeat=1s", f"--service-name={name}", *args) as go:
        handshake = go.wait_for("tls_handshake")
        assert int(handshake["serial"], 16) == pki.server.certificate.serial_number
        assert handshake["version"] == "TLS 1.3"
        offered = go.wait_for("message", timeout=30, where=lambda e: "remote_config" in e)
        assert offered["remote_config"]["config_hash"] == single_file_hash(fleet.config)
        seen = _applied(mtls, name)
        assert seen["transport"] == transport
        assert seen["effective_config_hash"] == single_file_hash(fleet.config)


@dataclass(frozen=True)
class HttpPeer:
    name: str
    start: Callable[..., JsonlProcess]


HTTP_PEERS = [HttpPeer("python", start_python_agent), HttpPeer("node", start_node_agent)]


@pytest.mark.parametrize("peer", HTTP_PEERS, ids=[p.name for p in HTTP_PEERS])
def test_http_only_clients_over_https_trusting_our_ca(
    optional: ServeProcess, pki: AgentPKI, fleet: Fleet, peer: HttpPeer
) -> None:
    """opentelemetry-opamp-client (requests) and @elastic/opamp-client-node (undici) take
    our CA from the environment; without a client certificate they need `optional`."""
    name = f"https-{peer.name}"
    url = https_url(optional)
    with peer.start(url, "--heartbeat=1s", f"--service-name={name}", ca_file=pki.ca_file) as agent:
        offered = agent.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
        assert offered["remote_config"]["config_hash"] == single_file_hash(fleet.config)
        seen = _applied(optional, name)
        assert seen["transport"] == "http"
    # The CA is what made it work: the same client trusting only the system's CAs fails.
    untrusting = f"untrusting-{peer.name}"
    with peer.start(url, "--heartbeat=1s", f"--service-name={untrusting}") as agent:
        failed = agent.wait_for("connect_failed", timeout=30)
        assert "certificate" in failed["error"].lower()
    assert not [a for a in optional.agents() if _named(untrusting)(a)]


# ---- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_plaintext_to_the_tls_port_fails(mtls: ServeProcess, pki: AgentPKI, scheme: str) -> None:
    url = mtls.ws_url if scheme == "ws" else mtls.http_url
    _refused(mtls, url, f"plaintext-{scheme}")
    # Nothing on the port answers plaintext HTTP: a request gets no HTTP response.
    with socket.create_connection(("127.0.0.1", mtls.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        try:
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")
    # ... while TLS on the same port still works.
    assert served_certificate(mtls.port, pki.ca_file, pki.client).serial_number == (
        pki.server.certificate.serial_number
    )


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_a_client_trusting_another_ca_fails_the_handshake(
    mtls: ServeProcess, pki: AgentPKI, transport: str
) -> None:
    url = wss_url(mtls) if transport == "websocket" else https_url(mtls)
    error = _refused(
        mtls, url, f"wrong-ca-{transport}", *go_agent_tls_args(pki.foreign_ca_file, pki.client)
    )
    assert "certificate signed by unknown authority" in error
    with pytest.raises(ssl.SSLCertVerificationError):
        served_certificate(mtls.port, pki.foreign_ca_file, pki.client)


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_no_client_certificate_is_refused_when_required(
    mtls: ServeProcess, pki: AgentPKI, transport: str
) -> None:
    url = wss_url(mtls) if transport == "websocket" else https_url(mtls)
    _refused_by_the_server(
        _refused(mtls, url, f"no-cert-{transport}", *go_agent_tls_args(pki.ca_file))
    )
    _serves_good_clients(mtls, pki)


def test_an_expired_client_certificate_is_refused(mtls: ServeProcess, pki: AgentPKI) -> None:
    args = go_agent_tls_args(pki.ca_file, pki.expired_client)
    _refused_by_the_server(_refused(mtls, wss_url(mtls), "expired-cert", *args))
    _serves_good_clients(mtls, pki)  # a valid certificate of the same CA, the same subject


def test_optional_client_auth_lets_agents_without_a_certificate_in_and_refuses_bad_ones(
    optional: ServeProcess, pki: AgentPKI
) -> None:
    url = wss_url(optional)
    with (
        start_go_agent(
            url, "--heartbeat=1s", "--service-name=optional-none", *go_agent_tls_args(pki.ca_file)
        ),
        start_go_agent(
            url,
            "--heartbeat=1s",
            "--service-name=optional-good",
            *go_agent_tls_args(pki.ca_file, pki.client),
        ),
    ):
        _applied(optional, "optional-none")
        _applied(optional, "optional-good")
    foreign = go_agent_tls_args(pki.ca_file, pki.foreign_client)
    _refused_by_the_server(_refused(optional, url, "optional-foreign", *foreign))
    expired = go_agent_tls_args(pki.ca_file, pki.expired_client)
    _refused_by_the_server(_refused(optional, url, "optional-expired", *expired))


# ---- rotation ------------------------------------------------------------------------


def test_a_rotated_certificate_serves_new_handshakes_and_keeps_connected_agents(
    pki: AgentPKI, fleet: Fleet, tmp_path: Path
) -> None:
    """The certificate files are written over twice — a new certificate from the same CA
    (the certificate first, the key a moment later), then one from a new CA — while an
    agent stays connected over wss. Its WebSocket never closes (no second handshake, no
    reconnect, same connection still counting messages) and every new handshake presents
    the certificate now on disk."""
    files = Credential.of(pki.server_pair(), tmp_path, "server")
    args = serve_tls_args(files, pki.ca_file, "require", reload_seconds=0.5)
    with start_serve(fleet.path, tmp_path, *args) as server:
        first = files.certificate.serial_number
        go_args = go_agent_tls_args(pki.ca_file, pki.client)
        with start_go_agent(
            wss_url(server), "--heartbeat=1s", "--service-name=long-lived", *go_args
        ) as go:
            handshake = go.wait_for("tls_handshake")
            assert int(handshake["serial"], 16) == first
            before = _applied(server, "long-lived")

            # Half-written first: the new certificate with the old key is tried, refused,
            # and the old pair keeps serving; the key's arrival completes the rotation.
            same_ca = pki.server_pair()
            files.cert.write_bytes(same_ca.cert_pem)
            eventually(
                "the server to try the half-written pair",
                lambda: "cannot be loaded" in Path(server.record.log).read_text(),
                timeout=10,
            )
            assert _served_serial(server.port, pki.ca_file, pki.client) == first
            files.key.write_bytes(same_ca.key_pem)
            eventually(
                "a handshake to present the new certificate from the same CA",
                lambda: (
                    _served_serial(server.port, pki.ca_file, pki.client)
                    == same_ca.certificate.serial_number
                ),
                timeout=10,
            )
            new_ca = CertificateAuthority("rotated CA")
            new_ca_file = tmp_path / "new-ca.crt"
            new_ca_file.write_bytes(new_ca.cert_pem)
            from_new_ca = pki.server_pair(new_ca)
            rotate(files, from_new_ca)
            eventually(
                "a handshake to present the certificate from the new CA",
                lambda: (
                    _served_serial(server.port, new_ca_file, pki.client)
                    == from_new_ca.certificate.serial_number
                ),
                timeout=10,
            )

            after = server.wait_agent(
                lambda a: _named("long-lived")(a) and a["messages"] >= before["messages"] + 3,
                "the connected agent's heartbeats to keep arriving",
                30,
            )
            assert after["instance_uid"] == before["instance_uid"]
            assert after["connected"] is True
            assert after["connected_at"] == before["connected_at"]
            # Drain what the agent printed so far: still the one handshake, one connect.
            with pytest.raises(TimeoutError):
                go.wait_for("tls_handshake", timeout=1, where=lambda e: e is not handshake)
            assert [e["event"] for e in go.seen if "connect" in e["event"]] == ["connected"]

            # New agents see only the new certificate: trusting the old CA fails ...
            assert "certificate signed by unknown authority" in _refused(
                server, wss_url(server), "trusts-old-ca", *go_args
            )
            # ... and trusting the new one works.
            new_args = go_agent_tls_args(new_ca_file, pki.client)
            with start_go_agent(
                wss_url(server), "--heartbeat=1s", "--service-name=newcomer", *new_args
            ) as newcomer:
                seen = newcomer.wait_for("tls_handshake")
                assert int(seen["serial"], 16) == from_new_ca.certificate.serial_number
                _applied(server, "newcomer")
        log = Path(server.record.log).read_text()
        assert log.count("TLS certificate reloaded") == 2


def test_serve_gives_a_fleet_only_to_agents_whose_certificate_names_it(
    pki: AgentPKI, workdir: Path
) -> None:
    """VMs and bare metal: `serve`'s fleets file admits by client certificate name. An
    agent cannot claim the fleet by its attributes, nor with a certificate of another
    name, nor with none."""
    named = CONFIG_V1.replace("debug: {}", "debug: {verbosity: detailed}")
    path = write_fleets(
        workdir / "certificate-fleets.yaml",
        [
            {"name": "dc-a", "certificateNames": ["dc-a.example"], "selector": {}, "config": named},
            {"name": "rest", "selector": {}, "config": CONFIG_V1},
        ],
    )
    dc_a = Credential.of(
        pki.ca.issue("collector-7", hosts=("dc-a.example",), client=True), workdir, "dc-a"
    )
    args = serve_tls_args(pki.server, pki.ca_file, "optional")
    with start_serve(path, workdir / "certificate-fleets", *args) as server:
        url = wss_url(server)
        agents = {
            "by-certificate": go_agent_tls_args(pki.ca_file, dc_a),
            "other-certificate": go_agent_tls_args(pki.ca_file, pki.client),
            "no-certificate": go_agent_tls_args(pki.ca_file),
        }
        started = [
            start_go_agent(url, "--heartbeat=1s", f"--service-name={name}", *tls)
            for name, tls in agents.items()
        ]
        try:
            hashes = {
                name: _applied(server, name)["remote_config_status"]["hash"] for name in agents
            }
        finally:
            for agent in started:
                agent.stop()
    assert hashes == {
        "by-certificate": single_file_hash(named),
        "other-certificate": single_file_hash(CONFIG_V1),
        "no-certificate": single_file_hash(CONFIG_V1),
    }
