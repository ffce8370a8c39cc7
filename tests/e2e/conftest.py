"""The e2e module's target (world/e2e.py): the local cluster by default, a kind cluster
under scripts/kind-e2e (OPAMP_E2E_TARGET=kind)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from world.e2e import Target, kind_target, local_target, target_name


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("e2e")
    if target_name() == "kind":
        yield from kind_target(workdir)
    else:
        yield from local_target(request.getfixturevalue("cluster"), workdir)
