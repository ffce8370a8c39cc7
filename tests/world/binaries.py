"""Where the test world's binaries are: the cache scripts/test-deps fills, or envtest's assets."""

from __future__ import annotations

import os
import subprocess
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


VERSIONS_ENV = REPO_ROOT / "test-deps" / "versions.env"

# The Collector builds scripts/test-deps makes from one manifest (test-deps/otelcol-builder.yaml,
# the same modules): binary -> the line of versions.env naming the version OCB stamps it
# with (dist.version), which is the service.version it reports.
COLLECTOR_BUILDS = {
    "otelcol-opamp": "OTELCOL_VERSION",
    "otelcol-opamp-next": "OTELCOL_NEXT_VERSION",
}


def pin(name: str) -> str:
    """The value of the line `name=...` of test-deps/versions.env, e.g. "v0.149.0"."""
    for line in VERSIONS_ENV.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name and not key.lstrip().startswith("#"):
            return value.strip()
    raise KeyError(f"{name} is not pinned in {VERSIONS_ENV}")


def collector_version(binary: str) -> str:
    """The service.version the test world's Collector `binary` is built to report."""
    return pin(COLLECTOR_BUILDS[binary]).removeprefix("v")


def reported_collector_version(binary: str) -> str:
    """What the built Collector `binary` says its version is (`--version`)."""
    out = subprocess.run(
        [find(binary), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    # OCB's binaries print "<dist.name> version <dist.version>".
    return out.rsplit(" version ", 1)[-1]
