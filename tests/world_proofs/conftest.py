"""Fixtures shared by the proof tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from world.collector import ReferenceServer, start_reference_server


@pytest.fixture
def offered(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test module's OFFERED config, in a file opamp-go's server offers (and re-reads
    on SIGHUP)."""
    path = tmp_path / "offered.yaml"
    path.write_text(request.module.OFFERED)
    return path


@pytest.fixture
def reference_server(offered: Path) -> Iterator[ReferenceServer]:
    """opamp-go's reference server offering the module's OFFERED config."""
    with start_reference_server(offered) as server:
        yield server
