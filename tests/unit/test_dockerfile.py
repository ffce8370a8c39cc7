"""The image's Dockerfile, checked without a Docker engine (there is none here).

The static tests read the Dockerfile the way `docker build` does (line continuations,
comments, stages) and check what the image promises: two stages from a tagged
python:3.11-slim, a numeric non-root USER, no compilers in the final stage, the entry
point, ports, and the upb check. The world test runs the Dockerfile's own RUN commands,
taken from the file, in fresh venvs standing in for the stages (paths mapped, everything
else literal), so the install recipe is proved and not a copy of it. What only a machine
with Docker can check is listed in docs/gitops.md.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from world import binaries

REPO = binaries.REPO_ROOT
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UPB_CHECK = "from google.protobuf.internal import api_implementation"
# Caches and tools' state the walk over the repository skips (none is in the context).
SKIPPED = frozenset({".git", ".venv", ".mypy_cache", ".ruff_cache", ".hypothesis", ".pytest_cache"})
# The final stage's only writable place (read-only root filesystem).
TMP = "/tmp"  # noqa: S108
# RUN commands are bash; the image's /bin/sh is dash, which runs them the same.
BASH = shutil.which("bash") or "/bin/bash"
COMPILERS = ("gcc", "g++", "cc ", "clang", "build-essential", "make ", "rustc", "cargo")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV, in the `KEY=value` form this Dockerfile uses."""
        found: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.args):
                key, _, value = item.partition("=")
                found[key] = value
        return found


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]


def parse(text: str) -> Dockerfile:
    """Instructions as `docker build` sees them: comments dropped, `\\` joins lines, ARGs
    before the first FROM substituted into FROM lines."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2] or ""], words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


def test_two_stages_from_a_tagged_python_3_11_slim(dockerfile: Dockerfile) -> None:
    builder, final = dockerfile.stages
    assert builder.name == "builder"
    for stage in dockerfile.stages:
        image, _, tag = stage.base.partition("@")[0].rpartition(":")
        assert image == "python", stage.base
        assert tag.startswith("3.11"), stage.base
        assert tag.endswith("slim"), stage.base
        assert "latest" not in stage.base
    assert "pip wheel" in " ".join(r.args for r in builder.all("RUN"))
    # The final stage installs only what the builder made: from its wheels, offline.
    (install,) = final.all("RUN")
    assert "--mount=type=bind,from=builder" in install.args
    assert "--no-index" in install.args
    assert not final.all("COPY"), "the final stage takes nothing but the builder's wheels"


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    (user,) = final.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit(), user.args
    assert int(uid) != 0, user.args
    assert gid.isdigit(), user.args
    assert int(gid) != 0, user.args
    # Nothing runs after USER that would need root, and USER is the last word on identity.
    after = final.instructions[final.instructions.index(user) :]
    assert not [i for i in after if i.keyword == "RUN"]


def test_final_stage_has_no_build_tools(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    text = " ".join(i.args for i in final.instructions).lower() + " "
    for tool in COMPILERS:
        assert tool not in text, tool
    assert "apt-get" not in text
    assert "apk " not in text


def test_read_only_root_filesystem_friendly(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == TMP
    (install,) = final.all("RUN")
    assert "compileall" in install.args
    assert [w.args for w in final.all("WORKDIR")] == [TMP]
    assert not final.all("VOLUME")


def test_entrypoint_command_and_ports(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    assert [json.loads(i.args) for i in final.all("ENTRYPOINT")] == [["opamp-operator"]]
    assert [json.loads(i.args) for i in final.all("CMD")] == [["run"]]
    ports = {p for i in final.all("EXPOSE") for p in i.args.split()}
    assert ports == {"4320", "9443"}


def test_build_fails_unless_protobuf_runs_on_upb(dockerfile: Dockerfile) -> None:
    (install,) = dockerfile.stages[-1].all("RUN")
    command = next(c for c in _commands(install.args) if UPB_CHECK in c)
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


def test_dockerignore_lets_in_exactly_what_copy_needs(dockerfile: Dockerfile) -> None:
    sources = {
        word.rstrip("/")
        for copy in dockerfile.stages[0].all("COPY")
        for word in shlex.split(copy.args)[:-1]
    }
    assert sources == {"pyproject.toml", "README.md", "src"}
    assert _context_files() == sorted(
        p.relative_to(REPO).as_posix()
        for p in [REPO / "pyproject.toml", REPO / "README.md", *(REPO / "src").rglob("*")]
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def _commands(run: str) -> list[str]:
    """The `&&`-joined commands of a RUN, its --mount flags dropped."""
    words = run.split(" ")
    while words and (words[0].startswith("--") or not words[0]):
        words.pop(0)
    return [c.strip() for c in " ".join(words).split(" && ")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns this repository uses: the last matching
    pattern wins, `!` re-includes, a directory pattern covers what is under it."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        prefixes = [path] + ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
        for candidate in prefixes:
            base = candidate.rsplit("/", 1)[-1]
            if fnmatch.fnmatch(candidate, pat) or (
                pat.startswith("**/") and fnmatch.fnmatch(base, pat[3:])
            ):
                ignored = not negate
                break
    return ignored


def _context_files() -> list[str]:
    """Files of the repository the build context receives under .dockerignore."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    found = []
    for top, dirs, files in os.walk(REPO):
        if Path(top) == REPO:
            dirs[:] = [d for d in dirs if d not in SKIPPED]
        for name in files:
            rel = (Path(top) / name).relative_to(REPO).as_posix()
            if not _ignored(rel, patterns):
                found.append(rel)
    return sorted(found)


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


@pytest.mark.world
def test_the_dockerfile_recipe_builds_installs_and_runs(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    """Each stage's RUN commands from the Dockerfile, in a fresh venv standing in for the
    image's Python: /src is a copy of the build context, /wheels a temp dir, the image's
    /usr/local/lib/python3.11 the venv's lib dir. Needs PyPI (build backend and the
    dependencies' wheels)."""
    builder, final = dockerfile.stages
    context = tmp_path / "context"
    for rel in _context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    wheels = tmp_path / "wheels"
    home = tmp_path / "home"
    home.mkdir()

    def stage_env(stage: Stage, bindir: Path) -> dict[str, str]:
        env = {**os.environ, **stage.env(), "HOME": str(home)}
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        env["PATH"] = f"{bindir}:{os.environ['PATH']}"
        return env

    def mapped(run: Instruction, lib: Path | None = None) -> list[str]:
        commands = []
        for command in _commands(run.args):
            local = command.replace("/wheels", str(wheels))
            if lib is not None:
                local = local.replace("/usr/local/lib/python3.11", str(lib))
            commands.append(local)
        return commands

    build_bin = _fresh_venv(tmp_path / "builder")
    for run in builder.all("RUN"):
        _run_stage(mapped(run), stage_env(builder, build_bin), context)
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(name.startswith("opamp_operator-") for name in built), built
    assert any(name.startswith("protobuf-") for name in built), built

    final_root = tmp_path / "final"
    final_bin = _fresh_venv(final_root)
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
