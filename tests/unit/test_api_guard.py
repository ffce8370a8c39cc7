"""The API listener's guard (server/api.py) in process: probes open, everything else
authenticated, a handler that forgets to authorize answers 403 (fail closed), refusals
name what is missing."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from opamp_operator.server.api import (
    Access,
    ApiContext,
    LoopbackGuard,
    PathAccess,
    ResourceAccess,
    TokenGuard,
    User,
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
