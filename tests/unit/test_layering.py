"""The architecture's import rules (docs/architecture.md), checked on the source tree.

Each subpackage of opamp_operator is a layer that may import only the layers listed for
it; the sans-I/O layers may not import I/O or Kubernetes libraries at all. A subpackage
missing from the table fails the check, so every new package is placed deliberately.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "opamp_operator"
SOURCE = Path(__file__).resolve().parents[2] / "src" / PACKAGE

TOP = "<top>"  # modules directly in opamp_operator/ (cli, __init__)
ANY = frozenset({"*"})
ALLOWED: dict[str, frozenset[str]] = {
    "opamp": frozenset(),
    # The CRD schema's enums and limits are the rollout planner's own (fleet.rollout).
    "api": frozenset({"fleet"}),
    "fleet": frozenset({"opamp"}),
    "server": frozenset({"opamp"}),
    "k8s": frozenset({"api", "fleet", "server", "opamp"}),
    "standalone": ANY,
    "simulator": ANY,
    "kubectl_plugin": ANY,
    TOP: ANY,
}
SANS_IO_FORBIDDEN = frozenset(
    {"asyncio", "aiohttp", "websockets", "kopf", "kubernetes", "socket", "selectors", "ssl"}
)
SANS_IO = frozenset({"opamp", "fleet"})


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.reason}"


def _layer_of(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else TOP


def _imports(tree: ast.Module, package_parts: list[str]) -> list[tuple[int, str]]:
    """Absolute names of everything a module imports, relative imports resolved against
    `package_parts`, the package the module is in."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def check(source: Path) -> list[Violation]:
    """Every import in `source` (a package directory) that breaks the rules above."""
    violations: list[Violation] = []
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source)
        layer = _layer_of(relative)
        parts = [source.name, *relative.with_suffix("").parts]
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = package
        module = ".".join(parts)
        if layer not in ALLOWED:
            violations.append(Violation(module, 1, "-", f"layer {layer!r} is not in ALLOWED"))
            continue
        for line, name in _imports(ast.parse(path.read_text(), str(path)), package):
            top, _, rest = name.partition(".")
            if top == source.name:
                target = rest.split(".")[0] if rest else TOP
                target = target if target in ALLOWED else TOP
                allowed = ALLOWED[layer]
                if target != layer and allowed is not ANY and target not in allowed:
                    violations.append(
                        Violation(module, line, name, f"{layer} may not use {target}")
                    )
            elif layer in SANS_IO and top in SANS_IO_FORBIDDEN:
                violations.append(Violation(module, line, name, f"{layer} is sans-I/O"))
    return violations


def test_source_tree_keeps_the_layering() -> None:
    assert SOURCE.is_dir()
    violations = check(SOURCE)
    assert not violations, "\n".join(map(str, violations))


def _tree(root: Path, files: dict[str, str]) -> Path:
    pkg = root / PACKAGE
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"opamp/session.py": "from opamp_operator.server import app\n"},
            "opamp may not use server",
        ),
        ({"fleet/rollout.py": "from ..k8s import handlers\n"}, "fleet may not use k8s"),
        ({"fleet/__init__.py": "from ..server import app\n"}, "fleet may not use server"),
        ({"opamp/session.py": "import asyncio\n"}, "opamp is sans-I/O"),
        ({"fleet/health.py": "from kubernetes import client\n"}, "fleet is sans-I/O"),
        (
            {"server/app.py": "from opamp_operator.fleet import mapping\n"},
            "server may not use fleet",
        ),
        ({"api/models.py": "from ..k8s import state\n"}, "api may not use k8s"),
        ({"gadgets/x.py": "x = 1\n"}, "layer 'gadgets' is not in ALLOWED"),
    ],
)
def test_checker_reports_each_kind_of_violation(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    violations = check(_tree(tmp_path, files))
    assert [v.reason for v in violations] == [expected]


def test_checker_accepts_allowed_imports(tmp_path: Path) -> None:
    pkg = _tree(
        tmp_path,
        {
            "opamp/__init__.py": "from .session import Session\n",
            "opamp/session.py": "from . import framing\nimport hashlib\n",
            "opamp/framing.py": "x = 1\n",
            "fleet/drift.py": "from opamp_operator.opamp import configs\n",
            "k8s/handlers.py": "import kopf\nfrom opamp_operator.fleet import drift\n",
            "cli.py": "from opamp_operator.k8s import handlers\nimport asyncio\n",
        },
    )
    assert check(pkg) == []
