"""A stand-in for the kubelet's container runtime, for the pods of one workload.

kwok plays the kubelet but runs no containers: it reports a pod's container running and
ready the moment the pod is bound. `PodRunner` runs them. For every pod of a namespace and
label selector that kwok reports Running (with an IP) it starts the pod's container as
the kubelet would — opampsupervisor with the config file the container's `--config`
argument names on the pod's volumes (mounted by `PodVolumes` from the ConfigMap the
operator rendered), the environment the downward API and secretKeyRefs give it
(`container_env`) — running the Collector binary the pod's *image* holds: the test maps
images to binaries of the test world (`{"otelcol:a": "otelcol-opamp", "otelcol:b":
"otelcol-opamp-next"}`). An image not in the map is a container that never starts (an
image the runtime cannot pull): no supervisor, state `ImageNotFound`.

When the pod is deleted (its deletionTimestamp set, or gone) or finishes, the container
is killed as the kubelet kills it: the stop signal of template-mode images (SIGINT, the
only signal opampsupervisor v0.149 stops its Collector on), then, after the grace period
(the pod's, capped by `grace`), SIGKILL to whatever is left of it — the supervisor, its
Collector and anything they started, as a container's cgroup goes.

So a Deployment's or DaemonSet's own rolling update, done by the real controllers,
replaces the Collectors the pods run, as it would on a real node.

Starts are serialized (`max_starting`, default one at a time): on 2 cores opampsupervisor
v0.149 has a startup race under load (world/template.py, start_pod_supervisor). Stops run
at once, each on its own thread, and never wait for another pod's start. What could not
start, and a container that exited while its pod still ran, are recorded (`errors`) and
raised by `wait`, `check` and `close` rather than hidden.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from world.collector import Agent
from world.podwatch import PodWatch
from world.template import PodVolumes, container_env, start_pod_supervisor

# The kubelet's default terminationGracePeriodSeconds.
DEFAULT_GRACE = 30.0
# The pods' containers here share the machine's network, not one namespace each: the
# Collector's own metrics listener (localhost:8888 by default, in the supervisor's
# bootstrap run of the Collector too, whose config it writes itself) would collide between
# pods, and a bootstrap run that cannot bind it exits, so the supervisor never gets its
# description ("collector's OpAMP client never connected to the Supervisor"). What a pod's
# network namespace gives for free, this flag gives: no listener.
SHARED_NETWORK_ARGS = ("--set=service::telemetry::metrics::level=none",)


class State(StrEnum):
    """Where a pod's container is, in the words of a container status where there is one."""

    WAITING = "Waiting"  # its turn to start has not come
    STARTING = "ContainerCreating"  # volumes mounted, the supervisor starting
    RUNNING = "Running"  # the supervisor connected to its OpAMP server
    IMAGE_NOT_FOUND = "ImageNotFound"  # the image holds no binary the test world has
    START_FAILED = "StartFailed"  # the supervisor never connected: an error
    EXITED = "Exited"  # exited while its pod still ran: an error
    STOPPED = "Stopped"  # killed with its pod


class PodRunnerError(AssertionError):
    """A container that should run does not: what failed and the supervisor log's tail."""


@dataclass(frozen=True)
class Container:
    """What runs (or ran) for one pod: a snapshot."""

    pod: str
    uid: str
    image: str
    binary: str | None  # the Collector the image holds; None: an image not in the map
    node: str
    pod_ip: str
    state: State
    workdir: Path
    created: float  # time.monotonic() when the runner saw the pod Running
    started: float | None = None  # ... when its supervisor connected
    going: float | None = None  # ... when the runner saw the pod terminating or gone
    stopped: float | None = None  # ... when its container was dead
    instance_uid: str | None = None  # the agent's, from the supervisor's storage
    supervisor_log: Path | None = None
    collector_log: Path | None = None
    pid: int | None = None  # the supervisor's
    error: str | None = None
    stopped_by: str | None = None  # "SIGINT" (within the grace period) or "SIGKILL"


@dataclass
class _Pod:
    view: Container
    pod: dict[str, Any]  # API JSON, as the pod was when it started running
    wanted: bool = True  # the pod still runs: its container should too
    agent: Agent | None = None
    volumes: PodVolumes | None = None
    thread: threading.Thread | None = None
    stopping: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)  # start attempt over


class PodRunner:
    """Run the container of every Running pod of `namespace` matching `selector`
    (`app=collector`), with the Collector binary `images` maps the pod's image to; kill it
    when the pod goes. A context manager; `close()` kills every container still running."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        selector: str,
        images: Mapping[str, str],
        workdir: Path,
        *,
        max_starting: int = 1,
        grace: float = 10.0,
        start_timeout: float = 120.0,
        agent_args: tuple[str, ...] = SHARED_NETWORK_ARGS,
        health_port: int | None = None,
    ) -> None:
        """`health_port`: where the Collectors' health_check extension answers on their
        pod's IP (Agent.wait_healthy), if their config has one."""
        self.api = api_client
        self.namespace = namespace
        self.selector = selector
        self.images = dict(images)
        self.workdir = workdir
        self.grace = grace
        self.start_timeout = start_timeout
        self.agent_args = agent_args
        self.health_port = health_port
        self.t0 = time.monotonic()
        self._starting = threading.Semaphore(max_starting)
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}  # pod uid -> its container, stopped ones included
        self._log: list[tuple[float, str]] = []
        self._closed = False
        self._watch: PodWatch | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(check=exc_type is None)

    def start(self) -> PodRunner:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._watch = PodWatch(self.api, self.namespace, self._on_event, self.selector)
        if not self._watch.listed.wait(timeout=30):
            raise PodRunnerError(f"no list of the pods {self.selector} in {self.namespace}")
        return self

    def close(self, check: bool = True) -> None:
        """Stop watching, kill every container (in parallel) and wait for all of them;
        with `check`, raise what went wrong meanwhile (`errors`), or the watch's error."""
        watch_error: BaseException | None = None
        if self._watch is not None:
            try:
                self._watch.close()
            except BaseException as exc:  # noqa: BLE001 - raised below, after the cleanup
                watch_error = exc
        with self._lock:
            self._closed = True
            entries = list(self._pods.values())
            for entry in entries:
                self._request_stop(entry, "the runner closed")
        for entry in entries:
            for thread in (entry.thread, entry.stopping):
                if thread is not None:
                    thread.join(timeout=self.start_timeout + self.grace + 30)
        if check:
            if watch_error is not None:
                raise watch_error
            self.check()

    # -- what runs where ---------------------------------------------------------------

    def containers(self, *, include_stopped: bool = False) -> dict[str, Container]:
        """Pod name -> its container: those not dead yet (their pod runs, or its container
        is being killed), or with `include_stopped` all the runner has seen."""
        with self._lock:
            views = [self._refresh(e) for e in self._pods.values()]
        return {
            v.pod: v
            for v in sorted(views, key=lambda v: v.created)
            if include_stopped or v.stopped is None
        }

    def running(self, binary: str | None = None) -> dict[str, Container]:
        """The pods whose supervisor runs (connected), running `binary` if given."""
        return {
            name: c
            for name, c in self.containers().items()
            if c.state == State.RUNNING and (binary is None or c.binary == binary)
        }

    def agents(self) -> list[Agent]:
        """The supervisors of the containers running now."""
        with self._lock:
            return [
                e.agent
                for e in self._pods.values()
                if e.agent is not None and e.wanted and e.view.state == State.RUNNING
            ]

    def errors(self) -> list[str]:
        with self._lock:
            views = [self._refresh(e) for e in self._pods.values()]
        return [f"pod {v.pod} ({v.image}): {v.error}" for v in views if v.error]

    def check(self) -> None:
        """Raise PodRunnerError if any container failed to start or died while its pod ran."""
        found = self.errors()
        if found:
            raise PodRunnerError("\n".join(found))

    def wait(
        self,
        what: str,
        predicate: Callable[[dict[str, Container]], bool],
        timeout: float = 120.0,
    ) -> dict[str, Container]:
        """Wait until `predicate(containers())` holds; fail at once on a container error."""
        deadline = time.monotonic() + timeout
        last: dict[str, Container] = {}
        while time.monotonic() < deadline:
            self.check()
            last = self.containers()
            if predicate(last):
                return last
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; containers:\n{self.describe()}"
        )

    def describe(self) -> str:
        """One line per container, stopped ones included: for failure messages."""
        lines = []
        for c in self.containers(include_stopped=True).values():
            lines.append(
                f"{c.pod} {c.image} -> {c.binary} {c.state} uid={c.instance_uid} "
                f"pid={c.pid} error={c.error} log={c.supervisor_log}"
            )
        return "\n".join(lines) or "(none)"

    def timeline(self) -> str:
        """What the runner did, seconds since it started: for `pytest -s`."""
        with self._lock:
            return "\n".join(f"{t:7.1f}s  {what}" for t, what in self._log)

    # -- the watch's side (its thread: never block) --------------------------------------

    def _note(self, what: str) -> None:
        self._log.append((time.monotonic() - self.t0, what))

    def _on_event(self, kind: str, pod: Any) -> None:
        uid = pod.metadata.uid
        gone = (
            kind == "DELETED"
            or pod.metadata.deletion_timestamp is not None
            or pod.status.phase in ("Succeeded", "Failed")
        )
        with self._lock:
            entry = self._pods.get(uid)
            if gone:
                if entry is not None:
                    why = "deleted" if kind == "DELETED" else "terminating"
                    self._request_stop(entry, f"pod {why}", pod)
                return
            runs = pod.status.phase == "Running" and pod.status.pod_ip
            if entry is not None or not runs or self._closed:
                return
            self._admit(pod)

    def _admit(self, pod: Any) -> None:
        """A pod kwok reports Running: its container is to start (lock held)."""
        data: dict[str, Any] = self.api.sanitize_for_serialization(pod)
        (container,) = data["spec"]["containers"]
        image = container["image"]
        name = data["metadata"]["name"]
        binary = self.images.get(image)
        view = Container(
            pod=name,
            uid=data["metadata"]["uid"],
            image=image,
            binary=binary,
            node=data["spec"].get("nodeName", ""),
            pod_ip=data["status"]["podIP"],
            state=State.WAITING if binary is not None else State.IMAGE_NOT_FOUND,
            workdir=self.workdir / name,
            created=time.monotonic(),
        )
        entry = _Pod(view, data)
        self._pods[view.uid] = entry
        if binary is None:
            self._note(f"{name}: image {image} holds no known Collector: not started")
            entry.done.set()
            return
        self._note(f"{name}: Running on {view.node} ({view.pod_ip}), image {image}")
        entry.thread = threading.Thread(
            target=self._start, args=(entry,), name=f"start-{name}", daemon=True
        )
        entry.thread.start()

    def _request_stop(self, entry: _Pod, why: str, pod: Any = None) -> None:
        """The pod is going: kill its container (lock held)."""
        if not entry.wanted:
            return
        entry.wanted = False
        entry.view = replace(entry.view, going=time.monotonic())
        if pod is not None and pod.metadata.deletion_grace_period_seconds is not None:
            entry.pod["metadata"]["deletionGracePeriodSeconds"] = (
                pod.metadata.deletion_grace_period_seconds
            )
        self._note(f"{entry.view.pod}: {why}")
        entry.stopping = threading.Thread(
            target=self._stop, args=(entry,), name=f"stop-{entry.view.pod}", daemon=True
        )
        entry.stopping.start()

    # -- one pod's threads -------------------------------------------------------------

    def _set(self, entry: _Pod, **changes: Any) -> None:
        with self._lock:
            entry.view = replace(entry.view, **changes)

    def _start(self, entry: _Pod) -> None:
        view = entry.view
        try:
            # Its IP is free only once the container of a deleted pod that had it is dead
            # (a kubelet tears the old sandbox down first; kwok hands the IP out again as
            # soon as the pod object is gone): a listener on the pod's IP would collide.
            while (holder := self._holder_of_ip(entry)) is not None:
                if not entry.wanted:
                    return
                self._note(f"{view.pod}: waits for {holder[1]}'s container, on {view.pod_ip}")
                self._wait_stopped(holder[0])
            # Its turn, unless the pod goes first: then it never starts.
            while not self._starting.acquire(timeout=0.2):
                if not entry.wanted:
                    return
            try:
                if not entry.wanted:
                    return
                self._set(entry, state=State.STARTING)
                self._note(f"{view.pod}: starting opampsupervisor with {view.binary}")
                self._run_container(entry)
            finally:
                self._starting.release()
        except Exception as exc:  # noqa: BLE001 - recorded: errors() / check() raise it
            failed = f"{type(exc).__name__}: {exc}"
            if entry.wanted:
                self._set(entry, state=State.START_FAILED, error=failed)
                self._note(f"{view.pod}: could not start: {type(exc).__name__}")
            else:  # the pod went while its container was being created: no error of ours
                self._note(f"{view.pod}: start abandoned, the pod went ({failed.splitlines()[0]})")
        finally:
            entry.done.set()

    def _holder_of_ip(self, entry: _Pod) -> tuple[str, str] | None:
        """(uid, name) of another pod whose container, not dead yet, has the IP of `entry`."""
        with self._lock:
            for other in self._pods.values():
                if (
                    other is not entry
                    and other.view.pod_ip == entry.view.pod_ip
                    and other.view.binary is not None
                    and other.view.stopped is None
                ):
                    return other.view.uid, other.view.pod
        return None

    def _wait_stopped(self, uid: str) -> None:
        """Until the container of the pod `uid` is dead; a live pod holding the same IP
        is kwok's doing, not a container to wait for: that is an error."""
        while True:
            with self._lock:
                other = self._pods[uid]
                if other.view.stopped is not None:
                    return
                if other.wanted:
                    raise PodRunnerError(
                        f"pods {other.view.pod} and another both run with IP {other.view.pod_ip}"
                    )
            time.sleep(0.05)

    def _run_container(self, entry: _Pod) -> None:
        pod, view = entry.pod, entry.view
        assert view.binary is not None
        (container,) = pod["spec"]["containers"]
        volumes = PodVolumes(pod, self.api, view.workdir).mount()
        entry.volumes = volumes
        config_path = _config_argument(container.get("args") or [])
        supervisor_yaml = volumes.local(config_path).read_text()
        storage = yaml.safe_load(supervisor_yaml)["storage"]["directory"]
        storage_dir = volumes.local(storage) if volumes.maps(storage) else view.workdir / "storage"
        env = container_env(pod, self.api)
        agent = start_pod_supervisor(
            supervisor_yaml,
            pod,
            env,
            view.workdir,
            volumes=volumes,
            collector=view.binary,
            timeout=self.start_timeout,
            agent_args=self.agent_args,
            health_url=(
                f"http://{view.pod_ip}:{self.health_port}/"
                if self.health_port is not None
                else None
            ),
        )
        with self._lock:
            entry.agent = agent
            entry.view = replace(
                view,
                state=State.RUNNING,
                started=time.monotonic(),
                pid=agent.record.pid,
                supervisor_log=Path(agent.record.log),
                collector_log=storage_dir / "agent.log",
                instance_uid=_instance_uid(storage_dir),
            )
            self._note(f"{view.pod}: {view.binary} connected (pid {agent.record.pid})")
            if not entry.wanted and entry.stopping is None:
                # Cannot happen (a stop request always starts its thread), kept honest.
                raise AssertionError(f"{view.pod}: stopped without a stop thread")

    def _stop(self, entry: _Pod) -> None:
        # A container still starting is killed once its start is over (as the kubelet
        # does with one it is creating); one waiting for its turn never starts.
        entry.done.wait()
        agent, volumes = entry.agent, entry.volumes
        grace = self._grace(entry.pod)
        stopped_by = None
        if agent is not None:
            stopped_by = _kill(agent, grace)
        if volumes is not None:
            volumes.stop()
        with self._lock:
            changes: dict[str, Any] = {"stopped": time.monotonic()}
            if entry.view.state in (State.WAITING, State.STARTING, State.RUNNING):
                changes["state"] = State.STOPPED
            if stopped_by is not None:
                changes["stopped_by"] = stopped_by
            entry.view = replace(entry.view, **changes)
            self._note(f"{entry.view.pod}: container killed ({stopped_by or 'never started'})")

    def _grace(self, pod: Mapping[str, Any]) -> float:
        seconds = pod["metadata"].get("deletionGracePeriodSeconds")
        if seconds is None:
            seconds = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        return float(min(float(seconds), self.grace))

    def _refresh(self, entry: _Pod) -> Container:
        """The view, marking a running container whose supervisor exited (lock held)."""
        view = entry.view
        if view.state == State.RUNNING and entry.wanted and entry.agent is not None:
            code = entry.agent.proc.poll()
            if code is not None:
                tail = entry.agent.record.log_tail(20)
                entry.view = view = replace(
                    view,
                    state=State.EXITED,
                    error=f"opampsupervisor exited {code} while its pod ran; log tail:\n{tail}",
                )
                self._note(f"{view.pod}: supervisor exited {code}")
        return view


def _config_argument(args: list[str]) -> str:
    """The supervisor's config file, from the container's args (`--config PATH`)."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    raise ValueError(f"the container's args name no --config: {args}")


def _instance_uid(storage: Path) -> str | None:
    """The agent's instance UID, as the supervisor persisted it in its storage."""
    try:
        state = yaml.safe_load((storage / "persistent_state.yaml").read_text())
    except OSError:
        return None
    return str(state["instance_id"]) if state and state.get("instance_id") else None


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc (the Collector, and what it started)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(agent: Agent, grace: float) -> str:
    """Kill the container as the kubelet does: its stop signal to the supervisor (SIGINT:
    it then stops its Collector), SIGKILL to all that is left after `grace` seconds.
    Returns what stopped it."""
    pid = agent.record.pid
    tree = _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    by = "SIGINT"
    deadline = time.monotonic() + grace
    try:
        agent.proc.wait(timeout=grace)
        # The supervisor waits for its Collector before it exits; give what it started
        # the rest of the grace period all the same.
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        if any(_alive(p) for p in tree):
            by = "SIGKILL"
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: the grace period is over
        by = "SIGKILL"
    # The cgroup goes with the container: nothing of it survives, whatever the supervisor
    # did with its Collector.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in tree | _descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(Exception):
        agent.proc.wait(timeout=5)
    return by
