"""The Collector image scripts/kind-e2e builds (deploy/kind/collector/Dockerfile) cannot be
built here (no Docker). What it depends on is checked instead: the binaries the script
stages are the ones the Dockerfile copies, they are the test world's, statically linked
(the distroless/static base has no libc), and the paths the e2e fleet names exist in it."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from world import binaries
from world.e2e import AGENT_EXECUTABLE

pytestmark = pytest.mark.world

DOCKERFILE = binaries.REPO_ROOT / "deploy" / "kind" / "collector" / "Dockerfile"
SCRIPT = binaries.REPO_ROOT / "scripts" / "kind-e2e"
PT_INTERP = 3


def _copied() -> tuple[list[str], str]:
    """(sources, destination) of the Dockerfile's one COPY."""
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("COPY ")]
    words = [w for w in line.split()[1:] if not w.startswith("--")]
    return words[:-1], words[-1]


def _interpreter(path: Path) -> bool:
    """Whether an ELF64 little-endian executable asks for a dynamic loader (PT_INTERP)."""
    data = path.read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", path
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert types, path
    return PT_INTERP in types


def test_the_dockerfile_copies_what_the_script_stages() -> None:
    sources, destination = _copied()
    staging = r'cp "\$BIN/([\w-]+)" "\$BIN/([\w-]+)" "\$WORK/collector/"'
    staged = re.search(staging, SCRIPT.read_text())
    assert staged is not None
    assert sorted(sources) == sorted(staged.groups())
    assert destination == "/"
    assert f"/{Path(AGENT_EXECUTABLE).name}" == AGENT_EXECUTABLE
    assert Path(AGENT_EXECUTABLE).name in sources
    assert 'ENTRYPOINT ["/opampsupervisor"]' in DOCKERFILE.read_text()
    assert "gcr.io/distroless/static" in DOCKERFILE.read_text()


@pytest.mark.parametrize("name", _copied()[0])
def test_the_staged_binaries_are_static_and_run(name: str) -> None:
    path = binaries.find(name)
    assert not _interpreter(path), f"{path} is dynamically linked; distroless/static has no libc"
    done = subprocess.run(
        [str(path), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_elf_check_can_tell_a_dynamic_executable() -> None:
    assert _interpreter(Path("/bin/sh"))
