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
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleet_scale import (
    FLEET,
    AuditedCluster,
    Bench,
    Results,
    config,
    config_hash,
    fleets_path,
    log,
    read_audit,
    run_in_world,
    tally,
)

from opamp_operator.api.models import API_VERSION, GROUP, VERSION

ROLLOUT = "collectors"


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


class RolloutBench(Bench):
    async def run_rollout(self) -> RolloutResults:
        out = RolloutResults(self.results)
        try:
            await self.make_pods()
            await self.start_operator_and_fleet()
            await self.connect_agents()
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
            text = config(2)
            desired = config_hash(text)
            t0 = time.time()
            await self.kube.call(
                "PATCH",
                fleets_path(self.ns, FLEET),
                {"spec": {"config": {"inline": text}}},
                content_type="application/merge-patch+json",
            )
            marks, final = await self.drive(t0, len(steps), desired, out)
            log(f"rollout Succeeded {out.total_s:.2f} s after the patch")
            _, raw = await self.kube.call("GET", rollout_path(self.ns, ROLLOUT))
            out.rollout_bytes = len(raw)
            await asyncio.sleep(2.0)
            self.stop_simulator()
            self.stop_operator()
            await asyncio.sleep(1.0)
            audit = read_audit(self.cluster.audit_log)
            counts = final.get("steps") or []
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
                    )
                )
            out.total_writes = tally(audit, t0, marks[-1][0])["writes"]
            self.results.run_api = tally(audit, 0, time.time())
            return out
        finally:
            await self.close()

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
                    seen_step = step
                    log(f"step {step} started {now - t0:.2f} s after the patch")
                if phase == "Succeeded":
                    marks.append((now, n_steps))
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
    print(
        f"\n{m['host']} · {m['cores']} cores · Python {m['python']} · kopf {m['kopf']} · "
        f"{m['kube_apiserver']} · {m['commit']} · {m['date']} · {r.fleet.agents} agents · "
        f"steps {', '.join(f'{p:g}%' for p in args.steps)} · no pauses, no bake"
    )
    print(
        f"\nconfig patch → rollout took the new revision: {r.first_step_s} s; "
        f"→ Succeeded: {r.total_s} s; operator API writes in all: {r.total_writes}"
    )
    print("\n| step | size | members | start → gate verdict (s) | operator API writes |")
    print("|---|---|---|---|---|")
    for s in r.steps:
        writes = ", ".join(f"{v} {k}" for k, v in s.writes_by.items()) or "none"
        print(
            f"| {s.step + 1} | {s.size} | {s.offered} | {s.seconds} | {s.api_writes} ({writes}) |"
        )
    print(f"\nphases seen: {' → '.join(r.phases_seen)}")
    print(f"rollout object: {r.rollout_bytes} bytes")
    print(f"simulator: {r.fleet.simulator}")


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
