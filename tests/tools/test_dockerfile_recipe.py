"""The Dockerfile's own RUN commands, taken from the file (world/dockerfile.py), run in
fresh venvs standing in for the stages (paths mapped, everything else literal), so the
install recipe is proved and not a copy of it; and its upb check, run. Starts processes
and needs PyPI: the tools tier."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from world import binaries
from world.dockerfile import (
    DOCKERFILE,
    REPO,
    UPB_CHECK,
    Dockerfile,
    Instruction,
    Stage,
    commands,
    context_files,
    parse,
)

# RUN commands are bash; the image's /bin/sh is dash, which runs them the same.
BASH = shutil.which("bash") or "/bin/bash"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


def test_build_fails_unless_protobuf_runs_on_upb(dockerfile: Dockerfile) -> None:
    (install,) = dockerfile.stages[-1].all("RUN")
    command = next(c for c in commands(install.args) if UPB_CHECK in c)
    program = shlex.split(command)[2]
    # The same program, run here: it exits 0 on upb and 1 on anything else.
    ok = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "upb" in ok.stdout
    forced = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"},
    )
    assert forced.returncode == 1, forced.stdout + forced.stderr


def _fresh_venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / "bin"


def _run_stage(commands: list[str], env: dict[str, str], cwd: Path) -> None:
    for command in commands:
        done = subprocess.run(
            [BASH, "-euo", "pipefail", "-c", command],
            cwd=cwd,
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_the_dockerfile_recipe_builds_installs_and_runs(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    """Each stage's RUN commands from the Dockerfile, in a fresh venv standing in for the
    image's Python: /src is a copy of the build context, /wheels a temp dir, the image's
    /usr/local/lib/python3.11 the venv's lib dir. Needs PyPI (build backend and the
    dependencies' wheels)."""
    builder, final = dockerfile.stages
    context = tmp_path / "context"
    for rel in context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    wheels = tmp_path / "wheels"
    home = tmp_path / "home"
    home.mkdir()

    def stage_env(stage: Stage, bindir: Path) -> dict[str, str]:
        env = {**os.environ, **stage.env(), "HOME": str(home)}
        # Downloads kept between runs (what pip fetched is the same files either way); the
        # image build has no such cache, and nothing else of it is shared.
        env["PIP_CACHE_DIR"] = str(binaries.cache_dir() / "pip")
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        env["PATH"] = f"{bindir}:{os.environ['PATH']}"
        return env

    def mapped(run: Instruction, lib: Path | None = None) -> list[str]:
        found = []
        for command in commands(run.args):
            local = command.replace("/wheels", str(wheels))
            if lib is not None:
                local = local.replace("/usr/local/lib/python3.11", str(lib))
            found.append(local)
        return found

    final_root = tmp_path / "final"
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The final stage's base (a fresh venv, ~5 s of ensurepip) owes nothing to the
        # builder: it is made while the builder's pip waits on PyPI.
        final_venv = pool.submit(_fresh_venv, final_root)
        build_bin = _fresh_venv(tmp_path / "builder")
        for run in builder.all("RUN"):
            _run_stage(mapped(run), stage_env(builder, build_bin), context)
        final_bin = final_venv.result()
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(name.startswith("opamp_operator-") for name in built), built
    assert any(name.startswith("protobuf-") for name in built), built

    (lib,) = (final_root / "lib").glob("python3.*")
    (run,) = final.all("RUN")
    _run_stage(mapped(run, lib), stage_env(final, final_bin), tmp_path)

    # Every module the entry point imports was compiled at build time: running it with
    # bytecode writing allowed leaves the tree unchanged, so a read-only root loses nothing.
    before = _tree(final_root)
    env = stage_env(final, final_bin)
    env.pop("PYTHONDONTWRITEBYTECODE")
    help_text = subprocess.run(
        [str(final_bin / "opamp-operator"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "run" in help_text
    assert "serve" in help_text
    subprocess.run(
        [str(final_bin / "python"), "-c", "import opamp_operator.k8s.run, kopf, kubernetes"],
        env=env,
        check=True,
    )
    assert _tree(final_root) - before == set()
    backend = subprocess.run(
        [str(final_bin / "python"), "-c", f"{UPB_CHECK}; print(api_implementation.Type())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert backend == "upb"
