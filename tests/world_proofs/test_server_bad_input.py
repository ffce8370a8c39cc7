"""Bad input to `opamp-operator serve`: each gets a clear error, the offending connection
is closed, and a well-behaved agent on the same server is not affected."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.server.app import Limits
from world.collector import JsonlProcess, start_go_agent
from world.operator import ServeProcess, start_serve, write_fleets

pytestmark = pytest.mark.world

LIMIT = 4096
UID = bytes(range(1, 17))
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    fleets = write_fleets(
        tmp_path / "fleets.yaml", [{"name": "all", "selector": {}, "config": "a: 1\n"}]
    )
    with start_serve(
        fleets,
        tmp_path,
        f"--max-message-bytes={LIMIT}",
        "--max-websockets=3",
        "--max-http-in-flight=50",
    ) as s:
        yield s


@pytest.fixture
def bystander(server: ServeProcess) -> Iterator[JsonlProcess]:
    """A healthy agent that must keep working whatever the others send."""
    with start_go_agent(server.ws_url, "--heartbeat=1s", "--service-name=bystander") as agent:
        agent.wait_for("remote_config_status")
        yield agent


def _assert_bystander_fine(server: ServeProcess, agent: JsonlProcess) -> None:
    agent.send(cmd="health", healthy=False, last_error="still here")
    server.wait_agent(
        lambda a: (a["health"] or {}).get("last_error") == "still here",
        "the bystander's report",
        20,
    )


def _hello() -> bytes:
    msg = pb.AgentToServer(
        instance_uid=UID,
        sequence_num=0,
        capabilities=pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_AcceptsRemoteConfig,
    )
    msg.agent_description.identifying_attributes.add(key="service.name").value.string_value = "x"
    return msg.SerializeToString()


async def test_malformed_protobuf_over_http_is_a_bad_request(
    server: ServeProcess, bystander: JsonlProcess
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(server.http_url, data=b"\xff\xff\xff", headers=PROTOBUF) as resp:
            assert resp.status == 400
            err = pb.ServerToAgent.FromString(await resp.read()).error_response
        assert err.type == pb.ServerErrorResponseType_BadRequest
        assert "malformed AgentToServer" in err.error_message
    _assert_bystander_fine(server, bystander)


async def test_wrong_content_type_is_refused(server: ServeProcess) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.http_url, data=_hello(), headers={"Content-Type": "text/plain"}) as resp,
    ):
        assert resp.status == 415
        assert "application/x-protobuf" in await resp.text()
    assert server.agents() == []


async def test_oversize_http_body_is_413_even_when_gzip_hides_it(server: ServeProcess) -> None:
    big = pb.AgentToServer(instance_uid=UID)
    big.custom_message.data = b"\0" * (LIMIT * 4)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.http_url, data=big.SerializeToString(), headers=PROTOBUF
        ) as resp:
            assert resp.status == 413
        zipped = gzip.compress(big.SerializeToString())
        assert len(zipped) < LIMIT
        headers = {**PROTOBUF, "Content-Encoding": "gzip"}
        async with http.post(server.http_url, data=zipped, headers=headers) as resp:
            assert resp.status == 413


async def test_gzip_request_and_response(server: ServeProcess) -> None:
    headers = {**PROTOBUF, "Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.post(server.http_url, data=gzip.compress(_hello()), headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers.get("Content-Encoding") == "gzip"
        reply = pb.ServerToAgent.FromString(gzip.decompress(await resp.read()))
    assert reply.instance_uid == UID
    assert reply.remote_config.config.config_map[""].body == b"a: 1\n"


async def test_a_body_that_is_not_its_encoding_is_a_bad_request(server: ServeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {**PROTOBUF, "Content-Encoding": "gzip"}
        async with http.post(server.http_url, data=b"not gzip", headers=headers) as resp:
            assert resp.status == 400
            err = pb.ServerToAgent.FromString(await resp.read()).error_response
        assert "not valid gzip" in err.error_message
        cut = gzip.compress(_hello())[:-4]
        async with http.post(server.http_url, data=cut, headers=headers) as resp:
            assert resp.status == 400
        headers = {**PROTOBUF, "Content-Encoding": "br"}
        async with http.post(server.http_url, data=_hello(), headers=headers) as resp:
            assert resp.status == 415
            assert "unsupported Content-Encoding 'br'" in await resp.text()


async def test_wrong_websocket_header_closes_that_connection_only(
    server: ServeProcess, bystander: JsonlProcess
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        await ws.send_bytes(b"\x01" + _hello())
        reply = await ws.receive()
        assert reply.type == aiohttp.WSMsgType.BINARY
        err = pb.ServerToAgent.FromString(reply.data[1:]).error_response
        assert err.type == pb.ServerErrorResponseType_BadRequest
        assert "header 1" in err.error_message
        closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA
    _assert_bystander_fine(server, bystander)


async def test_malformed_protobuf_over_websocket_closes_with_bad_request(
    server: ServeProcess,
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        await ws.send_bytes(b"\x00\x0a\xff")
        err = pb.ServerToAgent.FromString((await ws.receive()).data[1:]).error_response
        assert err.type == pb.ServerErrorResponseType_BadRequest
        await ws.receive()
        assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA


async def test_oversize_websocket_message_is_closed_with_1009(
    server: ServeProcess, bystander: JsonlProcess
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        await ws.send_bytes(b"\x00" + b"\x0a" * (LIMIT * 2))
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    _assert_bystander_fine(server, bystander)


async def test_connection_flood_is_shed_with_503_and_retry_after(
    server: ServeProcess, bystander: JsonlProcess
) -> None:
    async with aiohttp.ClientSession() as http:
        held = [await http.ws_connect(server.ws_url) for _ in range(2)]  # + bystander = 3
        async with http.get(
            server.ws_url,
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            assert resp.status == 503
            retry = int(resp.headers["Retry-After"])
            assert Limits().retry_after_min_seconds <= retry < Limits().retry_after_max_seconds
            err = pb.ServerToAgent.FromString(await resp.read()).error_response
            assert err.type == pb.ServerErrorResponseType_Unavailable
            assert err.retry_info.retry_after_nanoseconds == retry * 10**9
        for ws in held:
            await ws.close()
    _assert_bystander_fine(server, bystander)
    metrics = server.get("/metrics")
    assert 'opamp_errors_total{reason="shed_websocket"} 1.0' in metrics


async def test_unknown_path_and_method(server: ServeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url) as resp:
            assert resp.status == 405
        async with http.get(f"{server.api_url}/api/v1/agents/nope") as resp:
            assert resp.status == 404


async def test_the_agents_port_serves_opamp_and_nothing_else(server: ServeProcess) -> None:
    """Agent data, metrics and probes are not on the port every agent can reach."""
    async with aiohttp.ClientSession() as http:
        for path in ("/api/v1/agents", "/metrics", "/healthz", "/readyz", "/api/v1/fleets"):
            async with http.get(f"http://127.0.0.1:{server.port}{path}") as resp:
                assert resp.status == 404, path
            async with http.get(f"{server.api_url}{path}") as resp:
                assert resp.status == (404 if path == "/api/v1/fleets" else 200), path
