"""`opamp-operator crds --check`, run as CI runs it: exit 0 on the committed files, 1
with a message on a stale CRD or reference. The tools tier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opamp_operator.api.crd import render_all
from opamp_operator.api.reference import render_reference

REPO = Path(__file__).resolve().parents[2]


def _crds_check(out: Path, reference: Path) -> subprocess.CompletedProcess[str]:
    """`opamp-operator crds --check`, as CI runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "opamp_operator",
            "crds",
            "--check",
            f"--out={out}",
            f"--reference={reference}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_passes_on_the_committed_files() -> None:
    result = _crds_check(REPO / "deploy/crds", REPO / "docs/reference.md")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text.replace("Healthy", "Happy"))
    reference = tmp_path / "reference.md"
    reference.write_text(render_reference())
    result = _crds_check(tmp_path, reference)
    assert result.returncode == 1
    assert "stale CRDs" in result.stderr


def test_a_stale_reference_fails_the_check(tmp_path: Path) -> None:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text)
    reference = tmp_path / "reference.md"
    reference.write_text(render_reference().replace("maxFailed", "maxFails"))
    result = _crds_check(tmp_path, reference)
    assert result.returncode == 1
    assert "reference.md" in result.stderr
