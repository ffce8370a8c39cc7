"""`scripts/dev-cluster up|down|status|kubeconfig`: the test world's cluster, kept running
for a developer between commands."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from world import binaries
from world.cluster import STATE_FILE, LocalCluster
from world.processes import StartupError


def default_dir() -> Path:
    override = os.environ.get("OPAMP_DEV_CLUSTER_DIR")
    return Path(override) if override else binaries.cache_dir() / "dev-cluster"


def _exports(cluster: LocalCluster) -> None:
    """The shell lines `eval "$(scripts/dev-cluster up)"` runs: `opamp-operator` and
    `kubectl-opamp` (the virtualenv this runs in) and `kubectl` (the test world) on PATH,
    then KUBECONFIG (last: scripts read it from the last line)."""
    dirs = [Path(sys.executable).parent, binaries.find("kubectl").parent]
    print(f'export PATH={":".join(shlex.quote(str(d)) for d in dirs)}:"$PATH"')
    print(f"export KUBECONFIG={cluster.kubeconfig}")


def _attached(workdir: Path) -> LocalCluster | None:
    return LocalCluster.attach(workdir) if (workdir / STATE_FILE).exists() else None


def up(workdir: Path, nodes: int) -> int:
    existing = _attached(workdir)
    if existing is not None:
        if all(p.alive() for p in existing.processes):
            print(f"already running: {existing.server}", file=sys.stderr)
            _exports(existing)
            return 0
        print("a previous dev cluster died; cleaning it up", file=sys.stderr)
        existing.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        cluster = LocalCluster(workdir=workdir, nodes=nodes).start()
    except StartupError as exc:
        print(f"dev cluster failed to start: {exc}", file=sys.stderr)
        print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
        return 1
    print(
        f"dev cluster up: {cluster.server}, {nodes} kwok nodes, logs in {cluster.log_dir}",
        file=sys.stderr,
    )
    print(f"kubectl: {binaries.find('kubectl')}", file=sys.stderr)
    print('to use it from this shell: eval "$(scripts/dev-cluster up)"', file=sys.stderr)
    _exports(cluster)
    return 0


def down(workdir: Path) -> int:
    cluster = _attached(workdir)
    if cluster is None:
        print("no dev cluster is running", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    cluster.stop(remove=True)
    print("dev cluster stopped", file=sys.stderr)
    return 0


def status(workdir: Path) -> int:
    cluster = _attached(workdir)
    if cluster is None:
        print("no dev cluster is running")
        return 3
    report = {
        "server": cluster.server,
        "kubeconfig": str(cluster.kubeconfig),
        "processes": {
            p.name: {"pid": p.pid, "alive": p.alive(), "log": p.log} for p in cluster.processes
        },
    }
    try:
        report["readyz"] = cluster.admin_rest().request("GET", "/readyz")
    except OSError as exc:
        report["readyz"] = f"unreachable: {exc}"
    print(json.dumps(report, indent=2))
    healthy = report["readyz"] == "ok" and all(p.alive() for p in cluster.processes)
    return 0 if healthy else 1


def kubeconfig(workdir: Path) -> int:
    cluster = _attached(workdir)
    if cluster is None:
        print("no dev cluster is running; run `scripts/dev-cluster up`", file=sys.stderr)
        return 3
    print(cluster.kubeconfig)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dev-cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig"])
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="state and data directory (default: $OPAMP_DEV_CLUSTER_DIR or <cache>/dev-cluster)",
    )
    parser.add_argument("--nodes", type=int, default=3, help="kwok nodes to create (up)")
    args = parser.parse_args(argv)
    workdir: Path = args.dir or default_dir()
    if args.command == "up":
        return up(workdir, args.nodes)
    if args.command == "down":
        return down(workdir)
    if args.command == "status":
        return status(workdir)
    return kubeconfig(workdir)


if __name__ == "__main__":
    sys.exit(main())
