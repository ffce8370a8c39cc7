"""Where the test world's binaries are: the cache scripts/test-deps fills, or envtest's assets."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# setup-envtest ships exactly these; everything else comes from our own build.
ENVTEST_BINARIES = frozenset({"etcd", "kube-apiserver", "kubectl"})


class MissingBinaryError(RuntimeError):
    """A component of the test world is not built; the message says how to build it."""


def cache_dir() -> Path:
    override = os.environ.get("OPAMP_OPERATOR_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "opamp-operator"


def bin_dir() -> Path:
    return cache_dir() / "bin"


def find(name: str) -> Path:
    """Return the executable `name`, preferring KUBEBUILDER_ASSETS for envtest's binaries."""
    candidates: list[Path] = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and name in ENVTEST_BINARIES:
        candidates.append(Path(assets) / name)
    candidates.append(bin_dir() / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise MissingBinaryError(
        f"{name} is not built (looked in {looked}). Run `scripts/test-deps` from the repository "
        "root to build the test world; it caches into $OPAMP_OPERATOR_CACHE "
        "(default ~/.cache/opamp-operator)."
    )
