"""The image's Dockerfile, checked without a Docker engine (there is none here) and
without running anything: read the way `docker build` reads it (world/dockerfile.py), it
keeps what the image promises: two stages from a tagged python:3.11-slim, a numeric
non-root USER, no compilers in the final stage, the entry point, ports, the upb check, and
a .dockerignore that lets in exactly what COPY needs. The Dockerfile's own RUN commands run
in the tools tier (tests/tools/test_dockerfile_recipe.py). What only a machine with Docker
can check is listed in docs/gitops.md.
"""

from __future__ import annotations

import json
import shlex

import pytest

from world.dockerfile import (
    DOCKERFILE,
    REPO,
    UPB_CHECK,
    Dockerfile,
    commands,
    context_files,
    parse,
)

# The final stage's only writable place (read-only root filesystem).
TMP = "/tmp"  # noqa: S108
COMPILERS = ("gcc", "g++", "cc ", "clang", "build-essential", "make ", "rustc", "cargo")


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


def test_dockerignore_lets_in_exactly_what_copy_needs(dockerfile: Dockerfile) -> None:
    sources = {
        word.rstrip("/")
        for copy in dockerfile.stages[0].all("COPY")
        for word in shlex.split(copy.args)[:-1]
    }
    assert sources == {"pyproject.toml", "README.md", "src"}
    assert context_files() == sorted(
        p.relative_to(REPO).as_posix()
        for p in [REPO / "pyproject.toml", REPO / "README.md", *(REPO / "src").rglob("*")]
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def test_the_upb_check_is_part_of_the_final_install(dockerfile: Dockerfile) -> None:
    """The build fails unless protobuf runs on upb: the check is one of the install's
    commands (the tools tier runs it, tests/tools/test_dockerfile_recipe.py)."""
    (install,) = dockerfile.stages[-1].all("RUN")
    assert any(UPB_CHECK in c for c in commands(install.args))
