"""A staged ConfigRollout over one CollectorFleet of N simulated agents, under
`opamp-operator run` on the test world's cluster: how long each step takes from its start
to the gate verdict, the whole rollout, and the operator's Kubernetes API writes per step.

The world is fleet_scale.py's (audited apiserver, N kwok pods, the operator and
`opamp-operator simulate` as processes); once every agent runs config v1, a ConfigRollout
with `--steps` (default 1%, 10%, 50%, 100%; no pauses, no bake) governs the fleet, the
fleet's config changes to v2, and the rollout's status is polled every 0.2 s until it
says Succeeded. Step boundaries are the poll times at which `status.currentStep` moved
(and the one at which the phase turned Succeeded); the audit log gives the operator's
requests inside each.

    .venv/bin/python benchmarks/rollout_scale.py --agents 10000

With --package the rollout stages a version change instead: the agents accept packages
(`simulate --accept-packages`) and start reporting service.version 1.0.0; the fleet is
created with spec.version 1.0.0 and a package of that version, which every agent
downloads and installs before the rollout is created (so the stable revision names a
package); then spec.version changes to 2.0.0 with a new file (`--package-bytes`, random
bytes, its SHA-256 correct), the config unchanged. Both files are served over plain HTTP
on loopback by the test world's PackageFiles (tests/world/collector.py), which counts the
requests: per step the cumulative 2.0.0 downloads it served and the installs the
simulator counted, and at the end the simulator's download and install totals.

    .venv/bin/python benchmarks/rollout_scale.py --agents 1000 --package
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet_scale import (
    FLEET,
    AuditedCluster,
    Bench,
    FleetSeen,
    Results,
    config,
    config_hash,
    fleets_path,
    log,
    read_audit,
    run_in_world,
    tally,
)

import opamp_operator
from opamp_operator.api.models import API_VERSION, GROUP, VERSION, FleetVersion
from opamp_operator.fleet.versions import revision_hash
from world.collector import PackageFiles

ROLLOUT = "collectors"
STABLE_VERSION, NEW_VERSION = "1.0.0", "2.0.0"


def package_path(version: str) -> str:
    return f"/otelcol-{version}.bin"


def rollout_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/configrollouts"
    return f"{base}/{name}" if name else base


@dataclass
class StepResult:
    step: int
    size: str  # as the spec says it
    offered: int  # members once the step passed
    seconds: float  # from the poll that saw it start to the poll that saw it pass
    api_writes: int
    writes_by: dict[str, int]
    # --package: at the poll that saw the step pass, the new version's files the file
    # server had been asked for and the agents the simulator had seen install it, since
    # the patch (cumulative; None without --package)
    downloads: int | None = None
    installed: int | None = None


@dataclass
class RolloutResults:
    fleet: Results
    steps: list[StepResult] = field(default_factory=list)
    total_s: float = 0.0  # config patch -> status says Succeeded
    first_step_s: float = 0.0  # config patch -> the rollout saw the new revision
    sim_all_applied_s: float | None = None
    rollout_bytes: int = 0
    phases_seen: list[str] = field(default_factory=list)
    total_writes: int = 0
    before_first_step: dict[str, int] = field(default_factory=dict)  # writes, by kind
    events: dict[str, int] = field(default_factory=dict)  # since the patch, "Kind: reason"
    package: dict[str, Any] = field(default_factory=dict)  # --package only


class RolloutBench(Bench):
    def __init__(self, cluster: AuditedCluster, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(cluster, args, workdir)
        self.files: PackageFiles | None = None
        self.versions: dict[str, dict[str, Any]] = {}  # spec.version of each, --package
        # at each step mark (poll time): (new version's files served, installs seen)
        self.at_marks: dict[float, tuple[int | None, int | None]] = {}
        self.sim_offset = 0.0  # Unix time of the simulator's t=0
        if args.package:
            payloads = {v: os.urandom(args.package_bytes) for v in (STABLE_VERSION, NEW_VERSION)}
            self.files = PackageFiles({package_path(v): b for v, b in payloads.items()})
            for v, body in payloads.items():
                package = {
                    "url": self.files.url(package_path(v)),
                    "sha256": PackageFiles.sha256(body),
                }
                self.versions[v] = {"expected": v, "package": package}

    # ---- the hooks of Bench, for --package -------------------------------------------

    def fleet_spec(self) -> dict[str, Any]:
        spec = super().fleet_spec()
        if self.files is not None:
            spec["version"] = self.versions[STABLE_VERSION]
        return spec

    def simulator_flags(self) -> list[str]:
        if self.files is None:
            return []
        flags = ["--accept-packages", f"--service-version={STABLE_VERSION}"]
        if self.args.package_downloads is not None:
            flags.append(f"--package-downloads={self.args.package_downloads}")
        return flags

    def first_hash(self) -> str:
        return self.revision(STABLE_VERSION) if self.files is not None else super().first_hash()

    def revision(self, version: str) -> str:
        """The revision hash of config v1 with the package of `version`."""
        offer = FleetVersion.model_validate(self.versions[version]).offer()
        return revision_hash(config_hash(config(1)), offer)

    def served(self, version: str) -> Counter[int]:
        """The file server's answers (HTTP status) to requests for `version`'s file."""
        assert self.files is not None
        path = package_path(version)
        return Counter(d.status for d in list(self.files.downloads) if d.path == path)

    def installed(self, version: str) -> int:
        """Agents that installed `version`, in the simulator's latest progress line."""
        assert self.sim is not None
        for p in reversed(self.sim.progress):
            if p.package == version:
                return p.installed
        return 0

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.files is not None:
                self.files.stop()

    # ---- the run -----------------------------------------------------------------------

    async def wait_stable_package(self) -> None:
        """Until every agent installed the stable version's package (in the simulator's
        progress line), so no download of it falls into the measured rollout."""
        t = time.time()
        deadline = time.monotonic() + self.args.timeout
        while self.installed(STABLE_VERSION) < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{STABLE_VERSION} not installed by {self.n} agents")
            self.alive()
            await asyncio.sleep(0.5)
        self.results.setup_s["stable_package_installed"] = round(time.time() - t, 1)
        log(f"{self.n} agents installed {STABLE_VERSION}, {dict(self.served(STABLE_VERSION))}")

    async def run_rollout(self) -> RolloutResults:
        out = RolloutResults(self.results)
        try:
            await self.make_pods()
            await self.start_operator_and_fleet()
            await self.connect_agents()
            if self.files is not None:
                await self.wait_stable_package()
            steps = [{"percent": float(p)} for p in self.args.steps]
            await self.kube.call(
                "POST",
                rollout_path(self.ns),
                {
                    "apiVersion": API_VERSION,
                    "kind": "ConfigRollout",
                    "metadata": {"name": ROLLOUT},
                    "spec": {"fleetRef": {"name": FLEET}, "steps": steps},
                },
            )
            await self.poll(lambda s: s.get("phase") == "Succeeded", "the rollout adopted v1")
            await asyncio.sleep(self.interval * 2)
            if self.files is not None:
                desired = self.revision(NEW_VERSION)
                change: dict[str, Any] = {"version": self.versions[NEW_VERSION]}
                self.results.load.append(("before the version change", os.getloadavg()))
            else:
                text = config(2)
                desired = config_hash(text)
                change = {"config": {"inline": text}}
            t0 = time.time()
            await self.kube.call(
                "PATCH",
                fleets_path(self.ns, FLEET),
                {"spec": change},
                content_type="application/merge-patch+json",
            )
            marks, final = await self.drive(t0, len(steps), desired, out)
            log(f"rollout Succeeded {out.total_s:.2f} s after the patch")
            _, raw = await self.kube.call("GET", rollout_path(self.ns, ROLLOUT))
            out.rollout_bytes = len(raw)
            out.events = await self.events_since(t0)
            await asyncio.sleep(2.0)
            if self.files is not None:
                out.package = await self.package_figures(t0)
            self.stop_simulator()
            self.stop_operator()
            await asyncio.sleep(1.0)
            audit = read_audit(self.cluster.audit_log)
            counts = final.get("steps") or []
            if self.files is not None:
                out.package.update(self.simulator_packages(t0))
            for (start, step), (end, _) in itertools.pairwise(marks):
                api = tally(audit, start, end)
                out.steps.append(
                    StepResult(
                        step=step,
                        size=f"{self.args.steps[step]:g}%",
                        offered=int((counts[step] if step < len(counts) else {}).get("offered", 0)),
                        seconds=round(end - start, 2),
                        api_writes=api["writes"],
                        writes_by=api["writes_by"],
                        downloads=self.at_marks.get(end, (None, None))[0],
                        installed=self.at_marks.get(end, (None, None))[1],
                    )
                )
            out.total_writes = tally(audit, t0, marks[-1][0])["writes"]
            out.before_first_step = tally(audit, t0, marks[0][0])["writes_by"]
            self.results.run_api = tally(audit, 0, time.time())
            return out
        finally:
            await self.close()

    async def events_since(self, t0: float) -> dict[str, int]:
        """The namespace's Events first emitted since `t0`, by object kind and reason."""
        listed = await self.kube.get(f"/api/v1/namespaces/{self.ns}/events")
        counts: Counter[str] = Counter()
        for e in listed["items"]:
            first = e.get("firstTimestamp") or e.get("eventTime") or ""
            when = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp() if first else 0
            if when >= int(t0):  # Event times are whole seconds
                counts[f"{e['involvedObject'].get('kind')}: {e.get('reason')}"] += 1
        return dict(counts.most_common())

    async def package_figures(self, t0: float) -> dict[str, Any]:
        """Once the rollout Succeeded (the simulator still running): when the fleet's
        status first said every agent runs the new version (it is written at most every
        status interval), what it says then, and the file server's counts."""

        def up_to_date(seen: FleetSeen) -> bool:
            s = seen.status
            return (
                seen.at >= t0
                and s.get("targetVersion") == NEW_VERSION
                and s.get("agentsOutdated") == 0
                and s.get("packageInstalling") == 0
                and s.get("agentsConnected") == self.n
            )

        seen = await self.wait(f"fleet status: {self.n} agents on {NEW_VERSION}", up_to_date)
        status = seen.status
        return {
            "fleet_up_to_date_s": round(seen.at - t0, 2),
            "bytes": self.args.package_bytes,
            "served": {
                v: {str(k): n for k, n in self.served(v).items()}
                for v in (STABLE_VERSION, NEW_VERSION)
            },
            "fleet_versions": status.get("versions"),
            "fleet_agents_outdated": status.get("agentsOutdated"),
            "fleet_package_failed": status.get("packageFailed"),
            "fleet_package_installing": status.get("packageInstalling"),
        }

    def simulator_packages(self, t0: float) -> dict[str, Any]:
        """From the simulator's summary (stop_simulator has read it): downloads, installs,
        and per version who was offered and installed it, times from the patch."""
        summary_path = self.workdir / "simulator-summary.json"
        text = summary_path.read_text().strip() if summary_path.exists() else ""
        if not text:
            return {}
        summary = json.loads(text.splitlines()[-1])
        offset = self.sim_offset
        return {
            "sim_downloads": summary.get("package_downloads"),
            "sim_download_bytes": summary.get("package_download_bytes"),
            "sim_installs": summary.get("packages_installed"),
            "sim_install_failures": summary.get("package_install_failures"),
            "sim_errors": summary.get("errors"),
            "sim_packages": [
                {
                    **p,
                    "first_offer_after_patch_s": (
                        round(offset + p["first_offer_s"] - t0, 2) if offset else None
                    ),
                    "all_installed_after_patch_s": (
                        round(offset + p["first_offer_s"] + p["all_installed_s"] - t0, 2)
                        if offset and p.get("all_installed_s") is not None
                        else None
                    ),
                }
                for p in summary.get("packages") or []
            ],
        }

    def stop_simulator(self) -> None:
        if self.sim is not None and self.sim.progress:
            self.sim_offset = self.sim.clock_offset
        super().stop_simulator()

    async def drive(
        self, t0: float, n_steps: int, desired: str, out: RolloutResults
    ) -> tuple[list[tuple[float, int]], dict[str, Any]]:
        """Poll the rollout until Succeeded; (poll time, step) at each step start, and
        the final status."""
        marks: list[tuple[float, int]] = []  # (poll time, step) at each step start
        seen_step = -1
        while True:
            status = await self.status()
            now = time.time()
            phase = str(status.get("phase"))
            if not out.phases_seen or out.phases_seen[-1] != phase:
                out.phases_seen.append(phase)
            if status.get("desiredHash") == desired:
                if not out.first_step_s:
                    out.first_step_s = round(now - t0, 2)
                step = int(status.get("currentStep") or 0)
                if status.get("stepArmed") and step != seen_step:
                    marks.append((now, step))
                    self.mark_packages(now)
                    seen_step = step
                    log(f"step {step} started {now - t0:.2f} s after the patch")
                if phase == "Succeeded":
                    marks.append((now, n_steps))
                    self.mark_packages(now)
                    out.total_s = round(now - t0, 2)
                    final = status
                    break
                if phase in ("Failed", "RolledBack", "Aborted"):
                    raise RuntimeError(f"the rollout ended {phase}: {status.get('message')}")
            if now - t0 > self.args.timeout:
                raise TimeoutError(f"no Succeeded within {self.args.timeout:.0f} s")
            self.alive()
            await asyncio.sleep(0.2)
        return marks, final

    def mark_packages(self, now: float) -> None:
        if self.files is not None:
            self.at_marks[now] = (
                sum(self.served(NEW_VERSION).values()),
                self.installed(NEW_VERSION),
            )

    async def status(self) -> dict[str, Any]:
        got = await self.kube.get(rollout_path(self.ns, ROLLOUT))
        return dict(got.get("status") or {})

    async def poll(self, check: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            status = await self.status()
            if check(status):
                return status
            self.alive()
            await asyncio.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}")


def print_report(r: RolloutResults, args: argparse.Namespace) -> None:
    m = r.fleet.machine
    what = (
        f"version {STABLE_VERSION} → {NEW_VERSION} by package ({args.package_bytes} bytes)"
        if args.package
        else "config v1 → v2"
    )
    print(
        f"\n{m['host']} · {m['cores']} cores · Python {m['python']} · kopf {m['kopf']} · "
        f"{m['kube_apiserver']} · {m['commit']} · {m['date']} · {r.fleet.agents} agents · "
        f"steps {', '.join(f'{p:g}%' for p in args.steps)} · no pauses, no bake · {what}"
    )
    print(f"opamp_operator from {Path(opamp_operator.__file__).parent}")
    if args.package:
        print("load average (1/5/15 min): " + "; ".join(f"{w}: {la}" for w, la in r.fleet.load))
        print("setup (s): " + ", ".join(f"{k} {v}" for k, v in r.fleet.setup_s.items()))
    change = "version patch" if args.package else "config patch"
    print(
        f"\n{change} → rollout took the new revision: {r.first_step_s} s; "
        f"→ Succeeded: {r.total_s} s; operator API writes in all: {r.total_writes}"
    )
    if args.package:
        print(
            "\n| step | size | members | start → gate verdict (s) | operator API writes | "
            f"{NEW_VERSION} downloads served (cumulative) | installs seen by the simulator "
            "(cumulative) |"
        )
        print("|---|---|---|---|---|---|---|")
    else:
        print("\n| step | size | members | start → gate verdict (s) | operator API writes |")
        print("|---|---|---|---|---|")
    for s in r.steps:
        writes = ", ".join(f"{v} {k}" for k, v in s.writes_by.items()) or "none"
        row = f"| {s.step + 1} | {s.size} | {s.offered} | {s.seconds} | {s.api_writes} ({writes}) |"
        if args.package:
            row += f" {s.downloads} | {s.installed} |"
        print(row)
    before = ", ".join(f"{v} {k}" for k, v in r.before_first_step.items()) or "none"
    print(f"\noperator API writes from the patch until step 1 started: {before}")
    print(f"Events since the patch: {r.events}")
    print(f"phases seen: {' → '.join(r.phases_seen)}")
    print(f"rollout object: {r.rollout_bytes} bytes")
    print(f"simulator: {r.fleet.simulator}")
    if args.package:
        p = r.package
        print(f"file server, answers by HTTP status: {p.get('served')}")
        print(
            f"simulator: downloads {p.get('sim_downloads')}, bytes {p.get('sim_download_bytes')}, "
            f"installs {p.get('sim_installs')}, install failures {p.get('sim_install_failures')}, "
            f"errors {p.get('sim_errors')}"
        )
        for pkg in p.get("sim_packages") or []:
            print(
                f"  package {pkg['version']}: offered to {pkg['offered']} agents, installed by "
                f"{pkg['installed']}, failed {pkg['failed']}; first offer "
                f"{pkg['first_offer_after_patch_s']} s and all installed "
                f"{pkg['all_installed_after_patch_s']} s after the patch"
            )
        print(
            f"fleet status said every agent runs {NEW_VERSION} "
            f"{p.get('fleet_up_to_date_s')} s after the patch: versions "
            f"{p.get('fleet_versions')}, agentsOutdated "
            f"{p.get('fleet_agents_outdated')}, packageInstalling "
            f"{p.get('fleet_package_installing')}, packageFailed {p.get('fleet_package_failed')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument(
        "--steps", type=float, nargs="+", default=[1.0, 10.0, 50.0, 100.0], help="percentages"
    )
    parser.add_argument("--status-interval", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--namespace", default="rollout-scale")
    parser.add_argument("--pod-prefix", default="collector")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--package",
        action="store_true",
        help=f"stage a version change ({STABLE_VERSION} → {NEW_VERSION}, by package) instead "
        "of a config change",
    )
    parser.add_argument(
        "--package-bytes", type=int, default=100_000, help="size of each package file"
    )
    parser.add_argument(
        "--package-downloads",
        type=int,
        default=None,
        help="the simulator's concurrent downloads (default: its own, 16)",
    )
    args = parser.parse_args()
    # What Bench reads and this benchmark does not vary.
    args.readiness_gates, args.py_spy, args.idle, args.changes = False, None, 0.0, 0

    async def go(
        cluster: AuditedCluster, args: argparse.Namespace, workdir: Path
    ) -> RolloutResults:
        return await RolloutBench(cluster, args, workdir).run_rollout()

    results = run_in_world(args, "rollout-scale-", go)
    print_report(results, args)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
