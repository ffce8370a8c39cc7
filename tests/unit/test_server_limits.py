"""The OpAMP server's limits and timeouts: the pure parts (jitter, the byte budget, the
settings' ranges), then the transport in-process on a loopback socket, the agents'
listener as `run` and `serve` build it (server/listeners.py GuardedSite)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import uvloop
import yaml
from aiohttp import web

from opamp_operator.opamp import wire
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import AgentLimits, AgentRecord, ServerCore
from opamp_operator.server.app import (
    UNCHARGED_BYTES,
    ByteBudget,
    Charge,
    Limits,
    OpAMPServer,
)
from opamp_operator.server.listeners import GuardedSite

CHART = Path(__file__).parents[2] / "deploy/helm/opamp-operator"
UID = bytes(range(1, 17))
PROTOBUF = {"Content-Type": "application/x-protobuf"}


# ---- pure parts -------------------------------------------------------------------------


def test_retry_after_is_jittered_over_the_whole_range_and_never_below_its_minimum() -> None:
    limits = Limits()
    rng = random.Random(7)  # noqa: S311 - jitter, not a secret
    drawn = [limits.retry_after(rng) for _ in range(2000)]
    assert min(drawn) >= limits.retry_after_min_seconds == 30
    assert max(drawn) < limits.retry_after_max_seconds == 60
    assert set(drawn) == set(range(30, 60))  # every second of the range is used
    fixed = Limits(retry_after_min_seconds=45, retry_after_max_seconds=45)
    assert {fixed.retry_after(rng) for _ in range(10)} == {45}


@pytest.mark.parametrize(
    "bad",
    [
        {"max_message_bytes": 0},
        {"max_in_flight_bytes": 0},
        {"max_websockets": 0},
        {"header_timeout_seconds": 0.0},
        {"body_timeout_seconds": -1.0},
        {"shutdown_seconds": 0.0},
        {"retry_after_min_seconds": 61},
        {"retry_after_min_seconds": -1, "retry_after_max_seconds": 5},
    ],
)
def test_limits_refuse_values_that_cannot_work(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Limits(**bad)  # type: ignore[arg-type]


def test_the_defaults_fit_the_chart_s_memory_limit() -> None:
    """What the defaults let the server hold, from measured costs (docs/benchmarks.md):
    the idle server (~80 MiB), every WebSocket a TLS agent (~57 KiB), everything all
    agents keep, the byte budget and one more message being decoded (a 16 MiB message
    cost ~80 MiB), and both pools of config workers at their address-space cap; a
    quarter of the limit is left for what the cgroup counts and RSS does not (kernel
    socket buffers)."""
    limits, kept = Limits(), AgentLimits()
    mib = 2**20
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    memory = values["resources"]["limits"]["memory"]
    assert memory.endswith("Mi")
    assert limits.max_message_bytes == 16 * mib
    assert limits.max_in_flight_bytes == 4 * limits.max_message_bytes
    held = (
        80
        + limits.max_websockets * 57 / 1024
        + kept.max_kept_bytes / mib
        + limits.max_in_flight_bytes / mib
        + 5 * limits.max_message_bytes / mib
        + 2 * limits.config_workers * limits.config_worker_memory_bytes / mib
    )
    assert held < 0.75 * int(memory.removesuffix("Mi"))


def test_a_charge_is_free_up_to_the_allowance_then_all_or_nothing() -> None:
    budget = ByteBudget(1000)
    small, big, other = Charge(budget), Charge(budget), Charge(budget)
    assert small.cover(UNCHARGED_BYTES)
    assert budget.used == 0
    assert big.cover(UNCHARGED_BYTES + 600)
    assert budget.used == 600
    assert big.cover(UNCHARGED_BYTES + 900)  # grows by what is new
    assert budget.used == 900
    assert not other.cover(UNCHARGED_BYTES + 200)  # would not fit: nothing is taken
    assert budget.used == 900
    assert other.charged == 0
    assert big.cover(UNCHARGED_BYTES + 100)  # cover never shrinks
    assert budget.used == 900
    assert big.settle(UNCHARGED_BYTES + 100)  # settle gives back what was handled
    assert budget.used == 100
    assert not big.settle(UNCHARGED_BYTES + 1200)
    assert budget.used == 100
    big.release()
    assert budget.used == 0
    assert other.cover(UNCHARGED_BYTES + 200)
    other.release()
    small.release()
    assert budget.used == 0


# ---- the transport, in-process --------------------------------------------------------


@dataclass
class Running:
    server: OpAMPServer
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/opamp"

    def errors(self, reason: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "opamp_errors_total", {"reason": reason}
        )
        return value or 0.0


LIMITS = Limits(
    max_message_bytes=400_000,
    max_in_flight_bytes=300_000,
    header_timeout_seconds=0.5,
    body_timeout_seconds=0.5,
    first_message_timeout_seconds=0.5,
    shutdown_seconds=0.5,
)


async def _start() -> Running:
    """A server with LIMITS on a free loopback port, behind the agents' listener's guard."""
    server = OpAMPServer(ServerCore(), LIMITS, rng=random.Random(1))  # noqa: S311
    runner = web.AppRunner(server.app(), shutdown_timeout=LIMITS.shutdown_seconds)
    await runner.setup()
    await GuardedSite(runner, server, "127.0.0.1", 0, ssl_context=None, backlog=128).start()
    return Running(server, runner, runner.addresses[0][1])


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    started = await _start()
    try:
        yield started
    finally:
        await started.runner.cleanup()


def _hello(uid: bytes = UID) -> bytes:
    msg = pb.AgentToServer(instance_uid=uid, capabilities=pb.AgentCapabilities_ReportsStatus)
    msg.agent_description.identifying_attributes.add(key="service.name").value.string_value = "x"
    return msg.SerializeToString()


async def _raw(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


def _post_head(length: int) -> bytes:
    return (
        b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


async def test_a_body_over_the_message_limit_is_refused_before_it_is_sent(
    running: Running,
) -> None:
    reader, writer = await _raw(running.port, _post_head(LIMITS.max_message_bytes + 1))
    status = await asyncio.wait_for(reader.readline(), 2)  # not one body byte sent
    assert status.startswith(b"HTTP/1.1 413")
    writer.close()
    assert running.errors("too_large") == 1


async def test_the_byte_budget_admits_by_content_length_and_spares_small_messages(
    running: Running,
) -> None:
    held_length = 250_000
    reader, writer = await _raw(running.port, _post_head(held_length) + b"\x0a")
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # until the held request has been admitted
            if running.server.budget.used:
                break
            await asyncio.sleep(0.01)
        assert running.server.budget.used == held_length - UNCHARGED_BYTES
        body = b"\x0a" * 200_000  # with the held one: over 300,000 + two allowances
        async with http.post(running.url, data=body, headers=PROTOBUF) as resp:
            assert resp.status == 503
            retry = int(resp.headers["Retry-After"])
            err = pb.ServerToAgent.FromString(await resp.read()).error_response
        assert 30 <= retry < 60
        assert err.type == pb.ServerErrorResponseType_Unavailable
        assert err.retry_info.retry_after_nanoseconds == retry * 10**9
        async with http.post(running.url, data=_hello(), headers=PROTOBUF) as resp:
            assert resp.status == 200  # under the allowance: never waits for big ones
        assert await asyncio.wait_for(reader.readline(), 2) == b"HTTP/1.1 408 Request Timeout\r\n"
    writer.close()
    assert running.server.budget.used == 0
    assert running.errors("shed_bytes") == 1
    assert running.errors("body_timeout") == 1


async def test_a_chunked_body_is_charged_as_it_arrives(running: Running) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"\x0a" * 50_000

    async with (
        aiohttp.ClientSession() as http,
        http.post(running.url, data=chunks(), headers=PROTOBUF) as resp,
    ):
        assert resp.status == 503  # past 300,000 + the allowance, before the 400,000 limit
    assert running.server.budget.used == 0


async def test_headers_must_be_complete_within_the_header_timeout(running: Running) -> None:
    started = time.monotonic()
    reader, writer = await _raw(running.port, b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\n")
    writer.write(b"X-Slow: 1\r\n")  # bytes keep coming, the headers never end
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert 0.4 < time.monotonic() - started < 2
    idle_reader, idle = await _raw(running.port, b"")
    assert await asyncio.wait_for(idle_reader.read(), 3) == b""  # never sent a byte
    writer.close()
    idle.close()
    assert running.errors("header_timeout") == 2


async def test_a_websocket_without_a_first_message_is_closed(running: Running) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(running.url) as ws:
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert running.errors("first_message_timeout") == 1


def test_the_server_s_own_lateness_is_not_held_against_a_client() -> None:
    """A client whose headers, or first WebSocket message, arrived in time while the loop
    was held (a connect storm, a collection of a large heap) is answered, not cut off:
    its deadline fires in the same loop iteration that read its bytes, before the
    request's task has started."""

    async def scenario() -> tuple[bytes, aiohttp.WSMsgType]:
        started = await _start()
        port = started.port
        try:
            body = _hello()
            reader, writer = await _raw(port, b"")
            await asyncio.sleep(0.2)  # accepted: its header deadline runs
            writer.write(_post_head(len(body)) + body)
            time.sleep(1.0)  # noqa: ASYNC251 - the loop is held past the header deadline
            status = await asyncio.wait_for(reader.readline(), 3)
            writer.close()
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(f"http://127.0.0.1:{port}/v1/opamp") as ws,
            ):
                await ws.send_bytes(b"\x00" + _hello(bytes(range(16, 32))))
                time.sleep(1.0)  # noqa: ASYNC251 - past the first-message deadline
                answer = await ws.receive(timeout=3)
            assert started.errors("header_timeout") == 0
            assert started.errors("first_message_timeout") == 0
            return status, answer.type
        finally:
            await started.runner.cleanup()

    status, answer = uvloop.run(scenario())
    assert status.startswith(b"HTTP/1.1 200")
    assert answer == aiohttp.WSMsgType.BINARY


async def test_a_websocket_message_past_the_budget_gets_unavailable_and_1013(
    running: Running,
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(running.url) as ws:
        await ws.send_bytes(wire.WS_HEADER + _hello())
        assert (await ws.receive(timeout=3)).type == aiohttp.WSMsgType.BINARY
        await ws.send_bytes(wire.WS_HEADER + b"\x0a" * 390_000)  # under the message limit
        err = wire.decode_server_ws_frame((await ws.receive(timeout=3)).data).error_response
        assert err.type == pb.ServerErrorResponseType_Unavailable
        assert 30 * 10**9 <= err.retry_info.retry_after_nanoseconds < 60 * 10**9
        assert (await ws.receive(timeout=3)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    assert running.server.budget.used == 0
    assert running.errors("shed_bytes") == 1


UPGRADE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def _frame(payload: bytes, length: int | None = None, *, fin: bool = True) -> bytes:
    """A masked (mask 0) binary frame; `length` may announce more than `payload` holds."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | 0x2, 0x80 | (length if length < 126 else 127)])
    if length >= 126:
        head += length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def _frame_from(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    return first & 0x0F, await reader.readexactly(length)


async def test_a_large_websocket_message_must_arrive_within_the_body_timeout(
    running: Running,
) -> None:
    reader, writer = await _raw(running.port, UPGRADE)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(_frame(wire.WS_HEADER + _hello()))
    assert (await asyncio.wait_for(_frame_from(reader), 3))[0] == 0x2  # the reply
    payload = wire.WS_HEADER + bytes(100_000)
    writer.write(_frame(payload, length=200_001))  # then it stalls
    for _ in range(100):  # until all of it has arrived
        if running.server.budget.used == len(payload) - UNCHARGED_BYTES:
            break
        await asyncio.sleep(0.01)
    assert running.server.budget.used == len(payload) - UNCHARGED_BYTES
    opcode, payload = await asyncio.wait_for(_frame_from(reader), 3)
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert running.errors("body_timeout") == 1
    assert running.server.budget.used == 0
    writer.close()


async def test_a_message_begun_in_fragments_must_end_within_the_body_timeout(
    running: Running,
) -> None:
    """A first fragment, then only pongs: aiohttp would keep the fragment for as long as
    the connection lives. The message gets the body timeout, whatever its size."""
    reader, writer = await _raw(running.port, UPGRADE)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(_frame(wire.WS_HEADER + bytes(1000), fin=False))
    for _ in range(3):
        writer.write(bytes([0x8A, 0x80]) + b"\0\0\0\0")  # an unasked pong, between fragments
        await asyncio.sleep(0.1)
    opcode, payload = await asyncio.wait_for(_frame_from(reader), 3)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1008)
    assert running.errors("body_timeout") == 1
    writer.close()


async def test_frames_sent_before_the_handshake_is_answered_close_the_connection(
    running: Running,
) -> None:
    """RFC 6455 4.1: a client waits for the server's answer. One that does not cannot be
    followed frame by frame, so it is not served."""
    reader, writer = await _raw(running.port, UPGRADE + _frame(wire.WS_HEADER + _hello()))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    opcode, payload = await asyncio.wait_for(_frame_from(reader), 3)
    while opcode != 0x8:  # the early message itself may have been answered
        opcode, payload = await asyncio.wait_for(_frame_from(reader), 3)
    assert int.from_bytes(payload[:2], "big") == 1002
    assert running.errors("protocol_error") == 1
    writer.close()


class Big:
    """A desired config larger than the kernel's socket buffers hold."""

    config = RemoteConfig.single(b"a: " + b"x" * 6_000_000 + b"\n")

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return self.config

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        return None


async def test_shutdown_closes_every_websocket_at_once_within_its_bound() -> None:
    """Agents that stopped reading while a large config was sent to them: closing one
    waits for its buffered data to drain, which it never does. One at a time, the first
    held shutdown forever; at once, all are let go at the bound."""
    limits = Limits(shutdown_seconds=0.5)
    server = OpAMPServer(ServerCore(desired=Big()), limits)
    runner = web.AppRunner(server.app(), shutdown_timeout=limits.shutdown_seconds)
    await runner.setup()
    await GuardedSite(runner, server, "127.0.0.1", 0, ssl_context=None, backlog=128).start()
    port = runner.addresses[0][1]
    hello = pb.AgentToServer.FromString(_hello())
    hello.capabilities |= pb.AgentCapabilities_AcceptsRemoteConfig
    writers = []
    for i in range(5):
        hello.instance_uid = bytes([i + 1]) * 16
        _, writer = await _raw(port, UPGRADE + _frame(wire.WS_HEADER + hello.SerializeToString()))
        writers.append(writer)  # and nothing is ever read
    offers = server.metrics.registry.get_sample_value
    for _ in range(200):
        if offers("opamp_remote_config_offers_total") == 5:
            break
        await asyncio.sleep(0.02)
    assert offers("opamp_remote_config_offers_total") == 5
    await asyncio.sleep(0.2)  # the kernel's buffers fill; the rest waits in the server's
    started = time.monotonic()
    await runner.cleanup()
    took = time.monotonic() - started
    # At least the bound: the closes did block; at most two: closing, then the handlers.
    assert limits.shutdown_seconds - 0.1 < took < 2 * limits.shutdown_seconds + 0.5, took
    for writer in writers:
        writer.close()
