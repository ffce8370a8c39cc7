"""Health verdicts as Argo CD and Flux compute them: the Argo CD health scripts shipped
in deploy/argocd run in gopher-lua (`argocd-health`, built by scripts/test-deps from
test-deps/argocd-lua, as Argo CD runs them) and in Lua 5.1 and 5.4 (lupa), and kstatus,
the library Flux judges health with (`kstatus-check`, from sigs.k8s.io/cli-utils)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from lupa.lua51 import LuaRuntime as Lua51Runtime  # type: ignore[import-untyped]
from lupa.lua54 import LuaRuntime as Lua54Runtime  # type: ignore[import-untyped]

from opamp_operator.api.models import GROUP
from world import binaries

ARGOCD = binaries.REPO_ROOT / "deploy" / "argocd"
KINDS = ("CollectorFleet", "ConfigRollout")

# Argo CD's verdict → the kstatus verdict that means the same thing. kstatus has no
# Suspended: a paused rollout is still in progress to Flux.
SPIRIT = {
    "Healthy": "Current",
    "Degraded": "Failed",
    "Progressing": "InProgress",
    "Suspended": "InProgress",
}


def health_script_path(kind: str) -> Path:
    return ARGOCD / "health" / GROUP / kind / "health.lua"


def health_script(kind: str) -> str:
    return health_script_path(kind).read_text()


def gopher_lua(script: Path, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`argocd-health SCRIPT`: the script run in gopher-lua as Argo CD runs it (restricted
    libraries, the object as the global `obj`, one-second timeout, the returned table's
    status and message; test-deps/argocd-lua)."""
    return subprocess.run(
        [str(binaries.find("argocd-health")), str(script)],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def lupa_health(runtime: Any, script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(hs.status, hs.message) in one of lupa's Lua runtimes: a fresh state, the object
    converted to Lua tables as the global `obj`, the chunk's return value read."""
    lua = runtime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script)
    return str(hs["status"]), str(hs["message"])


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(hs.status, hs.message) from the shipped script, as Argo CD's gopher-lua computes
    it, asserted to be what Lua 5.1 and Lua 5.4 (lupa) compute too."""
    path = health_script_path(obj["kind"])
    done = gopher_lua(path, obj)
    assert done.returncode == 0, f"argocd-health failed: {done.stderr}"
    verdict = json.loads(done.stdout)
    argo = (verdict["status"], verdict["message"])
    script = path.read_text()
    lua51 = lupa_health(Lua51Runtime, script, obj)
    lua54 = lupa_health(Lua54Runtime, script, obj)
    assert argo == lua51 == lua54, f"gopher-lua={argo} lua5.1={lua51} lua5.4={lua54}"
    return argo


def kstatus(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) kstatus computes for the object."""
    done = subprocess.run(
        [str(binaries.find("kstatus-check"))],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    verdict = json.loads(done.stdout)
    return verdict["status"], verdict["message"]


def judge(obj: dict[str, Any], argo: str, flux: str, says: str = "") -> None:
    """Both tools' verdicts on one real object, and that they mean the same thing.
    `says`: text the Argo CD message must carry (the operator's own explanation)."""
    argo_status, argo_message = argocd_health(obj)
    flux_status, flux_message = kstatus(obj)
    seen = f"argo={argo_status} ({argo_message}) kstatus={flux_status} ({flux_message})"
    assert argo_status == argo, seen
    assert flux_status == flux, seen
    assert SPIRIT[argo_status] == flux_status, seen
    assert says in argo_message, seen
