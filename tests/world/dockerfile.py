"""The image's Dockerfile and .dockerignore read the way `docker build` reads them, for
the static checks (tests/unit/test_dockerfile.py) and the recipe run
(tests/tools/test_dockerfile_recipe.py)."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from world import binaries

REPO = binaries.REPO_ROOT
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UPB_CHECK = "from google.protobuf.internal import api_implementation"
# Caches and tools' state the walk over the repository skips (none is in the context).
SKIPPED = frozenset({".git", ".venv", ".mypy_cache", ".ruff_cache", ".hypothesis", ".pytest_cache"})


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


def commands(run: str) -> list[str]:
    """The `&&`-joined commands of a RUN, its --mount flags dropped."""
    words = run.split(" ")
    while words and (words[0].startswith("--") or not words[0]):
        words.pop(0)
    return [c.strip() for c in " ".join(words).split(" && ")]


def ignored(path: str, patterns: list[str]) -> bool:
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


def context_files() -> list[str]:
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
            if not ignored(rel, patterns):
                found.append(rel)
    return sorted(found)
