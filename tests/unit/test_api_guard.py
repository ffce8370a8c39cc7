"""The API listener's guard (server/api.py) in process: probes open, everything else
authenticated, a handler that forgets to authorize answers 403 (fail closed), refusals
name what is missing."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from opamp_operator.server.api import (
    RENDERS_PER_USER,
    Access,
    ApiContext,
    LoopbackGuard,
    PathAccess,
    ResourceAccess,
    TokenGuard,
    User,
    bearer_token,
    guarded,
)


class OnlyMetrics(TokenGuard):
    """A token guard that allows /metrics and nothing else."""

    async def allowed(self, user: User, access: Access) -> bool:
        return access == PathAccess("/metrics")


def _app(guard: TokenGuard | LoopbackGuard) -> web.Application:
    context = ApiContext(guard)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def forgetful(_: web.Request) -> web.Response:
        return web.json_response({"secret": "leaked"})

    async def metrics(request: web.Request) -> web.Response:
        await context.require(request, PathAccess("/metrics"))
        return web.Response(text="metrics")

    async def fleet(request: web.Request) -> web.Response:
        access = ResourceAccess("get", "opampoperator.io", "collectorfleets", "obs", "f")
        await context.require(request, access)
        return web.Response(text="fleet")

    app = web.Application(middlewares=[guarded(guard)])
    app.router.add_get("/healthz", ok)
    app.router.add_get("/forgetful", forgetful)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/fleet", fleet)
    return app


async def test_probes_are_open_and_the_rest_needs_the_token() -> None:
    async with TestClient(TestServer(_app(OnlyMetrics("tok")))) as client:
        assert (await client.get("/healthz")).status == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
            response = await client.get("/metrics", headers=headers)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        ok = await client.get("/metrics", headers={"Authorization": "Bearer tok"})
        assert (ok.status, await ok.text()) == (200, "metrics")


async def test_a_refusal_names_the_missing_permission() -> None:
    async with TestClient(TestServer(_app(OnlyMetrics("tok")))) as client:
        response = await client.get("/fleet", headers={"Authorization": "Bearer tok"})
        assert response.status == 403
        assert (await response.json())["error"] == (
            "api-token cannot get collectorfleets.opampoperator.io f in namespace obs"
        )


async def test_a_handler_that_never_authorizes_is_answered_403() -> None:
    for guard in (OnlyMetrics("tok"), LoopbackGuard()):
        async with TestClient(TestServer(_app(guard))) as client:
            response = await client.get("/forgetful", headers={"Authorization": "Bearer tok"})
            assert response.status == 403
            assert "leaked" not in await response.text()


class Users:
    """Each bearer token is a user of its own name, allowed everything."""

    async def authenticate(self, request: web.Request) -> User | None:
        token = bearer_token(request)
        return None if token is None else User(token)

    async def allowed(self, user: User, access: Access) -> bool:
        return True


async def test_a_user_past_their_renders_in_flight_is_told_to_retry_and_others_are_not() -> None:
    context = ApiContext(Users())
    release = asyncio.Event()
    inside: asyncio.Queue[str] = asyncio.Queue()

    async def render(request: web.Request) -> web.Response:
        await context.require(request, PathAccess("/render"))
        async with context.rendering(request):
            inside.put_nowait(request.headers["Authorization"])
            await release.wait()
        return web.Response(text="rendered")

    app = web.Application(middlewares=[guarded(Users())])
    app.router.add_get("/render", render)
    alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
    async with TestClient(TestServer(app)) as client:
        held = [asyncio.create_task(client.get("/render", headers=alice)) for _ in range(2)]
        for _ in range(RENDERS_PER_USER):
            await inside.get()
        refused = await client.get("/render", headers=alice)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert "alice already has 2 config renders in flight" in await refused.text()
        other = asyncio.create_task(client.get("/render", headers=bob))
        assert await inside.get() == "Bearer bob"
        release.set()
        assert [r.status for r in await asyncio.gather(*held, other)] == [200, 200, 200]
        again = await client.get("/render", headers=alice)  # the slots were given back
        assert (again.status, await again.text()) == (200, "rendered")
